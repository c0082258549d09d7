"""Latency breakdown plot for `cli.py profile --plot`: where prefill time goes, engine by engine,
beside the PyTorch reference and the unpruned Hugging Face baseline; decode per token beside it."""
import os
from pathlib import Path

from runtime.errors import InputError


def save_profile_plot(report: dict, path) -> Path:
    try:
        import matplotlib
    except ImportError as e:
        raise InputError(f"--plot needs matplotlib ({e}): `pip install matplotlib`, or leave --plot out") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    path = Path(path)
    if path.suffix.lower() != ".png" or not path.parent.is_dir():
        raise InputError(f"--plot {path}: expected a .png path in an existing directory")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.2), gridspec_kw={"width_ratios": [3, 1]})
    # PyTorch rows are absent where torch is not installed (profile's pytorch_skipped says why)
    torch_rows = [(label, report[key], colour) for label, key, colour in
                  (("PyTorch reference", "reference", "0.55"), ("HF baseline (unpruned)", "pytorch", "0.3"))
                  if key in report]
    engines_row = f"engines ({report['method']})"
    left_edge = 0.0
    prefill_parts = {k: v for k, v in report["engines"]["breakdown_ms"].items() if k != "decode"}
    colours = plt.cm.tab20.colors
    for i, (name, ms) in enumerate(sorted(prefill_parts.items())):
        left.barh(engines_row, ms, left=left_edge, color=colours[i % len(colours)], label=name)
        left_edge += ms
    for label, row, colour in torch_rows:
        left.barh(label, row["prefill_ms"], color=colour)
    left.set_xlabel("prefill (time to first token), ms")
    left.legend(fontsize=7, ncol=4, loc="upper right")
    left.invert_yaxis()
    right.barh([engines_row] + [label for label, _, _ in torch_rows],
               [report["engines"]["decode_ms_per_token"]] + [row["decode_ms_per_token"] for _, row, _ in torch_rows],
               color=["tab:blue"] + [colour for _, _, colour in torch_rows])
    right.set_yticks([])
    right.invert_yaxis()
    right.set_xlabel("decode, ms / token")
    fig.suptitle(f"{report['method']}: {report['visual_tokens_final']} visual tokens, FLOPs ratio "
                 f"{report['flops']['ratio']:.2f}, median of {report['runs']} runs", fontsize=10)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path
