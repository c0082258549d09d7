"""IVTP's keep-count schedule: one count per GTP group, in the ViT and in the first W decoder layers."""
import math
from dataclasses import dataclass, field, replace

from export.methods.ivtp.rollout import FUSIONS
from runtime.errors import ConfigError


@dataclass(frozen=True)
class IvtpConfig:
    keep: int = field(default=64, metadata={"help": "visual tokens left after the last pruning point"})
    vit_keep: tuple[int, ...] | None = field(default=None, metadata={"help": "comma-separated keep count per ViT group"})
    llm_keep: tuple[int, ...] | None = field(default=None, metadata={"help": "comma-separated keep count per LLM group"})
    llm_layers: int | None = field(default=None, metadata={
        "help": "W: the decoder layers that prune (default: the paper's 12 on decoders of 16+ layers, 3 of 8 on "
                "shallower ones, in whole groups)"})
    group: int = field(default=3, metadata={"help": "layers per GTP group (1: layer-wise scoring)"})
    tau: float = field(default=0.2, metadata={"help": "CLIP relevance threshold in [-1, 1]; -1 keeps every token"})
    fusion: str = field(default="rollout", metadata={
        "help": "how a group's attention maps combine: rollout (the paper) or weighted (depth-weighted sum)"})
    use_text: bool = field(default=True, metadata={
        "flag": "--no-text", "help": "ablation: the visual CLS guides the LLM stage instead of the instruction"})


def group_tops(n_layers: int, group: int) -> list[int]:
    """Top layer of each group of `group` layers over layers 0..n_layers-1 (the last group may be short)."""
    return [min(start + group, n_layers) - 1 for start in range(0, n_layers, group)]


def default_vit_keep(n_patches: int, n_groups: int, final: int) -> list[int]:
    """Prune hard early, gently late (ease-out 1 - (1 - x)^1.7): with 120 tokens into the LLM this puts
    LLaVA-1.5-7B at the paper's split, ViT 0.202 and LLM 7.946 TFLOPs (Table 9)."""
    return [round(n_patches - (n_patches - final) * (1 - (1 - (g + 1) / n_groups) ** 1.7)) for g in range(n_groups)]


def default_llm_layers(n_llm_layers: int, group: int) -> int:
    """The paper's W = 12 of LLaVA-1.5-7B's 32 layers. A decoder too shallow for 12 (fewer than 16 layers) prunes in
    the same share of its depth, 3 of 8, rounded to whole groups, with at least one group and one layer after it."""
    if n_llm_layers >= 16:
        return 12
    return max(1, min(n_llm_layers - 1, max(1, round(n_llm_layers * 3 / 8 / group)) * group))


def resolve(cfg: IvtpConfig, n_patches: int, feature_layer: int, n_llm_layers: int):
    """Returns (vit points {layer: keep}, llm points {layer: keep}) after checking every count is possible."""
    if cfg.llm_layers is None:
        cfg = replace(cfg, llm_layers=default_llm_layers(n_llm_layers, max(1, cfg.group)))
    if cfg.fusion not in FUSIONS:
        raise ConfigError(f"--fusion must be one of {', '.join(FUSIONS)}, got {cfg.fusion!r}")
    if cfg.group < 1:
        raise ConfigError(f"--group must be >= 1, got {cfg.group}")
    if not 1 <= cfg.llm_layers < n_llm_layers:
        raise ConfigError(f"--llm-layers must be in 1..{n_llm_layers - 1}: at least one of the decoder's {n_llm_layers} "
                          f"layers must follow the last pruning point, got {cfg.llm_layers}")
    if not -1.0 <= cfg.tau <= 1.0:
        raise ConfigError(f"--tau is a cosine threshold in [-1, 1], got {cfg.tau}")
    vit_tops = group_tops(feature_layer + 1, cfg.group)
    llm_tops = group_tops(cfg.llm_layers, cfg.group)
    keep = cfg.llm_keep[-1] if cfg.llm_keep else cfg.keep
    if not 1 <= keep <= n_patches:
        raise ConfigError(f"--keep must be in 1..{n_patches} (the image has {n_patches} patches), got {keep}")
    vit_final = cfg.vit_keep[-1] if cfg.vit_keep else min(n_patches, max(keep, math.ceil(1.875 * keep / 8) * 8))
    vit = list(cfg.vit_keep) if cfg.vit_keep else default_vit_keep(n_patches, len(vit_tops), vit_final)
    llm = list(cfg.llm_keep) if cfg.llm_keep else [
        round(vit_final - (vit_final - keep) * (j + 1) / len(llm_tops)) for j in range(len(llm_tops))]
    _check("--vit-keep", vit, len(vit_tops), n_patches, "ViT groups", vit_tops)
    _check("--llm-keep", llm, len(llm_tops), vit[-1], "LLM groups", llm_tops)
    if cfg.llm_keep and cfg.keep not in (IvtpConfig.keep, llm[-1]):
        raise ConfigError(f"--keep {cfg.keep} disagrees with the last --llm-keep count {llm[-1]}; give one of them")
    return dict(zip(vit_tops, vit)), dict(zip(llm_tops, llm))


def _check(flag, counts, n_groups, available, what, tops):
    if len(counts) != n_groups:
        raise ConfigError(f"{flag} needs {n_groups} counts, one per {what} (tops at layers {tops}), got {len(counts)}: {counts}")
    previous = available
    for count in counts:
        if not 1 <= count <= previous:
            raise ConfigError(f"{flag} {','.join(map(str, counts))}: cannot keep {count} tokens when {previous} are "
                              f"available; counts must be positive and non-increasing, starting at most {available}")
        previous = count
