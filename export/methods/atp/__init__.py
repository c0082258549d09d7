"""ATP-LLaVA (adaptive token pruning): ATP modules after chosen decoder layers keep a number of visual tokens
that depends on the image and the prompt. Thresholds are calibrated constants per pruning point (thresholds.py;
fed to the graphs from the manifest, so calibration never re-exports) or trained threshold heads inside the
graphs (heads.py, trained by training.py on examples.py's self-distillation labels). pruner.py is the module in
the decoder, scores.py its maths."""
from dataclasses import dataclass, field
from functools import partial

from export.graphs.parts import embed_graph, language_model, llm_graphs, segment, vision_graph
from export.methods.atp.pruner import AtpPruner
from export.methods.registry import Method, MethodPlan, Schedule, register
from export.models.facts import model_facts
from runtime.errors import ConfigError
from runtime.manifest import Pipeline, Stage


@dataclass(frozen=True)
class AtpConfig:
    points: tuple[int, ...] | None = field(default=None, metadata={
        "help": "decoder layers after which an ATP module prunes (default: the paper's 3,13,23 of 32 layers, "
                "before 4, 14 and 24 in its Fig. 4; the same shares of a decoder of another depth)"})
    keep: int = field(default=144, metadata={"help": "target mean visual tokens after the last point (calibration)"})
    thresholds: tuple[float, ...] | None = field(default=None, metadata={
        "help": "theta_r,theta_s per point (flat list); default: calibrated at export so the mean count hits --keep"})
    heads: str | None = field(default=None, metadata={"help": "trained threshold heads (cli.py train-atp) instead"})


PAPER_POINTS, PAPER_LAYERS = (3, 13, 23), 32


def default_points(n_layers: int) -> tuple[int, ...]:
    """The paper's points on LLaVA-1.5-7B's 32 layers, at the same shares of a decoder of another depth (distinct,
    with a layer after the last): 3,13,23 of 32; 1,2,4 of 6."""
    points = []
    for p in PAPER_POINTS:
        q = min(n_layers - 2, max(points[-1] + 1 if points else 0, round(p * n_layers / PAPER_LAYERS)))
        if q > (points[-1] if points else -1):
            points.append(q)
    return tuple(points)


@register
class Atp(Method):
    name, title, config_type = "atp", "ATP", AtpConfig
    summary = "adaptive: per-request kept counts from ATP thresholds (calibrated constants or trained heads)"

    def schedule(self, cfg: AtpConfig, dims) -> Schedule:
        n_layers, points = dims["llm_layers"], list(cfg.points or default_points(dims["llm_layers"]))
        if not points or points != sorted(set(points)) or not 0 <= points[0] or points[-1] >= n_layers - 1:
            raise ConfigError(f"--points must be increasing decoder layers in 0..{n_layers - 2} (a layer must follow "
                              f"the last one), got {cfg.points}")
        if cfg.thresholds is not None and len(cfg.thresholds) != 2 * len(points):
            raise ConfigError(f"--thresholds needs theta_r,theta_s for each of the {len(points)} points, got "
                              f"{cfg.thresholds}")
        if cfg.heads and cfg.thresholds:
            raise ConfigError("give either --heads or --thresholds, not both")
        return Schedule([Stage(f"llm.l{p}", "llm", p, None) for p in points], dims["num_patches"])

    def build(self, ckpt, cfg: AtpConfig) -> MethodPlan:
        dims = model_facts(ckpt)
        schedule = self.schedule(cfg, dims)
        n_layers, grid = dims["llm_layers"], dims["image_size"] // dims["patch_size"]
        points = [s.layer for s in schedule.stages]
        heads = _load_heads(cfg.heads, points, grid * grid) if cfg.heads else {}
        segments, spans, pruners, first = [], [], {}, 0
        for j, stage in enumerate(schedule.stages):
            point = stage.layer
            constant = None if cfg.heads else list(cfg.thresholds[2 * j:2 * j + 2]) if cfg.thresholds else [-1.0, 2.0]
            pruners[j] = AtpPruner(grid, heads.get(point))
            segments.append(segment(j, first, point, pruners[j], stage=stage.name, visual_mask=True, thresholds=constant))
            spans.append((first, point))
            first = point + 1
        segments.append(segment(len(points), first, n_layers - 1))
        spans.append((first, n_layers - 1))
        graphs = {"vision": vision_graph(ckpt), "embed": embed_graph(ckpt),
                  **llm_graphs(language_model(ckpt), spans, pruners, visual_mask=True)}
        calibrate = None if cfg.heads or cfg.thresholds else partial(_calibrate, keep=cfg.keep)
        return MethodPlan(graphs, Pipeline("vision", "embed", segments), schedule, calibrate)


def _calibrate(generator, progress, keep: int):
    from export.methods.atp.thresholds import calibrate_thresholds
    from runtime.shipped import atp_threshold_requests
    calibrate_thresholds(generator, atp_threshold_requests(), keep, progress)


def _load_heads(path, points, n_patches):
    from export.methods.atp.heads import load_heads
    heads = load_heads(path, n_patches=n_patches)
    if sorted(heads) != points:
        raise ConfigError(f"{path} holds heads for points {sorted(heads)}, but --points is {points}; "
                          f"pass --points {','.join(map(str, sorted(heads)))} or train heads for these points")
    return heads
