"""Calibration requests: from --data (a folder of images + prompts.txt, or a JSONL of {"image","prompt"}), or
a small built-in set of the shipped photos with varied prompts; split into calibration and held-out pairs."""
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import InputError
from runtime.request import Request
from runtime.requests_file import read_requests
from runtime.shipped import int8_requests

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
PROMPTS_FILE = "prompts.txt"


@dataclass
class CalibrationSet:
    calibration: list[Request]
    held_out: list[Request]
    source: str  # "builtin" or the --data path


def folder_requests(folder: Path) -> list[Request]:
    """Images of the folder (sorted by name) with the lines of prompts.txt, both cycled to the longer list."""
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    prompts_file = folder / PROMPTS_FILE
    if not images:
        raise InputError(f"calibration folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                         f"put a few representative photos there with a {PROMPTS_FILE}")
    if not prompts_file.is_file():
        raise InputError(f"calibration folder {folder} has no {PROMPTS_FILE}; write one prompt per line "
                         "(they are cycled over the images)")
    prompts = [line.strip() for line in prompts_file.read_text().splitlines() if line.strip()]
    if not prompts:
        raise InputError(f"{prompts_file} holds no prompts; write one prompt per line")
    count = max(len(images), len(prompts))
    return [Request(images[i % len(images)], prompts[i % len(prompts)]) for i in range(count)]


def split(requests: list[Request], held_out: int) -> tuple[list[Request], list[Request]]:
    """Held-out requests are those whose (image, prompt) pair never appears in the calibration part."""
    if len(requests) < 2:
        raise InputError(f"calibration needs at least 2 requests (some to calibrate on, one held out for the "
                         f"report); found {len(requests)}. Add images or prompts.")
    held_out = max(1, min(held_out, len(requests) // 3 or 1))
    calibration = requests[:-held_out]
    pairs = {(str(r.image), r.prompt) for r in calibration}
    held = [r for r in requests[-held_out:] if (str(r.image), r.prompt) not in pairs]
    if not held:
        raise InputError("every held-out request repeats a calibration (image, prompt) pair; give more varied data")
    return calibration, held


def load_calibration_set(data: Path | None, limit: int | None = None, held_out: int = 3) -> CalibrationSet:
    """limit: at most this many calibration requests (the first ones)."""
    if data is None:
        calibration, held = int8_requests()
        source = "builtin"
    else:
        data = Path(data)
        if data.is_dir():
            requests = folder_requests(data)
        elif data.is_file() and data.suffix.lower() in (".jsonl", ".json"):
            requests = read_requests(data)
        elif data.exists():
            raise InputError(f"--data {data} is neither a folder of images with {PROMPTS_FILE} nor a .jsonl "
                             'file of {"image", "prompt"} lines')
        else:
            raise InputError(f"--data {data} does not exist; pass a folder of images with {PROMPTS_FILE} or a "
                             '.jsonl file of {"image", "prompt"} lines (or leave --data out for the built-in set)')
        for r in requests:
            if not Path(r.image).is_file():
                raise InputError(f"calibration image {r.image} does not exist (from --data {data})")
        calibration, held = split(requests, held_out)
        source = str(data)
    if limit is not None:
        if limit < 1:
            raise InputError(f"the number of calibration requests must be at least 1, got {limit}")
        calibration = calibration[:limit]
    return CalibrationSet(calibration, held[:held_out], source)
