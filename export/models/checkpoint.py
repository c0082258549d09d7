"""Loads a LLaVA checkpoint dir (+ the CLIP dir whose text tower IVTP uses) in the Hugging Face layout: llava-hf's
and openai's files as on the hub (safetensors shards or pytorch_model.bin) or as transformers 5 saves them. A dir that
would leave any weight at its random init is refused (complete_load.py)."""
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import CLIPModel, LlavaForConditionalGeneration

from export.models.complete_load import load_complete
from runtime.errors import ConfigError


@dataclass
class Checkpoint:
    model_dir: Path
    clip_dir: Path | None
    llava: LlavaForConditionalGeneration
    clip: CLIPModel | None

    @property
    def preprocessor_config(self) -> dict:
        """The image processor settings: preprocessor_config.json (transformers 4 layout, llava-hf on the hub)
        or the "image_processor" entry of processor_config.json (as transformers 5 saves)."""
        legacy = self.model_dir / "preprocessor_config.json"
        if legacy.is_file():
            return json.loads(legacy.read_text())
        return json.loads((self.model_dir / "processor_config.json").read_text())["image_processor"]


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _check_weights(flag: str, given: str, path: Path, example: str) -> None:
    """Weights as from_pretrained finds them: safetensors (one file or shards + index) or pytorch_model.bin."""
    if not any((path / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"{flag} {given}: no weights in {path}: expected one of {', '.join(WEIGHT_FILES)}. Pass a "
                          f"{example} style dir with its weight files downloaded.")


def resolve_model_dirs(model: str, clip: str | None) -> tuple[Path, Path | None]:
    """'demo' is the trained model in the repo; 'tiny' (or another embedded name, or a real geometry's random model)
    builds/reuses that checkpoint; anything else is a path."""
    from export.models.demo import demo_model
    from export.models.embedded import SPECS, embedded_model
    from export.models.real_geometry import GEOMETRIES, real_geometry_model
    if model == "demo":
        built = demo_model()
        return built.model_dir, Path(clip).resolve() if clip else built.clip_dir
    if model in SPECS or model in GEOMETRIES:
        built = embedded_model(model) if model in SPECS else real_geometry_model(model)
        return built.model_dir, Path(clip).resolve() if clip else built.clip_dir
    model_dir = Path(model).expanduser().resolve()
    for needed in ("config.json", "tokenizer.json"):
        if not (model_dir / needed).is_file():
            raise ConfigError(f"--model {model}: expected a Hugging Face LLaVA dir with {needed}, found none in "
                              f"{model_dir}. Pass a local llava-hf/llava-1.5-7b-hf style dir or a built-in name: {', '.join(['demo', *SPECS, *GEOMETRIES])}.")
    _check_weights("--model", model, model_dir, "llava-hf/llava-1.5-7b-hf")
    clip_dir = Path(clip).expanduser().resolve() if clip else None
    if clip_dir:
        for needed in ("config.json", "tokenizer.json"):
            if not (clip_dir / needed).is_file():
                raise ConfigError(f"--clip {clip}: no {needed} in {clip_dir}; pass an openai/clip-vit-large-patch14-336 "
                                  "style dir.")
        _check_weights("--clip", clip, clip_dir, "openai/clip-vit-large-patch14-336")
    return model_dir, clip_dir


def load_checkpoint(model: str, clip: str | None, need_clip: bool, dtype: torch.dtype = torch.float32) -> Checkpoint:
    """Weights are loaded in `dtype` (see export/models/dtypes.py), never in a wider one first."""
    model_dir, clip_dir = resolve_model_dirs(model, clip)
    if need_clip and clip_dir is None:
        raise ConfigError("this method scores instruction tokens with CLIP's text encoder: pass --clip PATH "
                          "(the CLIP checkpoint LLaVA's vision tower comes from, e.g. openai/clip-vit-large-patch14-336).")
    transformers.utils.logging.disable_progress_bar()  # export prints its own progress lines
    llava = load_complete(LlavaForConditionalGeneration, model_dir, dtype, attn_implementation="eager")
    clip_model = load_complete(CLIPModel, clip_dir, dtype) if need_clip else None
    return Checkpoint(model_dir, clip_dir if need_clip else None, llava, clip_model)
