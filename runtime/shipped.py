"""The photos that ship in assets/images and the built-in request sets made of them: the export's validation
sample, the profile's default request, and the sets that calibrate ATP's thresholds, train its heads and
calibrate INT8 engines when the user brings no data of their own."""
from pathlib import Path

from runtime.request import Request

IMAGES = Path(__file__).resolve().parent.parent / "assets" / "images"


def photos() -> list[Path]:
    """The shipped photos, sorted by name."""
    return sorted(IMAGES.glob("*.jpg"))


# Every graph is exported with batch 2 of this request and validated on it.
EXPORT_SAMPLE = Request(IMAGES / "astronaut.jpg", "What is the person in this photo wearing, and what colour is it?")
PROFILE_REQUEST = Request(IMAGES / "chelsea.jpg", "What animal is on the sofa, and what colour is its fur?")

ATP_THRESHOLD_PROMPTS = ["Describe this image in detail.", "What colours stand out?", "How many objects can you count?"]
ATP_TRAINING_PROMPTS = ("Describe this image in detail.", "What colours stand out?",
                        "What is the main object in the picture?")
INT8_PROMPTS = [
    "Describe this image in detail.",
    "What is the main object in the picture, and what colour is it?",
    "Is there a person in this photo? What are they doing?",
    "Where could this photo have been taken?",
    "List three things you can see.",
    "What is in the background?",
]


def atp_threshold_requests() -> list[Request]:
    """Each photo whole, flipped upside down and cropped to two corners (content and scale vary, as they will in
    use), with ATP_THRESHOLD_PROMPTS cycled over them."""
    from PIL import Image, ImageOps
    requests = []
    for path in photos():
        image = Image.open(path).convert("RGB")
        w, h = image.size
        views = [image, ImageOps.flip(image), image.crop((0, 0, 3 * w // 4, 3 * h // 4)),
                 image.crop((w // 4, h // 4, w, h))]
        prompts = ATP_THRESHOLD_PROMPTS
        requests += [Request(view, prompts[(len(requests) + k) % len(prompts)]) for k, view in enumerate(views)]
    return requests


def atp_training_requests() -> list[Request]:
    """Each photo with each of ATP_TRAINING_PROMPTS."""
    return [Request(image, prompt) for image in photos() for prompt in ATP_TRAINING_PROMPTS]


def int8_requests() -> tuple[list[Request], list[Request]]:
    """(calibration, held out): each photo with two prompts to calibrate on, and a third, never used with it there,
    held out for the report."""
    n = len(INT8_PROMPTS)
    calibration = [Request(img, INT8_PROMPTS[(i + j) % n]) for i, img in enumerate(photos()) for j in (0, 1)]
    held_out = [Request(img, INT8_PROMPTS[(i + 3) % n]) for i, img in enumerate(photos())]
    return calibration, held_out
