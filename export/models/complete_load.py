"""from_pretrained that refuses to leave a weight at its random init.

transformers loads what matches a parameter's name and randomly initializes the rest, with a warning only
(a LOAD REPORT table): a renamed, missing or mis-shaped tensor gives a model that runs and says nonsense.
Here any such parameter is a ConfigError that names the dir, its weight files, the parameters left unloaded
(with the name llava-hf's files give them), the tensors that matched nothing and the file each is in.
"""
import json
from pathlib import Path

import torch

from export.models.llava_hf_layout import llava_hf_name, transformers_name
from runtime.errors import ConfigError

SHOWN = 8  # keys listed per kind; the rest are counted

# What the files must be named like, per model class: the hub's layout and transformers 5's.
LAYOUTS = {
    "LlavaForConditionalGeneration": (
        "as llava-hf/llava-1.5-7b-hf's files name them (vision_tower.vision_model.*, multi_modal_projector.*, "
        "language_model.model.*, language_model.lm_head.weight) or as transformers 5's save_pretrained writes them "
        "(model.vision_tower.*, model.multi_modal_projector.*, model.language_model.*, lm_head.weight)"),
    "CLIPModel": (
        "as openai/clip-vit-large-patch14-336's files name them (text_model.*, vision_model.*, "
        "visual_projection.weight, text_projection.weight, logit_scale)"),
}


def load_complete(cls, path: Path, dtype: torch.dtype = torch.float32, **kwargs):
    """cls.from_pretrained(path) in `dtype`, eval mode; ConfigError if any parameter was not in the files.
    (Mismatched shapes are let through transformers, which would raise and point at its log, to be reported here.)"""
    model, info = cls.from_pretrained(path, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True,
                                      **kwargs)
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(_shapes(k) for k in info.get("mismatched_keys") or ())
    errors = list(info.get("error_msgs") or ())
    if missing or mismatched or errors:
        raise ConfigError(incomplete_message(cls.__name__, Path(path), missing, sorted(info.get("unexpected_keys") or ()),
                                             mismatched, errors))
    return model.eval()


def _shapes(item) -> str:
    """transformers reports (name, shape in the files, shape in the model)."""
    if isinstance(item, tuple) and len(item) == 3:
        return f"{item[0]}: {tuple(item[1])} in the files, {tuple(item[2])} in the model"
    return str(item)


def weight_files(path: Path) -> dict[str, str]:
    """Tensor name -> the file (relative to path) that holds it, as from_pretrained reads them."""
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if (path / index).is_file():
            return json.loads((path / index).read_text())["weight_map"]
    if (path / "model.safetensors").is_file():
        from safetensors import safe_open
        with safe_open(path / "model.safetensors", framework="pt") as f:
            return dict.fromkeys(f.keys(), "model.safetensors")
    if (path / "pytorch_model.bin").is_file():
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", mmap=True, weights_only=True)
        return dict.fromkeys(state, "pytorch_model.bin")
    return {}


def _listed(items: list[str]) -> str:
    more = f"\n    ... and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return "".join(f"\n    {item}" for item in items[:SHOWN]) + more


def incomplete_message(kind: str, path: Path, missing: list[str], unexpected: list[str], mismatched: list[str],
                       errors: list[str]) -> str:
    files = weight_files(path)
    lines = [f"{kind} checkpoint {path}: {len(missing) + len(mismatched)} weight(s) would be left randomly "
             f"initialized (read from {', '.join(sorted(set(files.values()))) or 'no weight file'})."]
    if missing:
        named = [f"{k} (in llava-hf's files: {llava_hf_name(k)})" if llava_hf_name(k) != k else k for k in missing]
        lines.append(f"  not in the files:{_listed(named)}")
    if mismatched:
        lines.append(f"  shape differs from the config's:{_listed(mismatched)}")
    if unexpected:
        where = {transformers_name(k): (k, f) for k, f in files.items()} | {k: (k, f) for k, f in files.items()}
        named = [f"{where[k][0]} in {where[k][1]}" if k in where else k for k in unexpected]
        lines.append(f"  in the files but matching no weight (a renamed one?):{_listed(named)}")
    lines += [f"  {e}" for e in errors]
    layout = LAYOUTS.get(kind, "as the model class names its parameters")
    lines.append(f"Fix: the tensors must be named {layout}; if the files were partly downloaded or converted by "
                 "hand, download the checkpoint again.")
    return "\n".join(lines)
