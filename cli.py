"""Front door: turns arguments into typed configs and calls the library. `python cli.py -h`."""
import argparse
import json
import sys
from pathlib import Path

from runtime.errors import PruneDeployError

KNOBS = {  # flag -> (config field, parser): methods declare the fields, the CLI only spells them
    "keep": ("keep", int), "vit_keep": ("vit_keep", lambda s: tuple(int(x) for x in s.split(","))),
    "llm_keep": ("llm_keep", lambda s: tuple(int(x) for x in s.split(","))), "llm_layers": ("llm_layers", int),
    "group": ("group", int), "tau": ("tau", float), "no_text": ("use_text", lambda v: not v),
}


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
    e.add_argument("--keep", type=int, help="final visual tokens (IVTP default 64)")
    e.add_argument("--vit-keep", help="IVTP: comma-separated keep count per ViT group")
    e.add_argument("--llm-keep", help="IVTP: comma-separated keep count per LLM group")
    e.add_argument("--llm-layers", type=int, help="IVTP: decoder layers that prune (W, default 12)")
    e.add_argument("--group", type=int, help="IVTP: layers per GTP group (default 3)")
    e.add_argument("--tau", type=float, help="IVTP: CLIP relevance threshold in [-1, 1] (default 0.2)")
    e.add_argument("--no-text", action="store_true", default=None, help="IVTP ablation: no instruction guidance")
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

    m = sub.add_parser("methods", help="list the pruning methods, their knobs and defaults")
    m.set_defaults(func=cmd_methods)
    return p


def method_config(method, args):
    from dataclasses import fields
    names = {f.name for f in fields(method.config_type)}
    values = {}
    for flag, (name, convert) in KNOBS.items():
        given = getattr(args, flag, None)
        if given is None:
            continue
        if name not in names:
            raise PruneDeployError(f"--{flag.replace('_', '-')} does not apply to method {method.name}; "
                                   f"its knobs are: {', '.join(sorted(names)) or 'none'}")
        values[name] = convert(given)
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
                        method_config=cfg))
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


def cmd_methods(args) -> int:
    from export.methods.registry import METHODS, get_method
    get_method("none")
    for name, entry in sorted(METHODS.items()):
        knobs = ", ".join(f"{k}={v}" for k, v in entry.knobs().items()) or "no knobs"
        print(f"{name:8s} {entry.summary}\n         {knobs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
