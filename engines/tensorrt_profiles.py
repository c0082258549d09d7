"""TensorRT optimization profiles from the manifest's symbolic dims: one (min, opt, max) range per dim name.

TensorRT plans are built for ranges of shapes. Every dynamic dim the exporter names (`batch`,
`visual_tokens`, `prefix`, `suffix`, `seq`, `clip_tokens`, `past_seq.<segment>`) gets a range here;
a dim this module cannot name is a graph TensorRT cannot be built for (`cli.py check` reports it).
Pure Python: the build step turns these tuples into polygraphy `Profile`s.
"""
import re
from dataclasses import dataclass

from runtime.errors import PruneDeployError

CLIP_CONTEXT = 77  # CLIP text positions per window
# Opt lengths: a short LLaVA prompt (a few template tokens before the image, a sentence after it).
TYPICAL = {"prefix": 8, "suffix": 48, "seq": 64, "clip_tokens": 32}
PAST_SEQ = re.compile(r"past_seq\.\d+$")


class ProfileError(PruneDeployError):
    """A graph input with a dynamic dim that no profile range covers."""


@dataclass(frozen=True)
class ProfileConfig:
    max_batch: int = 4
    opt_batch: int = 1

    def __post_init__(self):
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ProfileError(f"batch range must satisfy 1 <= opt ({self.opt_batch}) <= max ({self.max_batch}); "
                               "pass --max-batch 1 or more")


def covers(dim: str) -> bool:
    """Whether `dim` is a symbolic dim name this module can give a range."""
    return dim in ("batch", "visual_tokens", *TYPICAL) or bool(PAST_SEQ.match(dim))


def dim_range(dim: str, model: dict, cfg: ProfileConfig = ProfileConfig(), decode_step: bool = False) -> tuple:
    """(min, opt, max) for one symbolic dim. `model` is manifest["model"] (num_patches, max_positions).
    decode_step: the graph takes a KV cache, so its `seq` is the one new token per step."""
    patches, positions = model["num_patches"], model["max_positions"]
    if dim == "batch":
        return 1, cfg.opt_batch, cfg.max_batch
    if dim == "visual_tokens":
        return 1, min(576, patches), patches
    if dim == "clip_tokens":
        return 1, TYPICAL[dim], CLIP_CONTEXT
    if dim == "seq" and decode_step:
        return 1, 1, positions
    if dim in TYPICAL:
        return 1, min(TYPICAL[dim], positions), positions
    if PAST_SEQ.match(dim):
        return 1, min(patches + TYPICAL["prefix"] + TYPICAL["suffix"], positions), positions
    raise ProfileError(f"no profile range for the dynamic dim {dim!r}; expected one of batch, visual_tokens, "
                       f"{', '.join(TYPICAL)} or past_seq.<n>. Export the graph with named dims (torch Dim names) "
                       "or fix the dim name in the exporter")


def graph_profile(record: dict, model: dict, cfg: ProfileConfig = ProfileConfig()) -> dict:
    """{input name: (min shape, opt shape, max shape)} for every input of a manifest graph record that has a
    symbolic dim (inputs with only fixed dims need no profile entry)."""
    inputs = [io for io in record["inputs"] if any(isinstance(d, str) for d in io["shape"])]
    decode_step = any(PAST_SEQ.match(d) for io in inputs for d in io["shape"] if isinstance(d, str))
    profile = {}
    for io in inputs:
        ranges = [(d, d, d) if isinstance(d, int) else dim_range(d, model, cfg, decode_step) for d in io["shape"]]
        profile[io["name"]] = tuple(tuple(r[i] for r in ranges) for i in range(3))
    return profile


def manifest_profiles(manifest: dict, cfg: ProfileConfig = ProfileConfig()) -> dict:
    """{graph name: graph_profile(...)} for every graph in the manifest."""
    return {name: graph_profile(record, manifest["model"], cfg) for name, record in manifest["graphs"].items()}
