"""The tensors of the Triton models, the same for `cli.py serve` (PyTriton) and the model repository's Python
model: what a KServe v2 client sends and gets back, and their mapping to the runtime's Request and Result.

Inputs, one request each (a batch of one row): `image` (the encoded file's bytes, JPEG/PNG/..., or a
`data:image/...;base64,` URL for clients whose JSON cannot carry bytes, such as HTTP `generate_stream`), `prompt` (UTF-8),
and optionally `max_tokens`, `temperature`, `top_p`, `top_k`, `seed` and `stop` (any number of strings).
Outputs: `text`, `token_ids`, `finish_reason` ("" until the last response of a stream) and `details` (JSON: kept
indices per stage, visual and relevant tokens, timings, as `cli.py run --json` gives them). A streaming model
sends one response per token, whose `text` and `token_ids` are that token's part, then the last one with the
finish reason and details."""
import json
from dataclasses import dataclass

import numpy as np

from runtime.errors import InputError
from runtime.preprocess import data_url_bytes, load_image_bytes
from runtime.request import Request, Result
from runtime.sampling import GREEDY, SamplingParams
from serving.stream_text import StreamText


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: type  # numpy dtype; bytes is Triton's BYTES
    shape: tuple
    optional: bool = False


INPUTS = (
    TensorSpec("image", bytes, (1,)),
    TensorSpec("prompt", bytes, (1,)),
    TensorSpec("max_tokens", np.int32, (1,), True),
    TensorSpec("temperature", np.float32, (1,), True),
    TensorSpec("top_p", np.float32, (1,), True),
    TensorSpec("top_k", np.int32, (1,), True),
    TensorSpec("seed", np.int64, (1,), True),
    TensorSpec("stop", bytes, (-1,), True),
)
OUTPUTS = (
    TensorSpec("text", bytes, (1,)),
    TensorSpec("token_ids", np.int64, (-1,)),
    TensorSpec("finish_reason", bytes, (1,)),
    TensorSpec("details", bytes, (1,)),
)
SAMPLING = {"max_tokens": "max_new_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
            "seed": "seed"}


def request_from_inputs(inputs: dict) -> Request:
    """One request's input arrays (a leading batch axis of 1 is dropped) -> a Request; InputError names what is
    wrong with them."""
    arrays = {k: np.asarray(v) for k, v in inputs.items() if v is not None}
    for spec in INPUTS:
        if spec.name not in arrays and not spec.optional:
            raise InputError(f"input {spec.name!r} is missing; send {', '.join(s.name for s in INPUTS[:2])}")
    image = load_image_bytes(_image_bytes(_one_bytes(arrays["image"], "image")), "the image input")
    try:
        prompt = _one_bytes(arrays["prompt"], "prompt").decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise InputError(f"the prompt is not UTF-8 text ({e})") from None
    if not prompt:
        raise InputError("the prompt is empty: send the question about the image")
    knobs = {field: _one(arrays[name], name).item() for name, field in SAMPLING.items() if name in arrays}
    if "stop" in arrays:
        knobs["stop"] = tuple(_text(s, "stop") for s in arrays["stop"].reshape(-1))
    return Request(image, prompt, SamplingParams(**knobs) if knobs else None)


class TokenStream:
    """A streamed request's outputs: one response per token (its id, and the text it settled: serving/stream_text.py),
    then the last one with what is left (text held back, tokens not yet sent), the finish reason and details."""

    def __init__(self, request: Request):
        self.text, self.sent = StreamText((request.sampling or GREEDY).stop), 0

    def token(self, token: int, text_so_far: str) -> dict:
        self.sent += 1
        return {"text": _bytes(self.text.update(text_so_far)), "token_ids": np.array([token], np.int64),
                "finish_reason": _bytes(""), "details": _bytes("")}

    def last(self, result: Result) -> dict:
        return final_outputs(result, self.text.finish(result.text), result.token_ids[self.sent:])


def final_outputs(result: Result, text: str | None = None, tokens: list[int] | None = None) -> dict:
    """The whole answer (or, for a stream's last response, what is left of it: `text` and `tokens`)."""
    details = {k: v for k, v in result.to_json().items() if k not in ("text", "token_ids")}
    return {"text": _bytes(result.text if text is None else text),
            "token_ids": np.array(result.token_ids if tokens is None else tokens, np.int64),
            "finish_reason": _bytes(result.finish_reason), "details": _bytes(json.dumps(details))}


def _image_bytes(raw: bytes) -> bytes:
    """The encoded image: the bytes as sent, or a data: URL's."""
    return data_url_bytes(raw.decode("latin-1"), "the image input") if raw.startswith(b"data:") else raw


def _one(array: np.ndarray, name: str) -> np.ndarray:
    flat = array.reshape(-1)
    if flat.size != 1:
        raise InputError(f"input {name!r} must hold one value, got shape {list(array.shape)}")
    return flat[0]


def _one_bytes(array: np.ndarray, name: str) -> bytes:
    value = _one(array, name)
    if not isinstance(value, bytes):
        raise InputError(f"input {name!r} must be BYTES, got {array.dtype}")
    return value


def _text(value, name: str) -> str:
    try:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)
    except UnicodeDecodeError as e:
        raise InputError(f"input {name!r} is not UTF-8 text ({e})") from None


def _bytes(text: str) -> np.ndarray:
    return np.array([text.encode("utf-8")], dtype=np.object_)
