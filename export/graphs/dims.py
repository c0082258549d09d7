"""The (min, opt, max) range of every symbolic dim a graph takes, from the model's sizes: what TensorRT's
optimization profiles are built from, recorded per graph in the manifest. Opt lengths are a short LLaVA prompt
(a few template tokens before the image, a sentence after it); a decoder graph's new tokens (`seq`) are best at
one, a decode step, which runs once per generated token; a prune graph's `prompt` at a whole prompt."""
import re

from runtime.errors import ConfigError

TYPICAL = {"prefix": 8, "suffix": 48, "clip_tokens": 32}
MAX_BATCH = 4  # what a plan accepts unless `cli.py build --max-batch` says otherwise
CAPACITY = re.compile(r"capacity\.\d+$")


def dim_range(dim: str, model: dict) -> tuple[int, int, int]:
    """model: the manifest's model facts (num_patches, max_positions, and clip_positions with a CLIP text tower)."""
    patches, positions = model["num_patches"], model["max_positions"]
    if dim == "batch":
        return 1, 1, MAX_BATCH
    if dim == "visual_tokens":
        return 1, min(576, patches), patches
    if dim == "clip_tokens":
        return 1, min(TYPICAL[dim], model["clip_positions"]), model["clip_positions"]
    if dim == "seq":
        return 1, 1, positions
    if dim in TYPICAL:
        return 1, min(TYPICAL[dim], positions), positions
    if CAPACITY.match(dim) or dim == "prompt":  # a prompt: prefix, image, suffix (plus decode's slots)
        return 1, min(patches + TYPICAL["prefix"] + TYPICAL["suffix"], positions), positions
    raise ConfigError(f"no profile range for the dynamic dim {dim!r}; expected one of batch, visual_tokens, "
                      f"seq, prompt, {', '.join(TYPICAL)} or capacity.<n>. Name the graph's dims so (torch Dim names) in the "
                      "exporter")


def graph_dims(input_shapes: list[list], model: dict) -> dict[str, list[int]]:
    """{dim: [min, opt, max]} for every symbolic dim in the graph's input shapes."""
    names = sorted({d for shape in input_shapes for d in shape if isinstance(d, str)})
    return {d: list(dim_range(d, model)) for d in names}
