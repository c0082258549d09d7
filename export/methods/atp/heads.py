"""Trained ATP threshold heads on disk (one ThresholdHeads per pruning point) and their initialisation.

File: safetensors, tensors `point{p}.{param}` (e.g. `point3.trunk.weight`), string metadata with at least
"points" ("3,13,23"), "n_patches" ("576") and "hidden" ("64"); `cli.py train-atp` adds its settings.
"""
import math
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from export.methods.atp.scores import ThresholdHeads
from runtime.errors import ConfigError

# Initial thresholds. The min-max normalised redundant scores sit low (S_cross, made of softmax probabilities,
# is heavy-tailed, so most tokens score a small fraction of the best one; on the tiny model S_redundant has
# median ~0.26 and 90th percentile ~0.4), so theta_r = 0.3 starts by keeping a sizeable minority of the tokens
# with many of them on the steep part of the sigmoid: the masks get gradient in both directions (a threshold
# out in a tail would leave every token on a flat end, and cutting almost everything at the first step would
# wreck L_ntp before the heads learn anything). theta_s = 0.95 lets only the coarsest spatial grid (stride 6,
# score 0.972: 16 anchors) through: a low theta_s keeps whole grids whatever their redundancy and, since the
# two masks are combined by max, would floor the count so the redundant branch could not prune.
INIT_THETA_R, INIT_THETA_S = 0.3, 0.95


def new_heads(n_patches: int, hidden: int = 64, theta_r: float = INIT_THETA_R,
              theta_s: float = INIT_THETA_S) -> ThresholdHeads:
    """Heads that start at (theta_r, theta_s) for every input: output weights zero, biases the logits. The
    trunk keeps its random init, so the output weights get gradient from the first step (instance-wise)."""
    heads = ThresholdHeads(n_patches, hidden)
    with torch.no_grad():
        for linear, theta in ((heads.redundant, theta_r), (heads.spatial, theta_s)):
            linear.weight.zero_()
            linear.bias.fill_(math.log(theta / (1.0 - theta)))
    return heads


def save_heads(path, heads: dict[int, ThresholdHeads], meta: dict) -> None:
    """Writes every point's parameters and `meta` (values turned to str) next to points/n_patches/hidden."""
    if not heads:
        raise ConfigError("no threshold heads to save")
    first = next(iter(heads.values()))
    tensors = {f"point{p}.{name}": t.detach().contiguous().cpu() for p, h in sorted(heads.items())
               for name, t in h.state_dict().items()}
    info = {k: str(v) for k, v in meta.items()}
    info.update(points=",".join(str(p) for p in sorted(heads)), n_patches=str(first.n_patches),
                hidden=str(first.trunk.out_features))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=info)


def heads_metadata(path) -> dict:
    """The file's metadata, after checking it is a threshold-heads file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"threshold heads file {path} does not exist; train one with `cli.py train-atp --out {path}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ConfigError(f"{path} is not a safetensors file of threshold heads ({e})") from e
    missing = [k for k in ("points", "n_patches", "hidden") if k not in meta]
    if missing:
        raise ConfigError(f"{path} lacks the metadata {missing} of a threshold heads file (cli.py train-atp writes "
                          "points, n_patches and hidden); retrain it with train-atp")
    return meta


def load_heads(path, n_patches: int | None = None) -> dict[int, ThresholdHeads]:
    """{point: ThresholdHeads} (eval mode). With n_patches, checks the heads were trained for that many patches."""
    meta = heads_metadata(path)
    try:
        points = [int(p) for p in meta["points"].split(",")]
        file_patches, hidden = int(meta["n_patches"]), int(meta["hidden"])
    except ValueError as e:
        raise ConfigError(f"{path}: unreadable metadata {meta} ({e})") from e
    if n_patches is not None and file_patches != n_patches:
        raise ConfigError(f"{path} holds heads trained for {file_patches} visual tokens "
                          f"({math.isqrt(file_patches)}x{math.isqrt(file_patches)} patches), but this model has "
                          f"{n_patches}; train heads for this model with `cli.py train-atp --model ...`")
    tensors = load_file(str(path))
    heads = {}
    for p in points:
        h = ThresholdHeads(file_patches, hidden)
        state = {name: tensors.get(f"point{p}.{name}") for name in h.state_dict()}
        absent = [f"point{p}.{n}" for n, t in state.items() if t is None]
        if absent:
            raise ConfigError(f"{path} lacks the tensors {absent} for pruning point {p} (its metadata lists points "
                              f"{meta['points']}); the file is incomplete, retrain it with train-atp")
        wrong = [f"point{p}.{n}: {tuple(t.shape)}, expected {tuple(h.state_dict()[n].shape)}"
                 for n, t in state.items() if t.shape != h.state_dict()[n].shape]
        if wrong:
            raise ConfigError(f"{path}: tensor shapes do not match its metadata (n_patches={file_patches}, "
                              f"hidden={hidden}): {'; '.join(wrong)}")
        h.load_state_dict(state)
        heads[p] = h.eval().requires_grad_(False)
    return heads
