"""`cli.py triton-repo`: the repository's configs against Triton's schema and the manifest, its files, the BLS
orchestration run with a stand-in for pb_utils, and the in-process variant served by PyTriton's bundled tritonserver,
each giving the tokens and kept indices that Generator.generate gives alone."""
import base64
import importlib.util
import json
import queue
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from cli import main
from runtime.errors import EngineDirError
from runtime.load import open_engine_dir
from runtime.manifest import load_manifest
from runtime.preprocess import load_image_bytes
from runtime.request import Request
from serving import triton_config
from serving.triton_repo import IN_PROCESS_PACKAGES, RepoConfig, write_repo
from tests.conftest import IMAGES, ROOT
from tests.serving import fake_pb_utils
from tests.serving.bundled_triton import BundledTriton, bundled_tritonserver

TYPES = {"float32": mc.TYPE_FP32, "int32": mc.TYPE_INT32, "int64": mc.TYPE_INT64, "bool": mc.TYPE_BOOL}
NEW_TOKENS = 4
PROMPTS = ["What animal is on the sofa?", "Describe the colours of the picture."]
BAD_IMAGE = b"this is not an image"


def parse(path: Path):
    return text_format.Parse(path.read_text(), mc.ModelConfig())


def alone(engine_dir, image: bytes, prompt: str):
    """What the runtime gives this request alone: the reference every served answer must equal."""
    return open_engine_dir(engine_dir, "cpu").generate([Request(load_image_bytes(image), prompt)], NEW_TOKENS)[0]


@pytest.fixture(scope="module")
def engines_repo(ivtp_dir, tmp_path_factory):
    return write_repo(RepoConfig(ivtp_dir, tmp_path_factory.mktemp("repo") / "engines", instances=2, max_batch=4,
                                 max_new_tokens=NEW_TOKENS))


def test_every_engine_model_has_its_graphs_tensors_and_the_python_model_streams(engines_repo, ivtp_dir):
    m = load_manifest(ivtp_dir)
    models = {p.parent.name: parse(p) for p in engines_repo.glob("*/config.pbtxt")}
    assert set(models) == {"prunevlm"} | {"prunevlm_" + g.replace(".", "_") for g in m.graphs}
    for graph, record in m.graphs.items():
        config = models["prunevlm_" + graph.replace(".", "_")]
        assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 0
        assert not config.model_transaction_policy.decoupled
        assert [(g.kind, g.count) for g in config.instance_group] == [(mc.ModelInstanceGroup.KIND_GPU, 2)]
        for got, want in ((config.input, record.inputs), (config.output, record.outputs)):
            assert [(t.name, t.data_type, list(t.dims)) for t in got] == \
                [(t.name, TYPES[t.dtype], [d if isinstance(d, int) else -1 for d in t.shape]) for t in want]
    python = models["prunevlm"]
    assert python.backend == "python" and python.model_transaction_policy.decoupled
    assert [t.name for t in python.input] == ["image", "prompt", "max_tokens", "temperature", "top_p", "top_k",
                                              "seed", "stop"]
    assert [t.optional for t in python.input] == [False, False] + [True] * 6
    assert {k: v.string_value for k, v in python.parameters.items()} == {
        "variant": "engines", "engine_prefix": "prunevlm", "provider": "cpu", "max_batch": "4", "max_queue": "32",
        "max_new_tokens": str(NEW_TOKENS)}


def test_the_repo_holds_every_file_at_its_size_and_the_runtime_beside_model_py(engines_repo, ivtp_dir):
    m = load_manifest(ivtp_dir)
    for graph, record in m.graphs.items():
        version = engines_repo / ("prunevlm_" + graph.replace(".", "_")) / "1"
        assert (version / "model.onnx").stat().st_size == (ivtp_dir / record.file).stat().st_size
        assert sorted(p.name for p in version.iterdir()) == sorted(["model.onnx", *([record.data] if record.data else [])])
        if record.data:
            assert (version / record.data).stat().st_size == (ivtp_dir / record.data).stat().st_size
    python = engines_repo / "prunevlm" / "1"
    assert (python / "model.py").read_text() == (ROOT / "serving" / "triton_model.py").read_text()
    for rel in m.tokenizers.values():
        assert (python / "engine" / rel).read_bytes() == (ivtp_dir / rel).read_bytes()
    assert not list((python / "engine").glob("*.onnx*"))  # the graphs are the engine models'
    assert (python / "runtime" / "generator.py").is_file() and (python / "engines" / "onnxruntime_runner.py").is_file()
    assert sorted(p.name for p in (python / "serving").iterdir()) == ["__init__.py", "engine_loop.py", "stream_text.py",
                                                                       "triton_engines.py", "triton_io.py"]


def test_model_py_imports_from_the_repo_alone_without_torch(engines_repo, tmp_path):
    """The stub's env has no checkout and no torch: model.py must import with only its version dir."""
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('torch is not installed here')\n")
    fake = Path(fake_pb_utils.__file__)
    (tmp_path / "triton_python_backend_utils.py").write_text(fake.read_text())
    version = engines_repo / "prunevlm" / "1"
    code = (f"import sys, importlib.util; sys.path[:0] = [{str(tmp_path)!r}]; "
            f"s = importlib.util.spec_from_file_location('model', {str(version / 'model.py')!r}); "
            "mod = importlib.util.module_from_spec(s); s.loader.exec_module(mod); "
            "import runtime, serving.engine_loop; print(runtime.__file__, serving.engine_loop.__file__, "
            "'torch' in sys.modules and sys.modules['torch'] is not None)")
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runtime_file, loop_file, torch_loaded = done.stdout.split()
    assert runtime_file == str(version / "runtime" / "__init__.py")
    assert loop_file == str(version / "serving" / "engine_loop.py") and torch_loaded == "False"


def test_an_existing_out_needs_force_and_a_failed_write_leaves_nothing(ivtp_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "repo"
    assert main(["triton-repo", ivtp_dir, "--out", out, "--variant", "in-process", "--max-new-tokens", 3]) == 0
    printed = capsys.readouterr().out
    assert "prunevlm" in printed and "tritonserver --model-repository" in printed
    assert main(["triton-repo", ivtp_dir, "--out", out]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["triton-repo", ivtp_dir, "--out", out, "--force"]) == 0  # now the engines variant
    assert (out / "prunevlm_vision" / "1" / "model.onnx").is_file()
    with pytest.raises(EngineDirError, match="does not exist"):
        write_repo(RepoConfig(tmp_path / "missing", tmp_path / "other"))
    # A config the schema refuses (a bug) is caught at write time, and the partial repository is removed.
    good = triton_config.engine_config
    monkeypatch.setattr("serving.triton_repo.engine_config",
                        lambda *a: good(*a).replace("max_batch_size: 0", "max_batch_size: 0\nbogus_field: 1"))
    with pytest.raises(triton_config.RepoError, match="does not parse as a Triton model config"):
        write_repo(RepoConfig(ivtp_dir, tmp_path / "broken"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def run_fake_triton(repo: Path, monkeypatch, requests) -> dict:
    """model.py of `repo` in this process, pb_utils faked: initialize, execute the requests, wait, finalize; the
    engine loop's stats at the end."""
    monkeypatch.setattr(fake_pb_utils, "REPO", repo)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake_pb_utils)
    monkeypatch.setattr(sys, "path", list(sys.path))  # model.py puts its dir first
    spec = importlib.util.spec_from_file_location("prunevlm_triton_model", repo / "prunevlm" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json_format.MessageToDict(parse(repo / "prunevlm" / "config.pbtxt"), preserving_proto_field_name=True)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config)})
    try:
        assert model.execute(requests) is None
        for r in requests:
            assert r.sender.done.wait(120)
        return model.loop.stats()
    finally:
        model.finalize()


def streamed(responses) -> dict:
    """A stream's responses joined: text, token ids, finish reason and details of the last."""
    outs = [r.outputs() for r in responses]
    return {"text": "".join(o["text"][0].decode() for o in outs), "tokens": [int(t) for o in outs for t in o["token_ids"]],
            "finish_reason": outs[-1]["finish_reason"][0].decode(), "details": json.loads(outs[-1]["details"][0]),
            "partial_finish": [o["finish_reason"][0].decode() for o in outs[:-1]]}


def test_the_bls_model_streams_what_the_generator_gives_alone(engines_repo, ivtp_dir, monkeypatch):
    image = (IMAGES / "chelsea.jpg").read_bytes()
    obj = lambda value: np.array([value], dtype=np.object_)  # noqa: E731
    requests = [fake_pb_utils.Request(image=obj(image), prompt=obj(p.encode())) for p in PROMPTS]
    requests.insert(1, fake_pb_utils.Request(image=obj(BAD_IMAGE), prompt=obj(b"What is this?")))
    fake_pb_utils.calls.clear()
    run_fake_triton(engines_repo, monkeypatch, requests)
    bad = requests.pop(1).sender.responses
    assert len(bad) == 1 and bad[0].has_error()
    assert bad[0].error().code() == fake_pb_utils.TritonError.INVALID_ARG
    assert "the image input is not a readable image" in bad[0].error().message()
    for prompt, r in zip(PROMPTS, requests):
        want, got = alone(ivtp_dir, image, prompt), streamed(r.sender.responses)
        assert got["tokens"] == want.token_ids and got["text"] == want.text
        assert got["details"]["stages"] == want.stages and got["finish_reason"] == want.finish_reason
        assert len(r.sender.responses) == len(want.token_ids) + 1 and set(got["partial_finish"]) == {""}
    # Every graph ran as its own engine model; the last decoder once per prefill and per decode step, which the two
    # requests share where they run together (how many depends on when the second one joined).
    assert {"prunevlm_vision", "prunevlm_text_encoder", "prunevlm_prune_0", "prunevlm_lm_head"} <= set(fake_pb_utils.calls)
    assert 2 + NEW_TOKENS - 1 <= fake_pb_utils.calls.count("prunevlm_decoder_4") <= 2 * NEW_TOKENS


def test_a_client_that_leaves_mid_stream_frees_its_row_and_the_others_go_on(engines_repo, ivtp_dir, monkeypatch):
    image = (IMAGES / "chelsea.jpg").read_bytes()
    obj = lambda value: np.array([value], dtype=np.object_)  # noqa: E731
    leaving = fake_pb_utils.Request(cancel_after=1, image=obj(image), prompt=obj(PROMPTS[0].encode()))
    staying = fake_pb_utils.Request(image=obj(image), prompt=obj(PROMPTS[1].encode()))
    stats = run_fake_triton(engines_repo, monkeypatch, [leaving, staying])
    assert stats["cancelled"] == 1 and stats["completed"] == 1
    first, last = leaving.sender.responses
    assert len(first.outputs()["token_ids"]) == 1  # one token went out, then the client was gone
    assert last.has_error() and last.error().code() == fake_pb_utils.TritonError.CANCELLED
    want = alone(ivtp_dir, image, PROMPTS[1])
    assert streamed(staying.sender.responses)["tokens"] == want.token_ids


# ---------------------------------------------------------------- the in-process variant, served for real
@pytest.fixture(scope="module")
def server(ivtp_dir, tmp_path_factory):
    if bundled_tritonserver() is None:
        pytest.skip("PyTriton's bundled tritonserver is not installed (pip install nvidia-pytriton==0.7.0 --no-deps)")
    from serving.stub_env import ensure_stub_env
    stub_env = ensure_stub_env(progress=lambda msg: None, extra=IN_PROCESS_PACKAGES)
    work = tmp_path_factory.mktemp("triton")
    repo = write_repo(RepoConfig(ivtp_dir, work / "repo", variant="in-process", max_batch=4,
                                 max_new_tokens=NEW_TOKENS))
    s = BundledTriton(repo, stub_env, work).start()
    yield s
    s.stop()


def grpc_stream(s, requests: list[tuple[bytes, str]]) -> list[list]:
    """All requests on one stream, at once (they batch in flight); per request its results, or its error."""
    import tritonclient.grpc as grpc
    client = grpc.InferenceServerClient(f"127.0.0.1:{s.grpc}")
    got = queue.Queue()
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    for i, (image, prompt) in enumerate(requests):
        inputs = [grpc.InferInput("image", [1], "BYTES"), grpc.InferInput("prompt", [1], "BYTES")]
        inputs[0].set_data_from_numpy(np.array([image], dtype=np.object_))
        inputs[1].set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
        client.async_stream_infer("prunevlm", inputs, request_id=str(i), enable_empty_final_response=True)
    streams, open_ = [[] for _ in requests], set(range(len(requests)))
    while open_:
        result, error = got.get(timeout=120)
        if error is not None:  # an error names no request: send a request expected to fail on a stream alone
            assert len(requests) == 1, f"a request failed: {error}"
            streams[0].append(error)
            break
        i = int(result.get_response().id)
        final = result.get_response().parameters["triton_final_response"].bool_param
        if result.get_response().outputs:
            streams[i].append({o: result.as_numpy(o) for o in ("text", "token_ids", "finish_reason", "details")})
        if final:
            open_.discard(i)
    client.stop_stream()
    client.close()
    return streams


def joined(stream: list[dict]) -> dict:
    return {"text": "".join(o["text"][0].decode() for o in stream),
            "tokens": [int(t) for o in stream for t in o["token_ids"]],
            "finish_reason": stream[-1]["finish_reason"][0].decode(), "details": json.loads(stream[-1]["details"][0])}


def test_grpc_streams_batched_requests_as_the_generator_gives_them_alone(server, ivtp_dir):
    image = (IMAGES / "chelsea.jpg").read_bytes()
    streams = grpc_stream(server, [(image, p) for p in PROMPTS])
    for prompt, stream in zip(PROMPTS, streams):
        want, got = alone(ivtp_dir, image, prompt), joined(stream)
        assert got["tokens"] == want.token_ids and got["text"] == want.text
        assert got["details"]["stages"] == want.stages and got["finish_reason"] == want.finish_reason
        assert len(stream) == len(want.token_ids) + 1  # a response per token, then the last


def test_a_bad_image_is_refused_with_our_message_and_the_server_keeps_serving(server, ivtp_dir):
    [[error]] = grpc_stream(server, [(BAD_IMAGE, "What is this?")])
    assert error.message().startswith("the image input is not a readable image")  # a stream's errors carry no code:
    status, body = http_post(server, "/v2/models/prunevlm/generate_stream", {"image": "not an image", "prompt": "Hi"})
    assert status == 400 and "the image input is not a readable image" in body  # INVALID_ARG is HTTP's 400
    image = (IMAGES / "chelsea.jpg").read_bytes()
    [stream] = grpc_stream(server, [(image, PROMPTS[0])])
    assert joined(stream)["tokens"] == alone(ivtp_dir, image, PROMPTS[0]).token_ids


def http_post(s, route: str, body: dict) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{s.http}{route}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_http_generate_stream_sends_server_sent_events_of_the_same_tokens(server, ivtp_dir):
    image = (IMAGES / "chelsea.jpg").read_bytes()  # JSON carries no bytes: the image goes as a data: URL
    url = "data:image/jpeg;base64," + base64.b64encode(image).decode()
    status, body = http_post(server, "/v2/models/prunevlm/generate_stream", {"image": url, "prompt": PROMPTS[1]})
    assert status == 200, body
    events = [json.loads(line[len("data: "):]) for line in body.splitlines() if line.startswith("data: ")]
    want = alone(ivtp_dir, image, PROMPTS[1])
    tokens = [t for e in events for t in (e["token_ids"] if isinstance(e["token_ids"], list) else [e["token_ids"]])]
    assert tokens == want.token_ids and "".join(e["text"] for e in events) == want.text
    assert events[-1]["finish_reason"] == want.finish_reason
    assert json.loads(events[-1]["details"])["stages"] == want.stages


def test_health_ready_and_metrics(server):
    import tritonclient.http as http
    client = http.InferenceServerClient(f"127.0.0.1:{server.http}")
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("prunevlm")
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert 'nv_inference_request_success{model="prunevlm"' in metrics
