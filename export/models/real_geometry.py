"""Random-weight checkpoints at LLaVA-1.5's real geometries, for anyone without the download: llava-hf's own
files (layout, names, fp16 dtype, tokenizers) with seeded weights, built into the cache on first use. They are
what the scale checks and GPU benchmarks run on; their text is noise."""
import dataclasses
import hashlib
import json
import math
import shutil
from pathlib import Path

from export.models.embedded import EmbeddedCheckpoint, build_once
from export.models.llava_hf_layout import (
    LLAVA_1_5_7B,
    LlavaHfGeometry,
    build_llava_hf_pair,
    llava_hf_keys,
    openai_clip_keys,
)
from export.models.llava_hf_tokenizers import CLIP_FULL_VOCAB_SIZE
from runtime.cache import cache_root
from runtime.errors import ConfigError

LAYOUT_VERSION = "1"  # bump when the files written change, so caches rebuild
LLAVA_1_5_13B = dataclasses.replace(LLAVA_1_5_7B, llm_hidden=5120, llm_heads=40, llm_kv_heads=40,
                                    llm_intermediate=13824, llm_layers=40)
GEOMETRIES = {"llava-1.5-7b-random": LLAVA_1_5_7B, "llava-1.5-13b-random": LLAVA_1_5_13B}


def checkpoint_bytes(g: LlavaHfGeometry) -> int:
    """What the pair takes on disk: LLaVA in fp16, OpenAI's CLIP in fp32 (as the hub's files are)."""
    llava = sum(math.prod(s) for s in llava_hf_keys(g).values())
    clip = sum(math.prod(s) for s in openai_clip_keys(g, CLIP_FULL_VOCAB_SIZE).values())
    return 2 * llava + 4 * clip


def real_geometry_model(name: str, cache_dir: Path | str | None = None) -> EmbeddedCheckpoint:
    geometry = GEOMETRIES[name]
    cache_dir = Path(cache_dir) if cache_dir is not None else cache_root()
    digest = hashlib.sha256(json.dumps([dataclasses.asdict(geometry), LAYOUT_VERSION]).encode()).hexdigest()[:12]
    final, need = cache_dir / f"{name}-{digest}", checkpoint_bytes(geometry)
    if not final.is_dir():
        cache_dir.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(cache_dir).free
        if need * 1.05 > free:
            raise ConfigError(f"--model {name} is built once into {cache_dir}, which needs {need / 1e9:.1f} GB and has "
                              f"{free / 1e9:.1f} GB free; free some space or point PRUNEVLM_CACHE elsewhere")
    build_once(final, lambda tmp: build_llava_hf_pair(tmp, geometry),
               f"building {name} into {final} (one-off: {need / 1e9:.1f} GB of random weights at the real geometry)")
    return EmbeddedCheckpoint(model_dir=final / "llava", clip_dir=final / "clip")
