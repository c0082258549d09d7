"""Reads --requests FILE.jsonl: one {"image", "prompt"} object per line; image paths relative to the file."""
import json
from pathlib import Path

from runtime.errors import InputError
from runtime.request import Request


def read_requests(path) -> list[Request]:
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
        requests.append(Request(image if image.is_absolute() else path.parent / image, item["prompt"]))
    if not requests:
        raise InputError(f"requests file {path} holds no requests")
    return requests
