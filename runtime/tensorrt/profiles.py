"""TensorRT optimization profiles from an engine dir: each graph record carries a (min, opt, max) range per
symbolic input dim (written at export, where the model's sizes are known); a build only sets the batch range.

A decoder graph runs a whole prompt once per request and one token at every decode step, so it gets two
profiles, as TensorRT-LLM and Edge-LLM build theirs: the first best at one new token (decode), the second at a
prompt (its `seq` opt at the cache's, a typical prompt). The runner picks, per call, the profile whose opt is
nearest the feed's shapes."""
import dataclasses
from dataclasses import dataclass

from runtime.errors import ConfigError
from runtime.manifest import GraphRecord, Manifest


@dataclass(frozen=True)
class ProfileConfig:
    max_batch: int = 4
    opt_batch: int = 1

    def __post_init__(self):
        if not 1 <= self.opt_batch <= self.max_batch:
            raise ConfigError(f"batch range must satisfy 1 <= opt ({self.opt_batch}) <= max ({self.max_batch}); "
                              "pass --max-batch 1 or more")


def dim_ranges(record: GraphRecord, cfg: ProfileConfig = ProfileConfig()) -> dict[str, tuple]:
    """(min, opt, max) per symbolic dim of the graph, the batch taken from the build's settings."""
    return {**{d: tuple(r) for d, r in record.dims.items()}, "batch": (1, cfg.opt_batch, cfg.max_batch)}


def graph_profile(record: GraphRecord, cfg: ProfileConfig = ProfileConfig()) -> dict:
    """{input name: (min shape, opt shape, max shape)} for every input that has a symbolic dim (inputs with only
    fixed dims need no profile entry)."""
    ranges, profile = dim_ranges(record, cfg), {}
    for t in record.inputs:
        if any(isinstance(d, str) for d in t.shape):
            per_axis = [(d, d, d) if isinstance(d, int) else ranges[d] for d in t.shape]
            profile[t.name] = tuple(tuple(r[i] for r in per_axis) for i in range(3))
    return profile


def graph_profiles(record: GraphRecord, cfg: ProfileConfig = ProfileConfig()) -> list[dict]:
    """[graph_profile] for most graphs; [decode, prefill] for a decoder graph (new tokens `seq` over the cache
    buffers of a `capacity.<s>` dim)."""
    decode = graph_profile(record, cfg)
    capacity = [r for d, r in record.dims.items() if d.startswith("capacity.")]
    if "seq" not in record.dims or not capacity:
        return [decode]
    prompt = dataclasses.replace(record, dims={**record.dims, "seq": [record.dims["seq"][0], capacity[0][1],
                                                                      record.dims["seq"][2]]})
    return [decode, graph_profile(prompt, cfg)]


def manifest_profiles(manifest: Manifest, cfg: ProfileConfig = ProfileConfig()) -> dict:
    """{graph name: graph_profiles(...)} for every graph in the manifest."""
    return {name: graph_profiles(record, cfg) for name, record in manifest.graphs.items()}
