"""ATP-LLaVA (adaptive token pruning): ATP modules after chosen decoder layers keep a number of visual tokens
that depends on the image and the prompt. Thresholds are calibrated constants per pruning point (fed to the
graphs from the manifest, so calibration never re-exports) or trained threshold heads inside the graphs."""
from dataclasses import asdict, dataclass, field
from functools import partial

from export.atp import SPATIAL_STRIDES
from export.graphs import decode_graph, embed_graph, language_model, model_facts, prefill_graph, vision_graph
from export.llm_pruners import AtpPruner
from export.methods.plan import MethodPlan, segment_entry
from export.methods.registry import register
from runtime.errors import ConfigError


@dataclass(frozen=True)
class AtpConfig:
    points: tuple[int, ...] = field(default=(3, 13, 23), metadata={
        "help": "decoder layers after which an ATP module prunes (the paper's Fig. 4 prunes before 4, 14, 24)"})
    keep: int = field(default=144, metadata={"help": "target mean visual tokens after the last point (calibration)"})
    thresholds: tuple[float, ...] | None = field(default=None, metadata={
        "help": "theta_r,theta_s per point (flat list); default: calibrated at export so the mean count hits --keep"})
    heads: str | None = field(default=None, metadata={"help": "trained threshold heads (cli.py train-atp) instead"})


@register("atp", AtpConfig, needs_clip=False,
          summary="adaptive: per-request kept counts from ATP thresholds (calibrated constants or trained heads)")
def build(ckpt, cfg: AtpConfig) -> MethodPlan:
    facts = model_facts(ckpt)
    n_layers, grid = facts["llm_layers"], facts["image_size"] // facts["patch_size"]
    points = list(cfg.points)
    if not points or points != sorted(set(points)) or not 0 <= points[0] or points[-1] >= n_layers - 1:
        raise ConfigError(f"--points must be increasing decoder layers in 0..{n_layers - 2} (a layer must follow the "
                          f"last one), got {cfg.points}")
    if cfg.thresholds is not None and len(cfg.thresholds) != 2 * len(points):
        raise ConfigError(f"--thresholds needs theta_r,theta_s for each of the {len(points)} points, got {cfg.thresholds}")
    if cfg.heads and cfg.thresholds:
        raise ConfigError("give either --heads or --thresholds, not both")
    heads = _load_heads(cfg.heads, points, grid * grid) if cfg.heads else {}
    lm, graphs, segments, stages, spans, first = language_model(ckpt), {}, [], [], [], 0
    for j, point in enumerate(points):
        name, stage = f"prefill.{j}", f"llm.l{point}"
        constant = None if cfg.heads else list(cfg.thresholds[2 * j:2 * j + 2]) if cfg.thresholds else [-1.0, 2.0]
        graphs[name] = prefill_graph(lm, first, point, None, 1, pseudo_cls=False, head=False,
                                     pruner=AtpPruner(grid, heads.get(point)), visual_mask=True,
                                     thresholds=constant is not None)
        segments.append(segment_entry(name, first, point, stage, None, visual_mask=True, thresholds=constant))
        stages.append({"name": stage, "where": "llm", "layer": point, "keep": None})
        spans.append((first, point))
        first = point + 1
    name = f"prefill.{len(points)}"
    graphs[name] = prefill_graph(lm, first, n_layers - 1, None, 1, pseudo_cls=False, head=True, visual_mask=True)
    segments.append(segment_entry(name, first, n_layers - 1, head=True, visual_mask=True))
    spans.append((first, n_layers - 1))
    graphs.update({"vision": vision_graph(ckpt, {}, group=1, with_cls=False), "embed": embed_graph(ckpt),
                   "decode": decode_graph(lm, spans)})
    pipeline = {"vision": "vision", "text_encoder": None, "embed": "embed", "decode": "decode", "segments": segments,
                "spatial_strides": list(SPATIAL_STRIDES)}
    calibrate = None if cfg.heads or cfg.thresholds else partial(_calibrate, keep=cfg.keep)
    return MethodPlan(graphs, pipeline, stages, asdict(cfg), calibrate=calibrate)


def _calibrate(generator, progress, keep: int):
    from calibration.atp_thresholds import builtin_requests, calibrate_thresholds
    calibrate_thresholds(generator, builtin_requests(), keep, progress)


def _load_heads(path, points, n_patches):
    from export.atp_training import load_heads
    heads = load_heads(path, n_patches=n_patches)
    if sorted(heads) != points:
        raise ConfigError(f"{path} holds heads for points {sorted(heads)}, but --points is {points}; "
                          f"pass --points {','.join(map(str, sorted(heads)))} or train heads for these points")
    return heads
