"""Where prunevlm keeps what it makes once per machine: embedded checkpoints, TensorRT timing caches, Triton stub
envs."""
import os
from pathlib import Path


def cache_root() -> Path:
    """$PRUNEVLM_CACHE, else ~/.cache/prunevlm."""
    env = os.environ.get("PRUNEVLM_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "prunevlm"
