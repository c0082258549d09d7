"""The dtype a graph is exported in (`export --dtype`): by default the checkpoint's own, as its config.json states it
(fp16 for llava-hf's, fp32 for the embedded models, whose random weights are made and saved in fp32)."""
import json
from pathlib import Path

import torch

from runtime.errors import ConfigError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STORED = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}  # config.json's spelling


def checkpoint_dtype(model_dir: Path) -> str:
    """What config.json says the weights are stored in (`torch_dtype` in transformers 4, `dtype` in 5)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    stored = config.get("dtype") or config.get("torch_dtype") or config.get("text_config", {}).get("dtype")
    return STORED.get(stored, "fp32")


def resolve_dtype(requested: str | None, model_dir: Path) -> str:
    if requested is None:
        return checkpoint_dtype(model_dir)
    if requested not in DTYPES:
        raise ConfigError(f"--dtype {requested} is not one of {', '.join(DTYPES)}")
    if requested == "bf16":  # export validates every graph on ONNX Runtime's CPU provider
        raise ConfigError("--dtype bf16 cannot be validated here: ONNX Runtime's CPU provider has no bf16 MatMul, Add "
                          "or Mul, and every graph is checked against PyTorch on it at export. Export --dtype fp16 "
                          "(same memory; TensorRT and CUDA run it natively) or fp32.")
    return requested
