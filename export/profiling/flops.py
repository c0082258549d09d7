"""Prefill FLOPs of a (pruned) LLaVA-1.5, counted as IVTP (ECCV 2024) counts them in Tables 1-3 and 9.

Batch 1, 2 FLOPs per multiply-add, matmuls only. Conventions inferred from the paper's numbers (7B, 512 text):
- ViT layers 0..feature_layer on the patches plus the CLS: 23 layers x 577 tokens = 0.365 (paper 0.361);
  24 layers would give 0.381. No patch embedding (0.0007) and no projector (0.024): the LLM alone already
  hits the paper's 15.003 (we get 14.998), and total 15.363 vs 15.364.
- LLM: full (not causally halved) QK^T and AV over the whole sequence, visual + text tokens; halving would
  need ~1111 tokens to reach 15.003, full attention needs 1088.4 = 576 + 512. LM head over every position.
- extra (IVTP only): the CLIP text tower over the instruction at the LLM's text length (512 -> 0.097, the
  nearest reading of the paper's 0.080; the 77-token window would give 0.013), plus the pseudo-CLS query
  carried through the first W decoder layers. Rollout rows and value norms (< 1e-4 TFLOPs) are left out.

Which tokens each layer runs on comes from the method's schedule (export/methods/registry.py): the method's own
for a named one, an engine dir's from its manifest. No torch at import, and none for an engine dir (profiling on
an edge device counts through here); a method named by name is imported, with torch.
"""
import json
from pathlib import Path

from export.methods.registry import Schedule
from runtime.errors import ConfigError
from runtime.manifest import MANIFEST, read_manifest

_LLAMA = dict(llm_heads=32, kv_heads=32, head_dim=128, vocab_size=32000)
_CLIP_L336 = dict(vit_hidden=1024, vit_layers=24, vit_intermediate=4096, image_size=336, patch_size=14,
                  num_patches=576, feature_layer=22)
ARCHS = {
    "llava-1.5-7b": {**_LLAMA, **_CLIP_L336, "llm_hidden": 4096, "llm_layers": 32, "llm_intermediate": 11008},
    "llava-1.5-13b": {**_LLAMA, **_CLIP_L336, "llm_hidden": 5120, "llm_layers": 40, "llm_heads": 40,
                      "kv_heads": 40, "llm_intermediate": 13824},
}
# CLIP ViT-L/14's text tower. It has 77 positions, but the paper's extra 0.080 fits a pass over all 512
# text tokens (0.097) far better than over 77 (0.013), so count_flops runs it over text_tokens.
TEXT_ENCODERS = {"clip-vit-l-14": {"hidden": 768, "layers": 12, "intermediate": 3072, "positions": 77,
                                   "projection": 768}}
# HF config.json key (section, name, default): defaults are LlamaConfig's / CLIPVisionConfig's, which
# llava-hf configs rely on (their text_config omits the 7B sizes).
_T, _V = "text_config", "vision_config"
_HF_KEYS = {"llm_hidden": (_T, "hidden_size", 4096), "llm_layers": (_T, "num_hidden_layers", 32),
            "llm_heads": (_T, "num_attention_heads", 32), "llm_intermediate": (_T, "intermediate_size", 11008),
            "vocab_size": (_T, "vocab_size", 32000), "vit_hidden": (_V, "hidden_size", 768),
            "vit_layers": (_V, "num_hidden_layers", 12), "vit_intermediate": (_V, "intermediate_size", 3072),
            "image_size": (_V, "image_size", 224), "patch_size": (_V, "patch_size", 32)}


def _run(n: int, points: dict, n_layers: int) -> tuple[list[int], int]:
    """Tokens each layer runs on when pruning happens AFTER the listed layers; also the count that leaves."""
    counts = []
    for layer in range(n_layers):
        counts.append(n)
        n = points.get(layer, n)
    return counts, n


def tokens_per_layer(schedule: Schedule, dims: dict) -> dict:
    """{"vit": patches per ViT layer 0..feature_layer (the CLS is added when counting), "llm": visual tokens per
    decoder layer, "pseudo_cls_layers": decoder layers carrying IVTP's pseudo-CLS query}. Vision stages prune
    after a ViT layer, llm ones after a decoder layer."""
    points = {"vision": {}, "llm": {}}
    for s in schedule.stages:
        keep = s.keep if s.keep is not None else s.mean_keep  # adaptive: the calibrated mean count
        limit = dims["feature_layer"] if s.where == "vision" else dims["llm_layers"] - 1
        if s.where not in points or not isinstance(s.layer, int) or not 0 <= s.layer <= limit \
                or not isinstance(keep, (int, float)):
            raise ConfigError(f"stage {s} needs where 'vision' or 'llm', a layer in 0..{limit} and an integer keep "
                              "(or, for adaptive methods, the calibrated mean_keep)")
        points[s.where][s.layer] = keep
    vit, _ = _run(dims["num_patches"], points["vision"], dims["feature_layer"] + 1)
    llm, _ = _run(schedule.vision_tokens, points["llm"], dims["llm_layers"])  # what enters the LLM
    return {"vit": vit, "llm": llm, "pseudo_cls_layers": schedule.pseudo_cls_layers}


def method_schedule(method: str, config: dict | None, dims: dict) -> Schedule:
    """A registered method's schedule at these dims, from its config by field name (defaults for the rest)."""
    from export.methods.registry import get_method  # imports every method, and torch with them
    m = get_method(method)
    return m.schedule(m.make_config(config), dims)


def visual_tokens_per_layer(method: str, config: dict | None, dims: dict) -> dict:
    return tokens_per_layer(method_schedule(method, config, dims), dims)


def _layer(n: int, hidden: int, q_dim: int, kv_dim: int, inter: int, mlp_mats: int, context: int | None = None):
    """One transformer layer on n queries over `context` keys: q/o and k/v projections, mlp_mats MLP matrices
    (3 for SwiGLU gate/up/down, 2 for CLIP fc1/fc2), QK^T and AV (full, no causal halving)."""
    context = n if context is None else context
    return 2 * n * hidden * (2 * q_dim + 2 * kv_dim + mlp_mats * inter) + 4 * n * context * q_dim


def _text_encoder(n: int, te: dict) -> int:
    return te["layers"] * _layer(n, te["hidden"], te["hidden"], te["hidden"], te["intermediate"], 2) \
        + 2 * n * te["hidden"] * te["projection"]


def count_flops(dims: dict, tokens: dict, text_tokens: int, extra_text_encoder: bool,
                text_encoder: dict | None = None) -> dict:
    """TFLOPs of one prefill: ViT, LLM (with LM head) and IVTP's extra modules, each layer on its token count."""
    d = dims
    q, kv, h = d["llm_heads"] * d["head_dim"], d["kv_heads"] * d["head_dim"], d["llm_hidden"]
    vit = sum(_layer(v + 1, d["vit_hidden"], d["vit_hidden"], d["vit_hidden"], d["vit_intermediate"], 2)
              for v in tokens["vit"])  # + 1: the CLS runs through every ViT layer (577 -> 0.361)
    llm = sum(_layer(v + text_tokens, h, q, kv, d["llm_intermediate"], 3) for v in tokens["llm"])
    llm += 2 * h * d["vocab_size"] * (tokens["llm"][-1] + text_tokens)  # LM head over every position
    extra = sum(_layer(1, h, q, kv, d["llm_intermediate"], 3, context=v + 1)  # pseudo-CLS: visual + itself
                for v in tokens["llm"][:tokens.get("pseudo_cls_layers", 0)])
    if extra_text_encoder:
        extra += _text_encoder(text_tokens, text_encoder or TEXT_ENCODERS["clip-vit-l-14"])
    return {"total_tflops": (vit + llm + extra) / 1e12, "vit_tflops": vit / 1e12, "llm_tflops": llm / 1e12,
            "extra_tflops": extra / 1e12, "visual_tokens_per_layer": tokens}


def _hf_dims(cfg: dict) -> dict:
    dims = {k: cfg.get(section, {}).get(name, default) for k, (section, name, default) in _HF_KEYS.items()}
    text = cfg.get("text_config", {})
    dims["kv_heads"] = text.get("num_key_value_heads") or dims["llm_heads"]
    dims["head_dim"] = text.get("head_dim") or dims["llm_hidden"] // dims["llm_heads"]
    dims["num_patches"] = (dims["image_size"] // dims["patch_size"]) ** 2
    dims["feature_layer"] = cfg.get("vision_feature_layer", -2) % (dims["vit_layers"] + 1) - 1  # -2 -> 22 of 24
    return dims


def clip_text_dims(cfg: dict) -> dict:
    """The text-encoder dims count_flops takes, from a CLIP config.json's contents (or CLIPConfig.to_dict())."""
    t = cfg["text_config"]
    return {"hidden": t["hidden_size"], "layers": t["num_hidden_layers"], "intermediate": t["intermediate_size"],
            "positions": t.get("max_position_embeddings", 77), "projection": cfg.get("projection_dim", t["hidden_size"])}


def _clip_text_dims(clip_dir) -> dict:
    """The engine's own CLIP text tower (a tiny model has a tiny one); CLIP ViT-L/14's when it cannot be read."""
    try:
        return clip_text_dims(json.loads((Path(clip_dir) / "config.json").read_text()))
    except (TypeError, OSError, KeyError, ValueError):
        return TEXT_ENCODERS["clip-vit-l-14"]


def flops_report(arch: str, method: str, text_tokens: int, config: dict | None = None) -> dict:
    """arch: a name in ARCHS, an engine dir (manifest.json) or a HF LLaVA checkpoint dir (config.json)."""
    if not isinstance(text_tokens, int) or text_tokens < 1:
        raise ConfigError(f"text_tokens must be an integer >= 1 (the paper uses 512), got {text_tokens!r}")
    path, te = Path(str(arch)), None
    if (path / MANIFEST).is_file() and arch not in ARCHS:
        m = read_manifest(path)
        if method and method != m.method:
            raise ConfigError(f"{arch} was exported with method {m.method!r}, not {method!r}")
        dims, schedule, te = m.model, Schedule.of_manifest(m), _clip_text_dims(m.source.get("clip"))
    else:
        dims = _arch_dims(arch, path)
        schedule = method_schedule(method, config, dims)
    tokens = tokens_per_layer(schedule, dims)
    return count_flops(dims, tokens, text_tokens, schedule.text_encoder, te)


def _arch_dims(arch: str, path: Path) -> dict:
    if arch in ARCHS:
        return ARCHS[arch]
    if (path / "config.json").is_file():
        cfg = json.loads((path / "config.json").read_text())
        if "vision_config" not in cfg:
            raise ConfigError(f"{path / 'config.json'} has no vision_config: not a LLaVA checkpoint")
        return _hf_dims(cfg)
    raise ConfigError(f"unknown arch {arch!r}: give one of {sorted(ARCHS)}, an engine dir with manifest.json "
                      "or a HF LLaVA checkpoint dir with config.json")
