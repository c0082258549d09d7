"""`cli.py serve` for real: one server process on loopback (Triton through PyTriton, and the OpenAI endpoint), talked
to with tritonclient over HTTP and gRPC and with the official openai package; every answer equals `cli.py run`."""
import base64
import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import cli
from serving.server import free_ports

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "assets" / "images" / "chelsea.jpg"
PROMPT = "What animal is on the sofa?"
TOKENS = 8

pytest.importorskip("pytriton", reason="serve needs nvidia-pytriton (pip install --no-deps nvidia-pytriton==0.7.0)")
httpclient = pytest.importorskip("tritonclient.http")
grpcclient = pytest.importorskip("tritonclient.grpc")
openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server(ivtp_dir, tmp_path_factory):
    api, http, grpc, metrics = free_ports(4)
    log = tmp_path_factory.mktemp("serve") / "triton.log"
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "serve", str(ivtp_dir), "--port", str(api),
                             "--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics),
                             "--max-batch", "4", "--max-new-tokens", str(TOKENS), "--triton-log", str(log)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.strip() == "ready":
            break
    else:
        pytest.fail(f"serve exited with {proc.wait()} before it was ready:\n{''.join(lines)}")
    threading.Thread(target=lambda: [lines.append(x) for x in proc.stdout], daemon=True).start()
    yield {"api": api, "http": http, "grpc": grpc, "metrics": metrics, "model": "prunevlm-ivtp", "lines": lines}
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0, "".join(lines)
    assert "stopping" in "".join(lines)


@pytest.fixture(scope="module")
def cli_run(ivtp_dir):
    """What `cli.py run --json` gives for a request, in its own process."""
    def run(prompt=PROMPT, *flags):
        done = subprocess.run([sys.executable, str(ROOT / "cli.py"), "run", str(ivtp_dir), "--image", str(IMAGE),
                               "--prompt", prompt, "--max-new-tokens", str(TOKENS), "--json", *flags],
                              cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)
    return run


@pytest.fixture(scope="module")
def want(cli_run):
    return cli_run()


def triton_inputs(module, image=None, prompt=PROMPT, **knobs):
    arrays = {"image": np.array([IMAGE.read_bytes() if image is None else image], dtype=np.object_),
              "prompt": np.array([prompt.encode()], dtype=np.object_)}
    types = {"temperature": np.float32, "top_p": np.float32, "top_k": np.int32, "seed": np.int64,
             "max_tokens": np.int32}
    arrays.update({k: np.array([v], types[k]) for k, v in knobs.items()})
    inputs = []
    for name, a in arrays.items():
        dtype = "BYTES" if a.dtype == object else {np.float32: "FP32", np.int32: "INT32", np.int64: "INT64"}[a.dtype.type]
        inputs.append(module.InferInput(name, list(a.shape), dtype))
        inputs[-1].set_data_from_numpy(a)
    return inputs


def stream(server, inputs, model_suffix="_stream"):
    """(pieces of text, token ids, last response's finish reason and details) of one gRPC stream."""
    client, events = grpcclient.InferenceServerClient(f"127.0.0.1:{server['grpc']}"), queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)))
    client.async_stream_infer(server["model"] + model_suffix, inputs, enable_empty_final_response=True)
    pieces, tokens, last = [], [], None
    try:
        while True:
            result, error = events.get(timeout=60)
            if error is not None:
                raise error
            response = result.get_response()
            if response.outputs:
                pieces.append(result.as_numpy("text")[0].decode())
                tokens += result.as_numpy("token_ids").tolist()
                last = result
            if response.parameters["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
        client.close()
    return pieces, tokens, last.as_numpy("finish_reason")[0].decode(), json.loads(last.as_numpy("details")[0])


def chat_messages(prompt=PROMPT):
    url = "data:image/jpeg;base64," + base64.b64encode(IMAGE.read_bytes()).decode()
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                         {"type": "text", "text": prompt}]}]


def test_kserve_http_infer_equals_cli_run(server, want):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server['http']}")
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(server["model"])
        got = client.infer(server["model"], triton_inputs(httpclient))
    finally:
        client.close()
    details = json.loads(got.as_numpy("details")[0])
    assert got.as_numpy("text")[0].decode() == want["text"]
    assert got.as_numpy("token_ids").tolist() == want["token_ids"]
    assert got.as_numpy("finish_reason")[0].decode() == want["finish_reason"]
    assert details["stages"] == want["stages"] and details["relevant_tokens"] == want["relevant_tokens"]
    assert details["input_ids"] == want["input_ids"]


def test_grpc_stream_gives_the_tokens_one_by_one_and_the_same_answer(server, want):
    pieces, tokens, finish, details = stream(server, triton_inputs(grpcclient))
    assert "".join(pieces) == want["text"] and tokens == want["token_ids"] and finish == want["finish_reason"]
    assert len(pieces) >= len(want["token_ids"]) // 2  # streamed, not one piece at the end
    assert details["stages"] == want["stages"]


def test_seeded_sampling_over_grpc_equals_cli_run_with_the_same_flags(server, cli_run):
    want = cli_run(PROMPT, "--temperature", "0.9", "--top-k", "20", "--seed", "7")
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{server['grpc']}")
    try:
        got = client.infer(server["model"], triton_inputs(grpcclient, temperature=0.9, top_k=20, seed=7))
    finally:
        client.close()
    assert got.as_numpy("token_ids").tolist() == want["token_ids"]


def test_openai_client_streamed_and_not_equals_cli_run(server, want):
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{server['api']}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == [server["model"]]
    whole = client.chat.completions.create(model=server["model"], messages=chat_messages())
    assert whole.choices[0].message.content == want["text"]
    assert whole.choices[0].finish_reason == want["finish_reason"]
    assert whole.usage.completion_tokens == len(want["token_ids"])
    chunks = list(client.chat.completions.create(model=server["model"], messages=chat_messages(), stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want["text"]
    assert chunks[-1].choices[0].finish_reason == want["finish_reason"]


def test_every_front_end_at_once_shares_the_batch_and_each_gets_its_own_answer(server, cli_run):
    prompts = ["Describe the sofa.", "What colour is the cat?", "Is it day or night?"]
    wants = [cli_run(p) for p in prompts]
    got = {}

    def over_openai():
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{server['api']}/v1", api_key="unused", max_retries=0)
        got[0] = client.chat.completions.create(model=server["model"], messages=chat_messages(prompts[0])) \
            .choices[0].message.content

    def over_http():
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server['http']}")
        got[1] = client.infer(server["model"], triton_inputs(httpclient, prompt=prompts[1])).as_numpy("text")[0].decode()
        client.close()

    def over_grpc_stream():
        got[2] = "".join(stream(server, triton_inputs(grpcclient, prompt=prompts[2]))[0])

    threads = [threading.Thread(target=f) for f in (over_openai, over_http, over_grpc_stream)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [got.get(i) for i in range(3)] == [w["text"] for w in wants]


def test_bad_triton_input_is_answered_with_our_message_and_the_server_goes_on(server, want):
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server['http']}")
    try:
        with pytest.raises(Exception, match="the image input is not a readable image"):
            client.infer(server["model"], triton_inputs(httpclient, image=b"not an image"))
        with pytest.raises(Exception, match="the image input's base64 data is malformed"):
            client.infer(server["model"], triton_inputs(httpclient, image=b"data:image/png;base64,@@"))
        with pytest.raises(Exception, match="temperature must be a finite number >= 0"):
            client.infer(server["model"], triton_inputs(httpclient, temperature=-1.0))
        with pytest.raises(Exception, match="unexpected inference input 'bogus'") as e:  # Triton's own check
            bogus = httpclient.InferInput("bogus", [1], "INT32")
            bogus.set_data_from_numpy(np.array([1], np.int32))
            client.infer(server["model"], triton_inputs(httpclient) + [bogus])
        assert e.value.status() == "400"
        assert client.infer(server["model"], triton_inputs(httpclient)).as_numpy("text")[0].decode() == want["text"]
    finally:
        client.close()
    with pytest.raises(Exception, match="the prompt is empty"):
        stream(server, triton_inputs(grpcclient, prompt="   "))


def test_metrics_count_the_requests_of_each_model_and_of_every_front_end(server):
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{server['metrics']}/metrics", timeout=10).read().decode()
    counts = {line.split("{")[1].split(",")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("nv_inference_request_success{")}
    assert counts[f'model="{server["model"]}"'] >= 1 and counts[f'model="{server["model"]}_stream"'] >= 1
    ours = urllib.request.urlopen(f"http://127.0.0.1:{server['api']}/metrics", timeout=10).read().decode()
    totals = {line.split('outcome="')[1].split('"')[0]: int(line.rsplit(" ", 1)[1]) for line in ours.splitlines()
              if line.startswith(f'prunevlm_requests_total{{model="{server["model"]}",')}
    assert totals["completed"] >= 9 and totals["refused"] == 0  # every front end's requests, counted once each
    assert f'prunevlm_max_batch{{model="{server["model"]}"}} 4' in ours.splitlines()


def test_serve_refuses_a_taken_port_before_loading_anything(capsys, ivtp_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cli.main(["serve", ivtp_dir, "--port", str(port), "--no-triton"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port} (--port)" in err and "pick another with --port" in err


def test_serve_refuses_one_port_for_two_endpoints(capsys, ivtp_dir):
    code = cli.main(["serve", ivtp_dir, "--port", "18123", "--http-port", "18123"])
    assert code == 2
    assert "--http-port and --port are both 18123" in capsys.readouterr().err


@pytest.fixture(autouse=True, scope="module")
def no_stray_stubs():
    """Triton's stubs must end with the server (a stub left behind ignores SIGTERM)."""
    before = set(_stubs())
    yield
    for _ in range(50):  # they exit just after tritonserver does
        left = set(_stubs()) - before
        if not left:
            break
        time.sleep(0.1)
    assert not left, f"stub processes left behind: {sorted(left)}"


def _stubs() -> list[str]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if b"triton_python_backend_stub" in (proc / "cmdline").read_bytes():
                found.append(proc.name)
        except OSError:
            pass
    return found
