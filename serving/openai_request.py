"""An OpenAI chat-completions request body -> the runtime's Request (with its SamplingParams), or a RequestError
that carries the HTTP status and the same message the CLI gives for the same problem.

What LLaVA-1.5's template serves: one user turn with one image and its text. The image comes as an `image_url`
content part holding a `data:image/...;base64,` URL; a local path (or file:// URL) only when the server was given
a folder for them, and then only a file inside it, with `..` and symlinks resolved before the check. The server
fetches no http(s) URLs.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import InputError
from runtime.preprocess import ImageTooLarge, data_url_bytes, load_image, load_image_bytes
from runtime.request import Request
from runtime.sampling import SamplingParams

MAX_IMAGE_BYTES = 20 << 20  # encoded; OpenAI's own limit per image
MAX_TEMPERATURE = 2.0  # OpenAI's range


class RequestError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class ChatRequest:
    request: Request
    stream: bool
    include_usage: bool  # stream_options.include_usage: a last chunk with the token counts


def parse_chat(body: bytes | str | dict, model: str, local_images: Path | None = None) -> ChatRequest:
    """`model`: the name the server serves (GET /v1/models); `local_images`: the --allow-local-images folder."""
    data = _json(body)
    if data.get("model") != model:
        raise RequestError(404, f"model {data.get('model')!r} is not served here; this server serves {model!r} "
                                "(GET /v1/models)")
    prompt, image_url = _user_turn(data.get("messages"))
    image = _image(image_url, local_images)
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError(400, f"stream must be true or false, got {stream!r}")
    options = data.get("stream_options") or {}
    if not isinstance(options, dict):
        raise RequestError(400, f"stream_options must be an object, got {options!r}")
    return ChatRequest(Request(image, prompt, sampling=_sampling(data)), stream, bool(options.get("include_usage")))


def _json(body) -> dict:
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(400, f"the request body is not valid JSON ({e}); send a chat-completions object") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object with \"model\" and \"messages\"")
    return body


def _user_turn(messages) -> tuple[str, str]:
    """(prompt text, image URL) of the one user message."""
    if not isinstance(messages, list) or not messages:
        raise RequestError(400, "messages must be a non-empty list")
    if len(messages) != 1 or not isinstance(messages[0], dict) or messages[0].get("role") != "user":
        raise RequestError(400, "this server runs LLaVA-1.5's single-turn template: send exactly one message, "
                                "with role \"user\", holding one image_url part and the text")
    content = messages[0].get("content")
    if not isinstance(content, list):
        raise RequestError(400, "the user message's content must be a list of parts: one {\"type\": \"image_url\"} "
                                "and {\"type\": \"text\"} parts (a plain string has no image)")
    texts, images = [], []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and isinstance(part.get("image_url"), dict) and isinstance(
                part["image_url"].get("url"), str):
            images.append(part["image_url"]["url"])
        else:
            raise RequestError(400, f"content part {part!r} is neither {{\"type\": \"text\", \"text\": ...}} nor "
                                    "{\"type\": \"image_url\", \"image_url\": {\"url\": ...}}")
    if len(images) != 1:
        raise RequestError(400, f"send exactly one image_url part (LLaVA-1.5 takes one image), got {len(images)}")
    prompt = "\n".join(texts).strip()
    if not prompt:
        raise RequestError(400, "the prompt is empty: add a text part with the question about the image")
    return prompt, images[0]


def _image(url: str, local_images: Path | None):
    if url.startswith("data:"):
        return _data_url(url)
    if url.startswith(("http://", "https://")):
        raise RequestError(400, "this server does not fetch images from URLs; send the image inline as a "
                                "data:image/...;base64, URL")
    if local_images is None:
        raise RequestError(400, "local image paths are off on this server (start it with --allow-local-images DIR); "
                                "send the image as a data:image/...;base64, URL")
    return _local(url.removeprefix("file://"), local_images)


def _data_url(url: str):
    try:
        data = data_url_bytes(url, "the image", MAX_IMAGE_BYTES)
    except ImageTooLarge as e:
        raise RequestError(413, str(e)) from None
    except InputError as e:
        raise RequestError(400, str(e)) from None
    return _loaded(lambda: load_image_bytes(data, "the image_url data"))


def _local(path: str, folder: Path):
    """A file inside `folder` only: the real path (symlinks and `..` resolved) must stay under its real path."""
    root = os.path.realpath(folder)
    real = os.path.realpath(os.path.join(root, path))
    if os.path.commonpath([root, real]) != root:
        raise RequestError(403, f"image path {path!r} is outside the folder this server may read images from")
    return _loaded(lambda: load_image(real))


def _loaded(load):
    try:
        return load()
    except InputError as e:
        raise RequestError(400, str(e)) from None


def _sampling(data: dict) -> SamplingParams:
    """OpenAI's names onto SamplingParams (top_k is an extension, as in vLLM); n must be 1."""
    if data.get("n", 1) != 1:
        raise RequestError(400, f"n must be 1 (one completion per request), got {data.get('n')!r}")
    temperature = data.get("temperature", 0.0)  # the CLI's default: greedy
    if isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature > MAX_TEMPERATURE:
        raise RequestError(400, f"temperature must be at most {MAX_TEMPERATURE}, got {temperature!r}")
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    try:
        return SamplingParams(temperature=temperature, top_p=data.get("top_p", 1.0), top_k=data.get("top_k", 0),
                              seed=data.get("seed"), stop=data.get("stop") or (), max_new_tokens=max_tokens)
    except InputError as e:
        raise RequestError(400, str(e)) from None
