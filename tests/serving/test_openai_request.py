"""OpenAI chat-completions bodies -> Requests: what is accepted, and the status and message of each refusal."""
import base64
import io
import json

import pytest
from PIL import Image

from runtime.sampling import SamplingParams
from serving.openai_request import MAX_IMAGE_BYTES, RequestError, parse_chat
from tests.conftest import IMAGES

MODEL = "prunevlm/tiny-ivtp"


def data_url(path=IMAGES / "chelsea.jpg", mime="image/jpeg") -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


def body(*parts, **fields) -> dict:
    parts = parts or ({"type": "image_url", "image_url": {"url": data_url()}}, {"type": "text", "text": "What is it?"})
    return {"model": MODEL, "messages": [{"role": "user", "content": list(parts)}], **fields}


def refused(b, local=None) -> RequestError:
    with pytest.raises(RequestError) as e:
        parse_chat(b, MODEL, local)
    return e.value


def test_a_data_url_image_and_text_become_a_greedy_request():
    chat = parse_chat(json.dumps(body()).encode(), MODEL)
    want = Image.open(IMAGES / "chelsea.jpg").convert("RGB")
    assert chat.request.prompt == "What is it?" and not chat.stream and not chat.include_usage
    assert chat.request.image.size == want.size and chat.request.image.tobytes() == want.tobytes()
    assert chat.request.sampling == SamplingParams()


def test_sampling_fields_map_onto_sampling_params():
    chat = parse_chat(body(temperature=0.7, top_p=0.9, top_k=40, seed=3, stop=["\n"], max_tokens=12, stream=True,
                           stream_options={"include_usage": True}), MODEL)
    assert chat.request.sampling == SamplingParams(0.7, 0.9, 40, 3, ("\n",), 12)
    assert chat.stream and chat.include_usage
    assert parse_chat(body(max_completion_tokens=5, max_tokens=9), MODEL).request.sampling.max_new_tokens == 5


@pytest.mark.parametrize("b, status, message", [
    (b"{not json", 400, "is not valid JSON"),
    (b"[1, 2]", 400, "must be a JSON object"),
    ({**body(), "model": "gpt-4o"}, 404, "model 'gpt-4o' is not served here; this server serves 'prunevlm/tiny-ivtp'"),
    ({**body(), "messages": []}, 400, "messages must be a non-empty list"),
    ({**body(), "messages": [{"role": "system", "content": "hi"}]}, 400, "single-turn template"),
    ({**body(), "messages": [{"role": "user", "content": "no image"}]}, 400, "a plain string has no image"),
    (body({"type": "text", "text": "only text"}), 400, "exactly one image_url part (LLaVA-1.5 takes one image), got 0"),
    (body({"type": "image_url", "image_url": {"url": data_url()}}), 400, "the prompt is empty"),
    (body({"type": "audio"}), 400, "is neither"),
    (body(temperature=2.5), 400, "temperature must be at most 2.0, got 2.5"),
    (body(temperature=-1), 400, "temperature must be a finite number >= 0"),
    (body(top_p=0), 400, "top_p must be a number in (0, 1]"),
    (body(max_tokens=0), 400, "max_new_tokens must be an integer >= 1, got 0"),
    (body(n=2), 400, "n must be 1"),
    (body(stream="yes"), 400, "stream must be true or false"),
])
def test_malformed_bodies_get_their_status_and_message(b, status, message):
    e = refused(b)
    assert e.status == status and message in e.message


@pytest.mark.parametrize("url, status, message", [
    ("https://example.com/cat.jpg", 400, "does not fetch images from URLs"),
    ("data:text/plain;base64,aGk=", 400, "is not a data:image/<type>;base64, URL"),
    ("data:image/png;base64,@@@", 400, "base64 data is malformed"),
    ("data:image/png;base64,", 400, "the image_url data is empty (0 bytes)"),
    ("data:image/png;base64," + base64.b64encode(b"not an image").decode(), 400,
     "the image_url data is not a readable image"),
    ("data:image/png;base64," + "A" * (MAX_IMAGE_BYTES * 4 // 3 + 8), 413, "the image is over 20 MiB"),
    ("/etc/passwd", 400, "local image paths are off on this server"),
])
def test_bad_images_are_refused_with_the_clis_messages(url, status, message):
    e = refused(body({"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "x"}))
    assert e.status == status and message in e.message


def test_a_truncated_image_says_so():
    png = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(png, "PNG")
    cut = "data:image/png;base64," + base64.b64encode(png.getvalue()[:-40]).decode()
    e = refused(body({"type": "image_url", "image_url": {"url": cut}}, {"type": "text", "text": "x"}))
    assert e.status == 400 and "the image_url data is corrupt or truncated" in e.message


def test_local_images_only_inside_the_allowed_folder(tmp_path):
    allowed, outside = tmp_path / "photos", tmp_path / "private"
    allowed.mkdir(), outside.mkdir()
    (allowed / "cat.jpg").write_bytes((IMAGES / "chelsea.jpg").read_bytes())
    (outside / "secret.jpg").write_bytes((IMAGES / "coffee.jpg").read_bytes())
    (allowed / "link.jpg").symlink_to(outside / "secret.jpg")
    ask = lambda url: body({"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "x"})  # noqa: E731
    for url in ("cat.jpg", f"file://{allowed / 'cat.jpg'}"):
        assert parse_chat(ask(url), MODEL, allowed).request.image.size == Image.open(IMAGES / "chelsea.jpg").size
    for url in ("../private/secret.jpg", str(outside / "secret.jpg"), "link.jpg", "file:///etc/hostname"):
        e = refused(ask(url), allowed)
        assert e.status == 403 and "outside the folder this server may read images from" in e.message
    e = refused(ask("missing.jpg"), allowed)
    assert e.status == 400 and "does not exist" in e.message
