"""Front door: turns arguments into typed configs and calls the library. `python cli.py -h`.

Commands that only run engines (run, profile, visualize, check, build) import no torch: the export flags come
from the methods' configs, so they are read only when the command is `export` (or `methods`).
"""
import argparse
import json
import sys
from pathlib import Path

from engines.errors import EngineError
from engines.onnxruntime_runner import PROVIDERS as ORT_PROVIDERS
from runtime.errors import ConfigError, InputError, PruneDeployError

EXPORT_COMMANDS = ("export", "methods")  # the commands whose parser imports the methods (and torch)
PROVIDERS = list(ORT_PROVIDERS)  # cpu, cuda, tensorrt


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    try:
        args = parser(with_knobs=bool(argv) and argv[0] in EXPORT_COMMANDS).parse_args(argv)
        return args.func(args)
    except (PruneDeployError, EngineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # an extra this command needs is not installed (the runtime-only install has no torch)
        print(f"error: `{argv[0]}` needs {e.name or 'a package'}, which does not import here ({e}); install the "
              "extra it comes with: pip install -e '.[export]' (torch, transformers, onnx) or '.[gpu]' (TensorRT)",
              file=sys.stderr)
        return 2


def parser(with_knobs: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cli.py", description="Export and run visual-token-pruned LLaVA models.")
    sub = p.add_subparsers(required=True, metavar="COMMAND")
    add_export(sub, with_knobs)
    add_run(sub)
    add_eval(sub)
    add_serve(sub)
    add_verify(sub)
    add_flops(sub)
    add_profile(sub)
    add_visualize(sub)
    add_check(sub)
    add_build(sub)
    add_train_atp(sub)
    add_calibrate(sub)
    add_triton_repo(sub)
    add_demo_data(sub)
    sub.add_parser("methods", help="list the pruning methods, their knobs and defaults").set_defaults(func=cmd_methods)
    return p


# ---------------------------------------------------------------- export
def method_knobs() -> dict:
    """Every knob of every registered method, by config field (methods sharing a field share its flag)."""
    from export.methods.knobs import knobs_of
    from export.methods.registry import all_methods
    return {k.field: k for entry in all_methods().values() for k in knobs_of(entry.config_type)}


def add_export(sub, with_knobs: bool):
    e = sub.add_parser("export", help="split a checkpoint into pruning-aware ONNX graphs + manifest")
    e.add_argument("--method", required=True, help="pruning method (see `cli.py methods`)")
    e.add_argument("--model", default="tiny", help="'demo' (trained by python -m demo.train into assets/demo-model), "
                   "'tiny' or 'bench' (embedded, random), 'llava-1.5-7b-random' or 'llava-1.5-13b-random' (the real "
                   "geometry, random fp16 weights, built on first use), or a llava-hf checkpoint dir")
    e.add_argument("--clip", help="CLIP checkpoint dir (text encoder for IVTP); embedded models bring their own")
    e.add_argument("--out", required=True, type=Path, help="engine dir to write")
    e.add_argument("--force", action="store_true", help="replace --out if it exists")
    e.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="weights and activations (norms, softmax and "
                   "pruning scores stay fp32); default: the checkpoint's own, fp32 for the embedded models")
    e.add_argument("--opset", type=int, default=23, help="ONNX opset, 18..23: 23 keeps attention as one ONNX "
                   "Attention op (TensorRT >= 10.14 parses it); 18 writes it out for older TensorRT, e.g. JetPack 6's 10.3")
    for knob in (method_knobs().values() if with_knobs else ()):
        e.add_argument(knob.flag, dest=knob.field, default=None, help=knob.help,
                       **({"action": "store_true"} if knob.parse is bool else {}))
    e.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from export.methods.knobs import config_from_flags
    from export.methods.registry import get_method
    from export.pipeline import ExportConfig, export
    knobs = method_knobs()
    method = get_method(args.method)
    try:
        cfg = config_from_flags(method, {f: getattr(args, f) for f in knobs if getattr(args, f) is not None}, knobs)
    except ValueError as e:
        raise ConfigError(f"bad knob value: {e}") from e
    export(ExportConfig(method=args.method, model=args.model, clip=args.clip, out=args.out, force=args.force,
                        method_config=cfg, opset=args.opset, dtype=args.dtype))
    return 0


def cmd_methods(args) -> int:
    from export.methods.knobs import knobs_of
    from export.methods.registry import all_methods
    for name, entry in sorted(all_methods().items()):
        print(f"{name:10s} {entry.summary}")
        for knob in knobs_of(entry.config_type):
            default = getattr(entry.config_type(), knob.field)
            print(f"{'':10s} {knob.flag:18s} {f'{knob.field}={default}':22s} {knob.help}")
    return 0


# ---------------------------------------------------------------- run, profile, visualize
def add_run(sub):
    r = sub.add_parser("run", help="generate with an engine dir")
    r.add_argument("engine_dir", type=Path)
    r.add_argument("--image", type=Path)
    r.add_argument("--prompt")
    r.add_argument("--requests", type=Path, help="JSONL of {\"image\", \"prompt\"}: run them as one batch")
    r.add_argument("--max-new-tokens", type=int, default=32, help="per request (a request line's own overrides it)")
    r.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; above 0: sample")
    r.add_argument("--top-p", type=float, default=1.0, help="sample from the smallest set of likeliest tokens "
                   "holding this probability, in (0, 1]")
    r.add_argument("--top-k", type=int, default=0, help="sample from the k likeliest tokens only; 0: all")
    r.add_argument("--seed", type=int, help="seed of each request's own random generator (default: a fresh one)")
    r.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="end a request once its text holds TEXT, which is cut off (repeatable)")
    r.add_argument("--provider", choices=PROVIDERS, help="default: best available")
    r.add_argument("--json", action="store_true", help="print JSON (a list with --requests)")
    r.add_argument("--compare-torch", action="store_true",
                   help="also run the PyTorch reference (needs torch + the source checkpoint) and compare greedy tokens")
    r.set_defaults(func=cmd_run)


def run_requests(args) -> list:
    """The requests of `run`, each with the sampling flags (a request line's own keys over them)."""
    from runtime.request import Request
    from runtime.requests_file import read_requests
    from runtime.sampling import SamplingParams
    sampling = SamplingParams(args.temperature, args.top_p, args.top_k, args.seed, args.stop)
    if args.requests:
        if args.image or args.prompt:
            raise InputError("give either --requests FILE or --image with --prompt, not both")
        return read_requests(args.requests, sampling)
    if args.image is None or args.prompt is None:
        raise InputError("run needs --image IMG and --prompt TEXT (or --requests FILE.jsonl)")
    return [Request(args.image, args.prompt, sampling)]


def cmd_run(args) -> int:
    from runtime.load import open_engine_dir
    requests = run_requests(args)
    sampled = [n for n, r in enumerate(requests, 1) if not r.sampling.greedy]
    if args.compare_torch and sampled:
        raise ConfigError(f"--compare-torch compares greedy tokens with the PyTorch reference, but request "
                          f"{sampled[0]} samples (temperature {requests[sampled[0] - 1].sampling.temperature}); "
                          "drop --compare-torch or run with temperature 0")
    generator = open_engine_dir(args.engine_dir, args.provider)
    results = generator.generate(requests, args.max_new_tokens)
    if args.compare_torch:
        from export.profiling.compare import compare_with_torch
        compare_with_torch(generator, requests, results, args.max_new_tokens)
    if args.json:
        items = [r.to_json() for r in results]
        print(json.dumps(items if args.requests else items[0]))
        return 0
    for r in results:
        for s in r.stages:
            print(f"[{s['name']}] kept {len(s['kept'])} visual tokens")
        if generator.pipe.text_encoder:
            print(relevance_line(generator, r))
        print(r.text)
        print(f"(prefill {r.timings_ms['prefill_total']:.1f} ms, total {r.timings_ms['total']:.1f} ms)", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- eval
def add_eval(sub):
    ev = sub.add_parser("eval", help="accuracy of an engine dir on a question file, with visual tokens, FLOPs and "
                        "latency", description="Answer every question of a JSONL file with an engine dir (greedy) "
                        "and score the answers: normalized exact match (VQAv2), the first word for yes/no (POPE), the "
                        "option letter for multiple choice. Every line and image is checked before the engines open.")
    ev.add_argument("engine_dir", type=Path, help="the engine dir to evaluate (any method)")
    ev.add_argument("--data", type=Path, required=True, metavar="FILE.jsonl",
                    help='questions, one per line: {"image": PATH (relative to the file\'s folder), "question": TEXT, '
                    '"answer": TEXT, optional "type": TEXT (for the per-type accuracy), "choices": [TEXT, ...] '
                    '(multiple choice; the answer is a letter or an option\'s text), "id"}; see the README')
    ev.add_argument("--limit", type=int, metavar="N",
                    help="evaluate the first N questions only (all lines are checked)")
    ev.add_argument("--max-new-tokens", type=int, default=8, metavar="N",
                    help="tokens per answer, greedy (default 8: answers are a few words)")
    ev.add_argument("--provider", choices=PROVIDERS, help="ONNX Runtime's execution provider (default: best available)")
    ev.add_argument("--batch", type=int, default=1, metavar="N", help="requests per generate call (default 1, so each "
                    "request's latency is its own; N > 1 amortises time across the batch: each request gets an equal "
                    "share of its batch's prefill and decode ms)")
    ev.add_argument("--out", type=Path, metavar="RESULTS.jsonl", help="also write one record per request (answer, "
                    "correct, visual tokens, TFLOPs, prefill and decode ms)")
    ev.add_argument("--json", action="store_true", help="print the summary as one JSON object (progress stays on "
                    "stderr)")
    ev.add_argument("--compare-torch", action="store_true", help="also answer every question with the PyTorch "
                    "reference (needs torch and the source checkpoint) and count where the greedy tokens differ")
    ev.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from evaluation.evaluate import EvalConfig, evaluate
    from evaluation.report import format_summary
    cfg = EvalConfig(engine_dir=args.engine_dir, data=args.data, limit=args.limit, max_new_tokens=args.max_new_tokens,
                     provider=args.provider, batch=args.batch, out=args.out)
    reference = None
    if args.compare_torch:
        from export.reference import reference_generator
        reference = reference_generator
    summary, records = evaluate(cfg, progress=lambda line: print(line, file=sys.stderr, flush=True), reference=reference)
    print(json.dumps(summary) if args.json else format_summary(summary))
    if args.out:
        print(f"wrote {len(records)} records to {args.out}", file=sys.stderr)
    return 0


def relevance_line(generator, result) -> str:
    """Which instruction words formed IVTP's pseudo-CLS, or that none reached tau and the visual CLS stood in."""
    suffix = result.input_ids[result.input_ids.index(generator.prompts.image_token_id) + 1:]
    words = [generator.prompts.decode([suffix[i]]).strip() for i in result.relevant_tokens]
    if not words:
        return (f"[relevance] no instruction token reached tau {generator.pipe.tau} in CLIP's joint space: the visual "
                "CLS guided the LLM's pruning")
    return f"[relevance] pseudo-CLS from the instruction's {', '.join(map(repr, words))} (CLIP cosine >= tau {generator.pipe.tau})"


def add_serve(sub):
    s = sub.add_parser("serve", help="serve an engine dir: Triton (KServe v2 HTTP/gRPC, metrics) and an OpenAI API")
    s.add_argument("engine_dir", type=Path)
    s.add_argument("--host", default="127.0.0.1", help="address of every endpoint (default: loopback only)")
    s.add_argument("--port", type=int, default=9000, help="the OpenAI-compatible API (/v1/chat/completions)")
    s.add_argument("--http-port", type=int, default=8000, help="Triton's KServe v2 HTTP")
    s.add_argument("--grpc-port", type=int, default=8001, help="Triton's KServe v2 gRPC")
    s.add_argument("--metrics-port", type=int, default=8002, help="Triton's Prometheus metrics")
    s.add_argument("--max-batch", type=int, default=8, help="requests decoded together")
    s.add_argument("--max-queue", type=int, default=32, help="requests waiting for a row; more are refused with 429")
    s.add_argument("--max-new-tokens", type=int, default=32, help="a request's limit when it sets no max_tokens")
    s.add_argument("--batching", choices=["inflight", "static"], default="inflight",
                   help="inflight (default): requests join and leave the running batch at every decode step; "
                        "static: whole batches, the baseline")
    s.add_argument("--provider", choices=PROVIDERS, default="cpu",
                   help="cpu (default), cuda or tensorrt (ONNX Runtime's); in-flight batching keeps the KV caches "
                   "in host memory, so on a GPU they travel each step (--batching static keeps them there)")
    s.add_argument("--model-name", help="the served model's name (default: prunevlm-<method>)")
    s.add_argument("--allow-local-images", type=Path, metavar="DIR",
                   help="let requests name image files inside DIR (nothing outside it); off by default")
    s.add_argument("--stub-env", type=Path, metavar="DIR", help="a Python env with numpy<2 and pyzmq for Triton's "
                   "Python-backend stub (default: made once under ~/.cache/prunevlm)")
    s.add_argument("--no-triton", action="store_true", help="the OpenAI API alone, without Triton")
    s.add_argument("--triton-log", type=Path, help="tritonserver's log file (default: in the temp dir)")
    s.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from serving.server import ServeConfig, Server
    cfg = ServeConfig(args.engine_dir, args.host, args.port, args.http_port, args.grpc_port, args.metrics_port,
                      args.max_batch, args.max_queue, args.max_new_tokens, args.batching, args.provider,
                      args.model_name, args.allow_local_images, args.stub_env, not args.no_triton, args.triton_log)
    try:
        Server(cfg, progress=lambda line: print(line, flush=True)).serve()
    except ImportError as e:
        raise InputError(f"serve needs {e.name}, which does not import here; install the serve extra: "
                         "pip install -e '.[serve]' && pip install --no-deps nvidia-pytriton==0.7.0") from None
    return 0


def add_verify(sub):
    v = sub.add_parser("verify", help="check every file of an engine dir against its sha256 in the manifest")
    v.add_argument("engine_dir", type=Path)
    v.set_defaults(func=cmd_verify)


def cmd_verify(args) -> int:
    """`run` checks sizes only; this reads every byte, with a progress line per file."""
    from runtime.engine_dir import unlisted_files, verify_files
    from runtime.manifest import read_manifest
    m = read_manifest(args.engine_dir)
    gb = lambda n: f"{n / 1e9:.2f} GB"  # noqa: E731
    problems = verify_files(m.root, m.files, lambda done, total, rel: print(
        f"[verify] {gb(done)} of {gb(total)}: {rel}", file=sys.stderr, flush=True))
    for rel in unlisted_files(m.root, m.files):
        print(f"note: {rel} is not listed in the manifest (not part of the engine dir; ignored)", file=sys.stderr)
    if problems:
        print(f"error: {m.root} does not match its manifest: " + "; ".join(problems)
              + ". Export it again (python cli.py export ... --force).", file=sys.stderr)
        return 1
    print(f"{m.root}: all {len(m.files)} files match their sha256 ({gb(sum(r['bytes'] for r in m.files.values()))})")
    return 0


def add_profile(sub):
    pr = sub.add_parser("profile", help="latency of the engines vs the PyTorch reference and the HF baseline")
    pr.add_argument("engine_dir", type=Path)
    pr.add_argument("--runs", type=int, default=5)
    pr.add_argument("--max-new-tokens", type=int, default=16)
    pr.add_argument("--image", type=Path, help="default: a shipped photo")
    pr.add_argument("--prompt")
    pr.add_argument("--provider", choices=PROVIDERS)
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--plot", type=Path, help="write a latency breakdown PNG")
    pr.set_defaults(func=cmd_profile)


def cmd_profile(args) -> int:
    from export.profiling.profile import profile, slow_reference_note
    from runtime.request import Request
    from runtime.shipped import PROFILE_REQUEST
    if args.runs < 1 or args.max_new_tokens < 2:
        raise ConfigError("profile needs --runs >= 1 and --max-new-tokens >= 2 (decode is timed per token)")
    request = Request(args.image or PROFILE_REQUEST.image, args.prompt or PROFILE_REQUEST.prompt)
    report = profile(args.engine_dir, args.runs, args.max_new_tokens, request, args.provider)
    if args.plot:
        from export.profiling.plots import save_profile_plot
        save_profile_plot(report, args.plot)
    if args.json:
        print(json.dumps(report, default=str))
        return 0
    e = report["engines"]
    print(f"{report['method']}: {report['visual_tokens_final']} visual tokens, KV cache "
          f"{report['kv_cache_bytes'] / 2**20:.2f} MiB, FLOPs {report['flops']['pruned_tflops']:.4f} of "
          f"{report['flops']['unpruned_tflops']:.4f} TFLOPs")
    rows = [("engines", e), ("PyTorch reference", report.get("reference")), ("HF baseline (unpruned)", report.get("pytorch"))]
    for name, row in rows:
        if row is not None:
            print(f"  {name:24s} prefill {row['prefill_ms']:8.1f} ms   decode {row['decode_ms_per_token']:7.2f} ms/token")
    if report["pytorch_skipped"]:
        print(f"  PyTorch rows skipped: {report['pytorch_skipped']}")
    if note := slow_reference_note(report):
        print(f"  note: {note}")
    parts = {k: v for k, v in e["breakdown_ms"].items() if k != "decode"}
    print("  engine prefill breakdown (ms, of the run with the median prefill): "
          + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()) + f" = {e['prefill_ms']:.1f}; "
          f"decode graphs {e['breakdown_ms']['decode']:.1f} over all steps")
    return 0


def add_visualize(sub):
    v = sub.add_parser("visualize", help="draw the tokens each stage kept on the image")
    v.add_argument("engine_dir", type=Path)
    v.add_argument("--image", type=Path, required=True)
    v.add_argument("--prompt", required=True)
    v.add_argument("--out", type=Path, required=True, help="PNG to write")
    v.set_defaults(func=cmd_visualize)


def cmd_visualize(args) -> int:
    from runtime.load import open_engine_dir
    from runtime.request import Request
    from runtime.visualize import visualize_request
    visualize_request(open_engine_dir(args.engine_dir), Request(args.image, args.prompt), args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------- flops
def add_flops(sub):
    f = sub.add_parser("flops", help="FLOPs by the IVTP paper's convention (batch 1, 2 FLOPs per MAC)")
    f.add_argument("--arch", default="llava-1.5-7b", help="llava-1.5-7b, llava-1.5-13b, an engine dir or a checkpoint dir")
    f.add_argument("--method", default="none")
    f.add_argument("--text-tokens", type=int, default=512)
    f.add_argument("--keep", type=int, help="final visual tokens (methods with a keep knob)")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_flops)


def cmd_flops(args) -> int:
    from export.profiling.flops import flops_report
    if args.text_tokens < 1:
        raise ConfigError(f"--text-tokens must be at least 1, got {args.text_tokens}")
    report = flops_report(args.arch, args.method, args.text_tokens, {"keep": args.keep} if args.keep else None)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.arch} / {args.method} at {args.text_tokens} text tokens: {report['total_tflops']:.3f} TFLOPs "
              f"(ViT {report['vit_tflops']:.3f} + LLM {report['llm_tflops']:.3f} + extra {report['extra_tflops']:.3f})")
    return 0


# ---------------------------------------------------------------- TensorRT: check, build
def add_check(sub):
    c = sub.add_parser("check", help="static TensorRT-readiness checks of an exported engine dir (no GPU needed)")
    c.add_argument("engine_dir", type=Path)
    c.add_argument("--strict", action="store_true", help="fail on warnings too")
    c.add_argument("--tensorrt", metavar="VERSION", help="check against this TensorRT version (e.g. 10.3 for JetPack 6) "
                   "instead of the installed one")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_check)


def cmd_check(args) -> int:
    from engines.tensorrt.check import failed, format_problems, problems_json
    from engines.tensorrt.version import parse_version
    from runtime.tensorrt.check import check_engine_dir
    try:
        version = parse_version(args.tensorrt) if args.tensorrt else "installed"
    except ValueError as e:
        raise ConfigError(str(e)) from e
    problems = check_engine_dir(args.engine_dir, version)
    print(problems_json(problems) if args.json else format_problems(problems, args.engine_dir))
    return 2 if failed(problems, args.strict) else 0


def add_build(sub):
    b = sub.add_parser("build", help="build TensorRT plans (one per graph) from an exported engine dir")
    b.add_argument("engine_dir", type=Path)
    b.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8", "fp8"],
                   help="default: the graphs' own dtype (export --dtype), built strongly typed; fp16/bf16 from fp32 "
                   "graphs need TensorRT 10.x (11 builds only what the graph says); int8/fp8 need Q/DQ graphs")
    b.add_argument("--out", type=Path, help="engine dir to write (default: ENGINE_DIR.trt)")
    b.add_argument("--force", action="store_true", help="replace --out if it exists")
    b.add_argument("--workspace", type=int, default=4096, help="TensorRT workspace limit in MiB")
    b.add_argument("--max-batch", type=int, default=4, help="largest batch the plans accept")
    b.set_defaults(func=cmd_build)


def cmd_build(args) -> int:
    from runtime.tensorrt.build import BuildConfig, build_engine_dir
    cfg = BuildConfig(precision=args.precision, workspace_mb=args.workspace, max_batch=args.max_batch, force=args.force)
    build_engine_dir(args.engine_dir, args.out, cfg, progress=lambda msg: print(msg, file=sys.stderr))
    return 0


# ---------------------------------------------------------------- calibration: train-atp, calibrate
def add_train_atp(sub):
    ta = sub.add_parser("train-atp", help="train ATP's threshold heads (LLM frozen) for `export --method atp --heads`")
    ta.add_argument("--model", default="tiny", help="'tiny' (embedded) or a llava-hf checkpoint dir")
    ta.add_argument("--out", required=True, type=Path, help="heads file to write (.safetensors)")
    ta.add_argument("--points", default="3,13,23", help="decoder layers after which ATP prunes")
    ta.add_argument("--keep", type=float, default=144,
                    help="target mean visual tokens per decoder layer (Eq. 13, the paper's 'average token count')")
    ta.add_argument("--steps", type=int, default=30)
    ta.add_argument("--batch", type=int, default=4, help="requests per step (Eq. 13 averages over the batch)")
    ta.add_argument("--lr", type=float, default=0.05, help="Adam rate of the threshold biases (weights: 1/100)")
    ta.add_argument("--temperature", type=float, default=50.0, help="soft mask temperature T (Eqs. 9-10)")
    ta.add_argument("--lambda-atp", type=float, default=0.05)
    ta.add_argument("--lambda-target", type=float, default=0.2)
    ta.add_argument("--new-tokens", type=int, default=4, help="length of the self-distillation labels")
    ta.add_argument("--threads", type=int, help="torch threads (default: 1 for the embedded models, whose small "
                    "matmuls run fastest on one; torch's default otherwise)")
    ta.set_defaults(func=cmd_train_atp)


def cmd_train_atp(args) -> int:
    from export.methods.atp.train import TrainAtpConfig, train_atp
    from export.methods.atp.training import describe
    try:
        points = tuple(int(p) for p in args.points.split(","))
    except ValueError:
        raise ConfigError(f"--points takes decoder layer indices separated by commas (e.g. 3,13,23), got "
                          f"{args.points!r}") from None
    cfg = TrainAtpConfig(args.model, args.out, points, args.keep, args.steps, args.batch, args.lr, args.temperature,
                         args.lambda_atp, args.lambda_target, args.new_tokens, args.threads)
    done = train_atp(cfg, progress=lambda msg: print(msg, file=sys.stderr))
    print(f"all {done['examples']} requests, before training: {describe(done['before'])}")
    print(f"all {done['examples']} requests, after {args.steps} steps: {describe(done['after'])}")
    print("mean thresholds (theta_r, theta_s) per point: " + ", ".join(
        f"{p}: ({t[0]:.3f}, {t[1]:.3f})" for p, t in zip(points, done["after"]["thresholds"])))
    return 0


def add_calibrate(sub):
    cal = sub.add_parser("calibrate", help="INT8/FP8 (Q/DQ, from real captured inputs) or INT4 weight-only engine dir, "
                         "with a report against the source dir")
    cal.add_argument("engine_dir", type=Path, help="engine dir to quantize: fp32 for int8/fp8, fp16 or fp32 for int4")
    cal.add_argument("--out", required=True, type=Path, help="engine dir to write")
    cal.add_argument("--data", type=Path, help="folder of images + prompts.txt (one prompt per line, cycled over the "
                     "images), or a JSONL of {\"image\", \"prompt\"}; default: the shipped photos with varied prompts")
    cal.add_argument("--precision", default="int8", choices=["int8", "int4", "fp8"],
                     help="int8: static Q/DQ (ONNX Runtime, TensorRT); int4: 4-bit weights only (the decode-speed and "
                     "memory lever); fp8: e4m3 Q/DQ for TensorRT on GPUs with FP8")
    cal.add_argument("--calibration", choices=["minmax", "percentile", "entropy", "distribution"],
                     help="int8: minmax (default), percentile or entropy; fp8: distribution (the only one)")
    cal.add_argument("--algorithm", default="rtn", choices=["rtn", "gptq", "hqq"],
                     help="int4: rtn (no data), gptq (the captured feeds) or hqq (no data, runs on torch)")
    cal.add_argument("--block-size", type=int, default=128, help="int4: input channels that share one scale")
    cal.add_argument("--int4-format", default="matmulnbits", choices=["matmulnbits", "qdq"],
                     help="int4: MatMulNBits for ONNX Runtime (CPU, CUDA), or int4 DequantizeLinear + MatMul for "
                     "TensorRT (`cli.py build`); qdq takes --algorithm rtn")
    cal.add_argument("--keep-fp32", metavar="PATTERNS",
                     help="comma-separated fnmatch patterns of node names, op types, graph/node or graph names to leave "
                     "unquantized (default: the vision graph when the method prunes inside the ViT; '' quantizes it too)")
    cal.add_argument("--max-requests", type=int, metavar="N", help="calibrate on the first N requests only")
    cal.add_argument("--held-out", type=int, default=3, help="requests kept aside for the report")
    cal.add_argument("--max-new-tokens", type=int, default=4, help="tokens per request while capturing and comparing")
    cal.add_argument("--no-report", action="store_true", help="skip the comparison with the source dir (it opens both "
                     "dirs at once); one generation still checks the new dir")
    cal.add_argument("--force", action="store_true", help="replace --out if it exists")
    cal.add_argument("--json", action="store_true", help="print the report as JSON")
    cal.set_defaults(func=cmd_calibrate)


def cmd_calibrate(args) -> int:
    from calibration.calibrate import CalibrationConfig, calibrate
    from calibration.report import format_report
    patterns = None if args.keep_fp32 is None else tuple(p.strip() for p in args.keep_fp32.split(",") if p.strip())
    report = calibrate(CalibrationConfig(args.engine_dir, args.out, args.data, args.precision, args.calibration, patterns,
                                         args.max_requests, args.held_out, args.max_new_tokens, force=args.force,
                                         algorithm=args.algorithm, block_size=args.block_size,
                                         int4_format=args.int4_format, report=not args.no_report))
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def add_triton_repo(sub):
    t = sub.add_parser("triton-repo", help="write a Triton model repository: an engine model per graph plus the "
                       "streaming Python model (clusters), or that Python model alone (a Python-backend-only server)")
    t.add_argument("engine_dir", type=Path)
    t.add_argument("--out", required=True, type=Path, help="model repository to write")
    t.add_argument("--variant", default="engines", choices=["engines", "in-process"],
                   help="engines: Triton's ONNX Runtime/TensorRT backends run the graphs, called through BLS; "
                   "in-process: the Python model runs them with ONNX Runtime itself")
    t.add_argument("--model-name", default="prunevlm", help="the Python model's name (and the engine models' prefix)")
    t.add_argument("--instances", type=int, default=1, help="instances of each engine model (in-process: of the "
                   "Python model)")
    t.add_argument("--max-batch", type=int, default=8, help="requests decoding together (in-flight batching)")
    t.add_argument("--max-queue", type=int, default=32, help="requests waiting beyond those; more are refused")
    t.add_argument("--max-new-tokens", type=int, default=32, help="limit of a request that sends no max_tokens")
    t.add_argument("--provider", default="cpu", choices=["cpu", "cuda"], help="in-process: ONNX Runtime's provider")
    t.add_argument("--force", action="store_true", help="replace --out if it exists")
    t.set_defaults(func=cmd_triton_repo)


def cmd_triton_repo(args) -> int:
    from serving.triton_repo import IN_PROCESS_PACKAGES, RepoConfig, repo_summary, write_repo
    repo = write_repo(RepoConfig(args.engine_dir, args.out, args.variant, args.model_name, args.instances, args.max_batch,
                            args.max_queue, args.max_new_tokens, args.provider, args.force))
    models = repo_summary(repo)
    print(f"wrote {repo}: {len(models)} models, {sum(n for _, n in models) / 2**20:.1f} MiB")
    for name, size in models:
        print(f"  {name:32s} {size / 2**20:9.1f} MiB")
    needs = "numpy<2" + (", " + ", ".join(IN_PROCESS_PACKAGES) if args.variant == "in-process" else "")
    print(f"run it: tritonserver --model-repository {repo}   (the Python model's env needs {needs}; "
          f"stream with gRPC or POST /v2/models/{args.model_name}/generate_stream)")
    return 0


# ---------------------------------------------------------------- the demo task
def add_demo_data(sub):
    d = sub.add_parser("demo-data", help="write a split of the demo task (scenes of shapes, one question each) for "
                       "`cli.py eval`")
    d.add_argument("--seed", type=int, default=0, help="which split: every seed gives its own scenes. The demo model "
                   "trained on scenes drawn in memory from a stream of their own, so every split is held out")
    d.add_argument("--count", type=int, default=500, help="questions (and images) to write; types take turns")
    d.add_argument("--out", type=Path, required=True, help="dir to write: questions.jsonl and images/")
    d.add_argument("--force", action="store_true", help="replace --out if it exists")
    d.set_defaults(func=cmd_demo_data)


def cmd_demo_data(args) -> int:
    from demo.dataset import write_split
    out = write_split(args.out, args.seed, args.count, args.force,
                      lambda done, total: print(f"[demo-data] {done}/{total} images", file=sys.stderr, flush=True))
    print(f"wrote {args.count} questions to {out / 'questions.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
