"""Front door: turns arguments into typed configs and calls the library. `python cli.py -h`."""
import argparse
import json
import sys
from pathlib import Path

from runtime.errors import PruneDeployError

def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except PruneDeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cli.py", description="Export and run visual-token-pruned LLaVA models.")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    e = sub.add_parser("export", help="split a checkpoint into pruning-aware ONNX graphs + manifest")
    e.add_argument("--method", required=True, help="pruning method (see `cli.py methods`)")
    e.add_argument("--model", default="tiny", help="'tiny' (embedded) or a llava-hf checkpoint dir")
    e.add_argument("--clip", help="CLIP checkpoint dir (text encoder for IVTP); embedded models bring their own")
    e.add_argument("--out", required=True, type=Path, help="engine dir to write")
    e.add_argument("--force", action="store_true", help="replace --out if it exists")
    e.add_argument("--opset", type=int, default=23, help="ONNX opset, 18..23: 23 keeps attention as one ONNX "
                   "Attention op (TensorRT >= 10.14 parses it); 18 writes it out for older TensorRT, e.g. JetPack 6's 10.3")
    for knob in method_knobs().values():
        e.add_argument(knob.flag, dest=knob.field, default=None, help=knob.help,
                       **({"action": "store_true"} if knob.parse is bool else {}))
    e.set_defaults(func=cmd_export)

    r = sub.add_parser("run", help="generate with an engine dir")
    r.add_argument("engine_dir", type=Path)
    r.add_argument("--image", type=Path)
    r.add_argument("--prompt")
    r.add_argument("--requests", type=Path, help="JSONL of {\"image\", \"prompt\"}: run them as one batch")
    r.add_argument("--max-new-tokens", type=int, default=32)
    r.add_argument("--provider", choices=["cpu", "cuda", "tensorrt"], help="default: best available")
    r.add_argument("--json", action="store_true", help="print JSON (a list with --requests)")
    r.add_argument("--compare-torch", action="store_true",
                   help="also run the PyTorch reference (needs torch + the source checkpoint) and compare")
    r.set_defaults(func=cmd_run)

    f = sub.add_parser("flops", help="FLOPs by the IVTP paper's convention (batch 1, 2 FLOPs per MAC)")
    f.add_argument("--arch", default="llava-1.5-7b", help="llava-1.5-7b, llava-1.5-13b, an engine dir or a checkpoint dir")
    f.add_argument("--method", default="none")
    f.add_argument("--text-tokens", type=int, default=512)
    f.add_argument("--keep", type=int, help="final visual tokens (methods with a keep knob)")
    f.add_argument("--json", action="store_true")
    f.set_defaults(func=cmd_flops)

    pr = sub.add_parser("profile", help="latency of the engines vs the PyTorch reference and the HF baseline")
    pr.add_argument("engine_dir", type=Path)
    pr.add_argument("--runs", type=int, default=5)
    pr.add_argument("--max-new-tokens", type=int, default=16)
    pr.add_argument("--image", type=Path, help="default: a shipped photo")
    pr.add_argument("--prompt")
    pr.add_argument("--provider", choices=["cpu", "cuda", "tensorrt"])
    pr.add_argument("--json", action="store_true")
    pr.add_argument("--plot", type=Path, help="write a latency breakdown PNG")
    pr.set_defaults(func=cmd_profile)

    v = sub.add_parser("visualize", help="draw the tokens each stage kept on the image")
    v.add_argument("engine_dir", type=Path)
    v.add_argument("--image", type=Path, required=True)
    v.add_argument("--prompt", required=True)
    v.add_argument("--out", type=Path, required=True, help="PNG to write")
    v.set_defaults(func=cmd_visualize)

    c = sub.add_parser("check", help="static TensorRT-readiness checks of an exported engine dir (no GPU needed)")
    c.add_argument("engine_dir", type=Path)
    c.add_argument("--strict", action="store_true", help="fail on warnings too")
    c.add_argument("--tensorrt", metavar="VERSION", help="check against this TensorRT version (e.g. 10.3 for JetPack 6) "
                   "instead of the installed one")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_check)

    b = sub.add_parser("build", help="build TensorRT plans (one per graph) from an exported engine dir")
    b.add_argument("engine_dir", type=Path)
    b.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8", "fp8"], required=True,
                   help="fp16/bf16 need TensorRT 10.x; int8/fp8 need Q/DQ graphs")
    b.add_argument("--out", type=Path, help="engine dir to write (default: ENGINE_DIR.trt)")
    b.add_argument("--workspace", type=int, default=4096, help="TensorRT workspace limit in MiB")
    b.add_argument("--max-batch", type=int, default=4, help="largest batch the plans accept")
    b.set_defaults(func=cmd_build)

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

    cal = sub.add_parser("calibrate", help="INT8 (QDQ) engine dir from real captured inputs, with an fp32-vs-int8 report")
    cal.add_argument("engine_dir", type=Path, help="fp32 engine dir to calibrate")
    cal.add_argument("--out", required=True, type=Path, help="int8 engine dir to write")
    cal.add_argument("--data", type=Path, help="folder of images + prompts.txt (one prompt per line, cycled over the "
                     "images), or a JSONL of {\"image\", \"prompt\"}; default: the shipped photos with varied prompts")
    cal.add_argument("--precision", default="int8", choices=["int8"])
    cal.add_argument("--calibration", default="minmax", choices=["minmax", "percentile", "entropy"])
    cal.add_argument("--keep-fp32", metavar="PATTERNS",
                     help="comma-separated fnmatch patterns of node names, op types, graph/node or graph names to leave "
                     "fp32 (default: the vision graph when the method prunes inside the ViT; '' quantizes it too)")
    cal.add_argument("--max-requests", type=int, metavar="N", help="calibrate on the first N requests only")
    cal.add_argument("--held-out", type=int, default=3, help="requests kept aside for the report")
    cal.add_argument("--max-new-tokens", type=int, default=4, help="tokens per request while capturing and comparing")
    cal.add_argument("--force", action="store_true", help="replace --out if it exists")
    cal.add_argument("--json", action="store_true", help="print the report as JSON")
    cal.set_defaults(func=cmd_calibrate)

    m = sub.add_parser("methods", help="list the pruning methods, their knobs and defaults")
    m.set_defaults(func=cmd_methods)
    return p


def method_knobs() -> dict:
    """Every knob of every registered method, by config field (methods sharing a field share its flag)."""
    from export.methods.knobs import knobs_of
    from export.methods.registry import all_methods
    return {k.field: k for entry in all_methods().values() for k in knobs_of(entry.config_type)}


def method_config(method, args):
    from export.methods.knobs import knobs_of
    own = {k.field: k for k in knobs_of(method.config_type)}
    values = {}
    for name, knob in method_knobs().items():
        given = getattr(args, name, None)
        if given is None:
            continue
        if name not in own:
            raise PruneDeployError(f"{knob.flag} does not apply to method {method.name}; its knobs are: "
                                   f"{', '.join(k.flag for k in own.values()) or 'none'}")
        values[name] = (not given) if own[name].invert else (given if own[name].parse is bool else own[name].parse(given))
    return method.config_type(**values)


def cmd_export(args) -> int:
    from export.methods.registry import get_method
    from export.pipeline import ExportConfig, export
    try:
        method = get_method(args.method)
        cfg = method_config(method, args)
    except ValueError as e:
        raise PruneDeployError(f"bad knob value: {e}") from e
    export(ExportConfig(method=args.method, model=args.model, clip=args.clip, out=args.out, force=args.force,
                        method_config=cfg, opset=args.opset))
    return 0


def cmd_run(args) -> int:
    from runtime.generator import Request
    from runtime.load import open_engine_dir
    from runtime.requests_file import read_requests
    if args.requests:
        if args.image or args.prompt:
            raise PruneDeployError("give either --requests FILE or --image with --prompt, not both")
        requests = read_requests(args.requests)
    elif args.image is None or args.prompt is None:
        raise PruneDeployError("run needs --image IMG and --prompt TEXT (or --requests FILE.jsonl)")
    else:
        requests = [Request(args.image, args.prompt)]
    generator = open_engine_dir(args.engine_dir, args.provider)
    results = generator.generate(requests, args.max_new_tokens)
    if args.compare_torch:
        from export.compare import compare_with_torch
        compare_with_torch(generator, requests, results, args.max_new_tokens)
    if args.json:
        items = [r.to_json() for r in results]
        print(json.dumps(items if args.requests else items[0]))
    else:
        for r in results:
            for s in r.stages:
                print(f"[{s['name']}] kept {len(s['kept'])} visual tokens")
            print(r.text)
            print(f"(prefill {r.timings_ms['prefill_total']:.1f} ms, total {r.timings_ms['total']:.1f} ms)", file=sys.stderr)
    return 0


def cmd_flops(args) -> int:
    from export.flops import flops_report
    if args.text_tokens < 1:
        raise PruneDeployError(f"--text-tokens must be at least 1, got {args.text_tokens}")
    report = flops_report(args.arch, args.method, args.text_tokens, {"keep": args.keep} if args.keep else None)
    if args.json:
        print(json.dumps(report))
    else:
        print(f"{args.arch} / {args.method} at {args.text_tokens} text tokens: {report['total_tflops']:.3f} TFLOPs "
              f"(ViT {report['vit_tflops']:.3f} + LLM {report['llm_tflops']:.3f} + extra {report['extra_tflops']:.3f})")
    return 0


def cmd_profile(args) -> int:
    from export.profile import DEFAULT_REQUEST, profile
    from runtime.generator import Request
    if args.runs < 1 or args.max_new_tokens < 2:
        raise PruneDeployError("profile needs --runs >= 1 and --max-new-tokens >= 2 (decode is timed per token)")
    request = Request(args.image or DEFAULT_REQUEST.image, args.prompt or DEFAULT_REQUEST.prompt)
    report = profile(args.engine_dir, args.runs, args.max_new_tokens, request, args.provider)
    if args.plot:
        from export.profile_plot import save_profile_plot
        save_profile_plot(report, args.plot)
    if args.json:
        print(json.dumps(report))
    else:
        e, p, r = report["engines"], report["pytorch"], report["reference"]
        print(f"{report['method']}: {report['visual_tokens_final']} visual tokens, KV cache "
              f"{report['kv_cache_bytes'] / 2**20:.2f} MiB, FLOPs {report['flops']['pruned_tflops']:.4f} of "
              f"{report['flops']['unpruned_tflops']:.4f} TFLOPs")
        for name, row in (("engines", e), ("PyTorch reference", r), ("HF baseline (unpruned)", p)):
            print(f"  {name:24s} prefill {row['prefill_ms']:8.1f} ms   decode {row['decode_ms_per_token']:7.2f} ms/token")
        print("  engine breakdown (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in e["breakdown_ms"].items()))
    return 0


def cmd_visualize(args) -> int:
    from runtime.generator import Request
    from runtime.load import open_engine_dir
    from runtime.visualize import visualize_request
    visualize_request(open_engine_dir(args.engine_dir), Request(args.image, args.prompt), args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_check(args) -> int:
    from engines.tensorrt_check import check_engine_dir, failed, format_problems, parse_trt_version, problems_json
    try:
        version = parse_trt_version(args.tensorrt) if args.tensorrt else "installed"
    except ValueError as e:
        raise PruneDeployError(str(e)) from e
    problems = check_engine_dir(args.engine_dir, version)
    print(problems_json(problems) if args.json else format_problems(problems, args.engine_dir))
    return 2 if failed(problems, args.strict) else 0


def cmd_build(args) -> int:
    from engines.tensorrt_build import BuildConfig, build_engine_dir
    cfg = BuildConfig(precision=args.precision, workspace_mb=args.workspace, max_batch=args.max_batch)
    build_engine_dir(args.engine_dir, args.out, cfg, progress=lambda msg: print(msg, file=sys.stderr))
    return 0


def cmd_train_atp(args) -> int:
    from export.atp_training import (builtin_requests, check_settings, describe, evaluate_heads, grid_of,
                                     new_heads, prepare_examples, save_heads, train_threshold_heads)
    import torch

    from export.checkpoint import load_checkpoint
    from export.tiny_model import SPECS
    from runtime.errors import ConfigError
    try:
        points = [int(p) for p in args.points.split(",")]
    except ValueError:
        raise ConfigError(f"--points takes decoder layer indices separated by commas (e.g. 3,13,23), got "
                          f"{args.points!r}") from None
    progress = lambda msg: print(msg, file=sys.stderr)  # noqa: E731
    if args.threads or args.model in SPECS:
        torch.set_num_threads(args.threads or 1)
    ckpt = load_checkpoint(args.model, None, False)
    n_patches = grid_of(ckpt) ** 2
    settings = dict(target=args.keep, temperature=args.temperature, lambda_atp=args.lambda_atp,
                    lambda_target=args.lambda_target)
    check_settings(points, ckpt.llava.config.text_config.num_hidden_layers, n_patches, args.keep, steps=args.steps,
                   batch=args.batch, lr=args.lr, temperature=args.temperature, new_tokens=args.new_tokens)
    requests = builtin_requests()
    progress(f"[train-atp] preparing {len(requests)} requests (image features; labels: the unpruned model's "
             f"{args.new_tokens}-token greedy continuations)")
    examples = prepare_examples(ckpt, requests, args.new_tokens)
    before = evaluate_heads(ckpt, {p: new_heads(n_patches) for p in points}, examples, **settings)
    heads, history = train_threshold_heads(ckpt, points, steps=args.steps, lr=args.lr, batch=args.batch,
                                           examples=examples, progress=progress, **settings)
    after = evaluate_heads(ckpt, heads, examples, **settings)
    save_heads(args.out, heads, {
        "model": args.model, "keep": args.keep, "keep_means": "visual tokens per decoder layer, all layers",
        "steps": args.steps, "batch": args.batch, "lr": args.lr, "temperature": args.temperature,
        "lambda_atp": args.lambda_atp, "lambda_target": args.lambda_target, "new_tokens": args.new_tokens,
        "train_seconds": f"{sum(r['seconds'] for r in history):.1f}", "final_loss": f"{after['loss']:.4f}",
        "final_kept_hard": ",".join(f"{c:.1f}" for c in after["kept_hard"])})
    print(f"all {len(examples)} requests, before training: {describe(before)}")
    print(f"all {len(examples)} requests, after {args.steps} steps: {describe(after)}")
    print("mean thresholds (theta_r, theta_s) per point: " + ", ".join(
        f"{p}: ({t[0]:.3f}, {t[1]:.3f})" for p, t in zip(points, after["thresholds"])))
    progress(f"wrote {args.out} ({len(heads)} heads, {sum(r['seconds'] for r in history):.0f}s of training)")
    return 0


def cmd_calibrate(args) -> int:
    from calibration.calibrate import CalibrationConfig, calibrate
    from calibration.report import format_report
    patterns = None if args.keep_fp32 is None else tuple(p.strip() for p in args.keep_fp32.split(",") if p.strip())
    report = calibrate(CalibrationConfig(args.engine_dir, args.out, args.data, args.precision, args.calibration, patterns,
                                         args.max_requests, args.held_out, args.max_new_tokens, force=args.force))
    print(json.dumps(report) if args.json else format_report(report))
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


if __name__ == "__main__":
    sys.exit(main())
