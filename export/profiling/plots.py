"""Latency plot for `cli.py profile --plot`, one question per panel, each on its own axis: where the engines'
prefill goes (parts of one run, adding up to the prefill printed), prefill beside the PyTorch reference and the
unpruned Hugging Face baseline, and decode per token beside them. Every bar carries its value."""
import math
import os
import textwrap
from pathlib import Path
from typing import Callable

from export.profiling.profile import slow_reference_note
from export.profiling.stacked_parts import OTHER, VISIBLE, stacked_parts
from runtime.errors import InputError

# PyTorch rows are absent where torch is not installed (profile's pytorch_skipped says why)
TORCH_ROWS = (("PyTorch reference", "reference", "0.6"), ("HF baseline (unpruned)", "pytorch", "0.35"))
ENGINES = "tab:blue"
PART_COLOURS = ("tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:olive")
OTHER_COLOUR = "0.8"
LOG_SPREAD = 20  # rows further apart go on a log axis: on a linear one the fastest would be under 4% of it
LABEL_ROOM = 0.06  # of the axis: a part narrower than this gets its value beside the bar, not inside


def save_profile_plot(report: dict, path) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png" or not path.parent.is_dir():
        raise InputError(f"--plot {path}: expected a .png path in an existing directory")
    fig = profile_figure(report)
    tmp = path.with_name(f".{path.name}.partial.png")
    fig.savefig(tmp, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    os.replace(tmp, path)
    return path


def profile_figure(report: dict):
    """The figure save_profile_plot writes (tests read its bars, labels and legend)."""
    try:
        import matplotlib
    except ImportError as e:
        raise InputError(f"--plot needs matplotlib ({e}): `pip install matplotlib`, or leave --plot out") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(10, 7.4), layout="constrained")
    parts_ax, prefill_ax, decode_ax = fig.subplots(3, 1, height_ratios=[1.3, 2, 2])
    engines_row = f"engines ({report['method']})"
    rows = [(engines_row, report["engines"], ENGINES)] + [(label, report[key], colour)
                                                          for label, key, colour in TORCH_ROWS if key in report]
    _parts_panel(parts_ax, engines_row, report["engines"])
    _rows_panel(prefill_ax, [(label, row["prefill_ms"], colour) for label, row, colour in rows], lambda ms: f"{ms:.1f}")
    prefill_ax.set_title("prefill (time to first token), ms", fontsize=9, loc="left")
    _rows_panel(decode_ax, [(label, row["decode_ms_per_token"], colour) for label, row, colour in rows],
                lambda ms: f"{ms:.2f}" if ms < 10 else f"{ms:.1f}")
    log = decode_ax.get_xscale() == "log"
    decode_ax.set_title("decode, ms per token" + (" (log scale: the rows are far apart)" if log else ""), fontsize=9,
                        loc="left")
    if note := slow_reference_note(report):
        fig.supxlabel(textwrap.fill(note, 150), x=0.01, ha="left", fontsize=8)
    fig.suptitle(f"{report['method']}: {report['visual_tokens_final']} visual tokens, FLOPs ratio "
                 f"{report['flops']['ratio']:.2f}, median of {report['runs']} runs", fontsize=10)
    return fig


def _parts_panel(ax, row: str, engines: dict):
    """The engines' prefill as one stacked bar of its parts, on an axis of its own so that a part of 2% shows."""
    parts = stacked_parts(engines["breakdown_ms"])
    total = sum(ms for _, ms in parts)
    ax.set_xlim(0, total * 1.13)  # room for the total after the bar
    edge, beside = 0.0, 0
    for i, (label, ms) in enumerate(parts):
        colour = OTHER_COLOUR if label.startswith(OTHER) else PART_COLOURS[i % len(PART_COLOURS)]
        wide = ms >= VISIBLE * total
        bars = ax.barh(row, ms, left=edge, height=0.5, color=colour, edgecolor="white", linewidth=0.6,
                       label=label if wide else f"_{label}")  # "_": no legend entry for a sliver
        if ms >= LABEL_ROOM * total:
            ax.bar_label(bars, fmt="%.1f", label_type="center", fontsize=8)
        else:  # above and below the bar in turn, so that neighbours do not overlap
            ax.annotate(f"{ms:.1f}", (edge + ms / 2, 0.25 if beside % 2 else -0.25), ha="center", fontsize=7,
                        va="top" if beside % 2 else "bottom", xytext=(0, -2 if beside % 2 else 2),
                        textcoords="offset points")
            beside += 1
        edge += ms
    ax.annotate(f"= {engines['prefill_ms']:.1f} ms", (edge, 0), xytext=(4, 0), textcoords="offset points",
                va="center", fontsize=8)
    ax.set_ylim(0.7, -0.7)  # room above and below the bar for the values of narrow parts
    ax.set_title("engine prefill by part, ms: the run with the median prefill (parts under 2% of it grouped)",
                 fontsize=9, loc="left")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=len(parts), fontsize=8, frameon=False)


def _rows_panel(ax, rows: list[tuple[str, float, str]], fmt: Callable[[float], str]):
    """One bar per row, its value at its end. Values further apart than LOG_SPREAD go on a log axis."""
    labels, values, colours = zip(*rows)
    top = max(values)
    if 0 < LOG_SPREAD * min(values) < top:
        floor = 10 ** math.floor(math.log10(min(values) / 2))  # bars start here: a log axis has no 0
        ax.set_xscale("log")
        bars = ax.barh(labels, [v - floor for v in values], left=floor, color=colours)
        ax.set_xlim(floor, top * 1.45)  # room for the label: 1.45x is 5% of a 3-decade axis
        ax.xaxis.set_major_formatter("{x:g}")  # 1, 10, 100 ms rather than powers of ten
    else:
        bars = ax.barh(labels, values, color=colours)
        ax.set_xlim(0, top * 1.15)
    ax.bar_label(bars, labels=[fmt(v) for v in values], padding=3, fontsize=8)
    ax.invert_yaxis()
