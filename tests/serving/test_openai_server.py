"""The OpenAI endpoint over an EngineLoop on the tiny IVTP model, through the official `openai` client and raw HTTP:
answers equal the Generator's alone, streams join to the same text, every refusal has its status and message, and
clients that leave free their rows."""
import base64
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from runtime.preprocess import load_image
from runtime.request import Request
from runtime.sampling import SamplingParams
from serving.engine_loop import EngineLoop
from serving.openai_server import OpenAIServer
from tests.conftest import IMAGES, ROOT

MODEL = "prunevlm/tiny-ivtp"
MAX_TOKENS = 8
PROMPTS = ["What is it?", "Describe the animal on the sofa.", "How many cups are on the table?", "Colour?"]
LONG = "Tell me a long story about this picture."  # runs for hundreds of tokens on the tiny model
SEEDED = SamplingParams(temperature=0.8, seed=3, max_new_tokens=MAX_TOKENS)
IMAGE_URL = "data:image/jpeg;base64," + base64.b64encode((IMAGES / "chelsea.jpg").read_bytes()).decode()


def messages(prompt: str, url: str = IMAGE_URL) -> list:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": prompt}]}]


def body(prompt: str = PROMPTS[0], **fields) -> dict:
    return {"model": MODEL, "messages": messages(prompt, fields.pop("url", IMAGE_URL)), "max_tokens": MAX_TOKENS,
            **fields}


def alone(generator, prompt: str, sampling: SamplingParams | None = None):
    """What the Generator gives the request by itself (called while the loop is idle)."""
    return generator.generate([Request(load_image(IMAGES / "chelsea.jpg"), prompt, sampling)], MAX_TOKENS)[0]


def post(port: int, data, conn: http.client.HTTPConnection | None = None):
    """(status, headers, decoded JSON) of a raw POST to /v1/chat/completions."""
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/chat/completions", data if isinstance(data, bytes) else json.dumps(data).encode(),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), json.loads(resp.read())


def open_stream(port: int, data: dict):
    """A raw streaming request: (connection, response) once its status line is in."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/v1/chat/completions", json.dumps({**data, "stream": True}).encode())
    return conn, conn.getresponse()


def next_event(resp) -> str:
    """The data of the next server-sent event."""
    while True:
        line = resp.readline().decode()
        assert line, "the stream ended"
        if line.startswith("data: "):
            return line[len("data: "):].strip()


def wait_for(condition, seconds: float = 5.0):
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def references(ivtp_engines) -> dict:
    """Computed before the loop starts, so nothing else runs on the generator meanwhile."""
    return {**{p: alone(ivtp_engines, p) for p in PROMPTS}, "seeded": alone(ivtp_engines, PROMPTS[1], SEEDED)}


@pytest.fixture(scope="module")
def loop(ivtp_engines, references):
    loop = EngineLoop(ivtp_engines, max_batch=4, max_new_tokens=MAX_TOKENS).start()
    yield loop
    loop.stop()


@pytest.fixture(scope="module")
def server(loop):
    with OpenAIServer(loop, MODEL, port=0) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0, timeout=60)


def test_a_greedy_answer_is_the_generators_alone_with_exact_usage(client, references, ivtp_engines):
    want = references[PROMPTS[0]]
    r = client.chat.completions.create(model=MODEL, messages=messages(PROMPTS[0]), max_tokens=MAX_TOKENS)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-") and r.model == MODEL
    assert abs(r.created - time.time()) < 60
    (choice,) = r.choices
    assert choice.message.role == "assistant" and choice.message.content == want.text
    assert choice.finish_reason == want.finish_reason
    prompt_tokens = len(want.input_ids) - 1 + ivtp_engines.vision_tokens
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (
        prompt_tokens, MAX_TOKENS, prompt_tokens + MAX_TOKENS) and len(want.token_ids) == MAX_TOKENS
    ext = r.model_extra["prunevlm"]
    assert ext["token_ids"] == want.token_ids and ext["visual_tokens"] == want.visual_tokens["count"]
    assert ext["stages"] == [{"name": s["name"], "kept": len(s["kept"])} for s in want.stages]


@pytest.mark.parametrize("prompt", PROMPTS[:2])
def test_a_stream_joins_to_the_same_text_in_openais_chunk_order(client, references, ivtp_engines, prompt):
    want = references[prompt]
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages(prompt), max_tokens=MAX_TOKENS,
                                                 stream=True, stream_options={"include_usage": True}))
    assert {c.object for c in chunks} == {"chat.completion.chunk"} and len({(c.id, c.created) for c in chunks}) == 1
    first, *middle, last_choice, usage = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert all(c.choices[0].finish_reason is None and c.choices[0].delta.content for c in middle)
    assert "".join(c.choices[0].delta.content for c in middle) == want.text
    assert last_choice.choices[0].finish_reason == want.finish_reason and last_choice.choices[0].delta.content is None
    assert last_choice.model_extra["prunevlm"]["token_ids"] == want.token_ids
    assert usage.choices == [] and usage.usage.completion_tokens == MAX_TOKENS
    assert usage.usage.prompt_tokens == len(want.input_ids) - 1 + ivtp_engines.vision_tokens


def test_a_stream_without_include_usage_has_no_usage_chunk_and_ends_with_done(server, references):
    conn, resp = open_stream(server.port, body(PROMPTS[2]))
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/event-stream"
    events = [next_event(resp)]
    while events[-1] != "[DONE]":
        events.append(next_event(resp))
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["choices"] for c in chunks) and "usage" not in chunks[-1]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == references[PROMPTS[2]].text
    assert resp.read() == b"\n"  # the chunked body ends with [DONE]'s blank line; the connection stays usable
    assert post(server.port, body(PROMPTS[3]), conn)[2]["choices"][0]["message"]["content"] == \
        references[PROMPTS[3]].text


def test_an_http_1_0_client_reads_a_plain_stream_to_the_close(server, references):
    data = json.dumps(body(PROMPTS[1], stream=True)).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    head, _, stream = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding" not in head
    events = [e.removeprefix(b"data: ") for e in stream.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == references[PROMPTS[1]].text


def test_a_stop_string_across_tokens_is_cut_alike_streamed_or_not(client, references, ivtp_engines):
    want = references[PROMPTS[0]]
    boundary = len(ivtp_engines.prompts.decode(want.token_ids[:2]))
    stop = want.text[boundary - 1:boundary + 2]  # begins in token 2 and ends in token 3: its first char is held
    expect = alone(ivtp_engines, PROMPTS[0], SamplingParams(stop=(stop,)))
    assert expect.text == want.text[:want.text.find(stop)] and expect.finish_reason == "stop"
    r = client.chat.completions.create(model=MODEL, messages=messages(PROMPTS[0]), max_tokens=MAX_TOKENS, stop=[stop])
    assert r.choices[0].message.content == expect.text and r.choices[0].finish_reason == "stop"
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages(PROMPTS[0]), max_tokens=MAX_TOKENS,
                                                 stop=[stop], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expect.text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_four_concurrent_requests_each_get_what_they_get_alone(client, references, loop, ivtp_engines):
    start = threading.Barrier(len(PROMPTS))

    def ask(prompt):
        start.wait()
        return client.chat.completions.create(model=MODEL, messages=messages(prompt), max_tokens=MAX_TOKENS)

    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        answers = list(pool.map(ask, PROMPTS))
    assert [a.choices[0].message.content for a in answers] == [references[p].text for p in PROMPTS]
    assert [a.usage.prompt_tokens for a in answers] == [len(references[p].input_ids) - 1 + ivtp_engines.vision_tokens
                                                      for p in PROMPTS]
    assert loop.batcher.peak_rows >= 2  # they shared the batch


def test_seeded_sampling_is_reproducible_and_equals_the_generators(client, references):
    ask = lambda: client.chat.completions.create(  # noqa: E731
        model=MODEL, messages=messages(PROMPTS[1]), max_tokens=MAX_TOKENS, temperature=0.8, seed=3)
    texts = [ask().choices[0].message.content for _ in range(2)]
    assert texts == [references["seeded"].text] * 2 and texts[0] != references[PROMPTS[1]].text


def test_models_and_health(client, server, loop):
    assert [(m.id, m.object, m.owned_by) for m in client.models.list().data] == [(MODEL, "model", "prunevlm")]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError, match="model 'gpt-4o' is not served here"):
        client.models.retrieve("gpt-4o")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("GET", "/health")
    resp = conn.getresponse()
    health = json.loads(resp.read())
    assert resp.status == 200 and health["status"] == "ok" and health["model"] == MODEL
    assert health["loop"]["max_batch"] == 4 and health["loop"]["completed"] == loop.stats()["completed"] > 0


TOO_LONG = "word " * 5000


@pytest.mark.parametrize("data, status, message", [
    (b"{not json", 400, "the request body is not valid JSON"),
    ({**body(), "model": "gpt-4o"}, 404, "model 'gpt-4o' is not served here; this server serves 'prunevlm/tiny-ivtp'"),
    (body(url="data:image/jpeg;base64,@@@"), 400, "the image's base64 data is malformed"),
    (body(url="data:image/jpeg;base64," + base64.b64encode(b"not an image").decode()), 400,
     "the image_url data is not a readable image"),
    (body(TOO_LONG), 400, "positions, but the model has 4096. Shorten the prompt"),
    (body(TOO_LONG, stream=True), 400, "positions, but the model has 4096. Shorten the prompt"),
    (body(temperature=3), 400, "temperature must be at most 2.0, got 3"),
])
def test_bad_requests_get_their_status_and_message(server, data, status, message):
    got, headers, answer = post(server.port, data)
    assert got == status and headers["Content-Type"] == "application/json"
    assert message in answer["error"]["message"] and answer["error"]["code"] == status
    assert answer["error"]["param"] is None and answer["error"]["type"]


def test_an_engine_refusal_reaches_the_openai_client_with_stream_true(client):
    with pytest.raises(openai.BadRequestError, match="but the model has 4096"):
        list(client.chat.completions.create(model=MODEL, messages=messages(TOO_LONG), max_tokens=MAX_TOKENS,
                                            stream=True))


def raw(port: int, method: str, path: str, headers: dict, data: bytes = b""):
    """A request sent piece by piece, so it can leave out Content-Length or the body: (status, headers, JSON)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders(data or None)
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), json.loads(resp.read())


@pytest.mark.parametrize("method, path, headers, status, message, allow", [
    ("POST", "/v1/chat/completions", {}, 411, "send the request body with a Content-Length header", None),
    ("POST", "/v1/chat/completions", {"Content-Length": "-3"}, 400, "Content-Length '-3' is not a byte count", None),
    ("GET", "/v1/completions", {}, 404, "there is no /v1/completions here", None),
    ("GET", "/v1/chat/completions", {}, 405, "/v1/chat/completions takes POST, not GET", "POST"),
    ("DELETE", "/v1/models", {}, 405, "/v1/models takes GET, not DELETE", "GET"),
    ("BREW", "/v1/models", {}, 501, "Unsupported method ('BREW')", None),
])
def test_http_refusals(server, method, path, headers, status, message, allow):
    got, answer_headers, answer = raw(server.port, method, path, headers)
    assert got == status and message in answer["error"]["message"] and answer_headers.get("Allow") == allow


def test_a_body_over_the_limit_is_refused_before_it_is_sent(loop):
    with OpenAIServer(loop, MODEL, port=0, max_body_bytes=1000) as small:
        # Only the headers go out: the answer must come without the server waiting for the 5000 bytes.
        status, headers, answer = raw(small.port, "POST", "/v1/chat/completions", {"Content-Length": "5000"})
        assert status == 413 and headers["Connection"] == "close"
        assert "the request body is 5000 bytes, over this server's limit of 1000 bytes" in answer["error"]["message"]
        assert post(small.port, b"{}")[0] == 404  # under the limit: read and parsed (no model)


class BrokenLoop:
    """A loop whose submit fails, or whose engine fails the request: the server must answer 500 and go on."""

    def __init__(self, how):
        self.how = how

    def submit(self, request, on_token=None, on_done=None):
        if self.how == "submit":
            raise RuntimeError("secret internals")
        on_done(None, RuntimeError("secret internals"))

    def cancel(self, job):
        pass

    def stats(self):
        return {"running": 0}


@pytest.mark.parametrize("how, message", [("submit", "internal server error"),
                                          ("engine", "the engine failed on this request (RuntimeError)")])
def test_other_failures_are_a_short_500_and_the_server_goes_on(how, message):
    with OpenAIServer(BrokenLoop(how), MODEL, port=0) as broken:
        conn = http.client.HTTPConnection("127.0.0.1", broken.port, timeout=10)
        status, _, answer = post(broken.port, body(), conn)
        assert status == 500 and message in answer["error"]["message"]
        assert "secret" not in json.dumps(answer) and "Traceback" not in json.dumps(answer)
        conn.request("GET", "/health")  # the same connection still serves
        assert conn.getresponse().status == 200


def test_a_full_loop_refuses_with_429_and_a_client_that_leaves_frees_its_row(ivtp_engines):
    loop = EngineLoop(ivtp_engines, max_batch=1, max_queue=0, max_new_tokens=MAX_TOKENS).start()
    try:
        with OpenAIServer(loop, MODEL, port=0) as full:
            conn, resp = open_stream(full.port, body(LONG, max_tokens=2000))
            assert json.loads(next_event(resp))["choices"][0]["delta"]["role"] == "assistant"
            status, headers, answer = post(full.port, body())
            assert status == 429 and headers["Retry-After"] == "1"
            assert "the server is at capacity (1 running, 0 queued)" in answer["error"]["message"]
            assert answer["error"]["type"] == "rate_limit_error"
            conn.close()
            wait_for(lambda: loop.stats()["cancelled"] == 1 and loop.stats()["running"] == 0)
            assert post(full.port, body())[0] == 200
            assert loop.stats()["refused"] == 1 and loop.stats()["completed"] == 1
    finally:
        loop.stop()


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_disconnects_mid_request_is_cancelled(server, loop, client, references, stream):
    before = loop.stats()
    if stream:  # noticed when a write fails
        conn, resp = open_stream(server.port, body(LONG, max_tokens=2000))
        assert json.loads(next_event(resp))["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    else:  # noticed by the handler watching its idle socket while the engine works
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps(body(LONG, max_tokens=2000)).encode())
        wait_for(lambda: loop.stats()["running"] == 1)
    conn.close()
    wait_for(lambda: loop.stats()["cancelled"] == before["cancelled"] + 1 and loop.stats()["running"] == 0)
    assert loop.stats()["completed"] == before["completed"]
    r = client.chat.completions.create(model=MODEL, messages=messages(PROMPTS[2]), max_tokens=MAX_TOKENS)
    assert r.choices[0].message.content == references[PROMPTS[2]].text


def test_after_every_refusal_the_server_still_answers(client, references, loop):
    r = client.chat.completions.create(model=MODEL, messages=messages(PROMPTS[1]), max_tokens=MAX_TOKENS)
    assert r.choices[0].message.content == references[PROMPTS[1]].text
    assert loop.stats()["failed"] >= 3  # the over-long prompts, refused by the engine


SERVE_WITHOUT_TORCH = """
import sys, urllib.request
for name in ("torch", "transformers"):
    sys.modules[name] = None  # importing either now raises ImportError
from runtime.load import open_engine_dir
from serving.engine_loop import EngineLoop
from serving.openai_server import OpenAIServer
loop = EngineLoop(open_engine_dir(sys.argv[1], "cpu"), max_batch=1).start()
with OpenAIServer(loop, sys.argv[2], port=0) as server:
    request = urllib.request.Request(server.url + "/chat/completions", data=sys.stdin.buffer.read())
    print(urllib.request.urlopen(request).read().decode())
loop.stop()
"""


def test_the_server_runs_without_torch(ivtp_dir, references):
    done = subprocess.run([sys.executable, "-c", SERVE_WITHOUT_TORCH, str(ivtp_dir), MODEL], cwd=ROOT,
                          input=json.dumps(body(PROMPTS[3])).encode(), capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads(done.stdout)["choices"][0]["message"]["content"] == references[PROMPTS[3]].text
