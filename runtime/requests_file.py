"""Reads --requests FILE.jsonl: one {"image", "prompt"} object per line; image paths relative to the file. A line may
also set its own sampling: "temperature", "top_p", "top_k", "seed", "stop", "max_new_tokens" (over `defaults`)."""
import json
from dataclasses import fields, replace
from pathlib import Path

from runtime.errors import InputError
from runtime.request import Request
from runtime.sampling import GREEDY, SamplingParams

SAMPLING_KEYS = tuple(f.name for f in fields(SamplingParams))


def read_requests(path, defaults: SamplingParams | None = None) -> list[Request]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"requests file {path} does not exist; pass a JSONL file with one "
                         '{"image": ..., "prompt": ...} object per line')
    requests = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{n} is not valid JSON ({e.msg}); each line must be one "
                             '{"image": ..., "prompt": ...} object') from e
        if not isinstance(item, dict) or not {"image", "prompt"} <= set(item) or not isinstance(item["prompt"], str):
            raise InputError(f'{path}:{n} must be an object with "image" (a path) and "prompt" (a string)')
        image = Path(item["image"])
        requests.append(Request(image if image.is_absolute() else path.parent / image, item["prompt"],
                                line_sampling(item, defaults, f"{path}:{n}")))
    if not requests:
        raise InputError(f"requests file {path} holds no requests")
    return requests


def line_sampling(item: dict, defaults: SamplingParams | None, where: str) -> SamplingParams | None:
    """The line's sampling keys over the defaults; None (greedy) where neither sets any."""
    own = {k: item[k] for k in SAMPLING_KEYS if k in item}
    if not own:
        return defaults
    try:
        return replace(defaults or GREEDY, **own)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
