"""One graph to INT4 weight-only with onnxruntime.quantization: the constant weight of every MatMul that may be
quantized becomes block-wise 4-bit (one scale per `block_size` input channels, in the graph's own float dtype);
activations, norms and everything else keep the graph's dtype, fp16 or fp32.

- rtn (default, no data): MatMulNBitsQuantizer's default quantizer, symmetric blocks. It writes `MatMulNBits`
  (ONNX Runtime, CPU and CUDA) or, as `qdq`, int4 `DequantizeLinear` + `MatMul` (opset 21), which TensorRT reads.
- gptq (the captured feeds): the library's GPTQ, which corrects each column's rounding error with the Hessian of
  that MatMul's real inputs. `MatMulNBits` only.
- hqq (no data; runs on torch): half-quadratic quantization, `MatMulNBits` only.
What stays in higher precision is the same as for INT8 (calibration/sensitive.py): the pruning-score path, the LM
head, activation-by-activation MatMuls and --keep-fp32 patterns.
"""
import contextlib
import logging

import onnx

from calibration.prepare import prepared_model
from calibration.quantize import GraphResult, quiet_quantizer
from runtime.errors import ConfigError

ALGORITHMS = ("rtn", "gptq", "hqq")
FORMATS = ("matmulnbits", "qdq")
BLOCK_SIZES = (16, 32, 64, 128, 256)


def check_options(algorithm: str, fmt: str, block_size: int):
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"--algorithm {algorithm} is not one of {', '.join(ALGORITHMS)} for int4")
    if fmt not in FORMATS:
        raise ConfigError(f"--int4-format {fmt} is not one of {', '.join(FORMATS)}")
    if fmt == "qdq" and algorithm != "rtn":
        raise ConfigError(f"--algorithm {algorithm} writes MatMulNBits only; --int4-format qdq (for TensorRT) takes "
                          "--algorithm rtn")
    if block_size not in BLOCK_SIZES:
        raise ConfigError(f"--block-size must be one of {', '.join(map(str, BLOCK_SIZES))}, got {block_size}")


@contextlib.contextmanager
def quiet_weight_quantizer():
    """The weight-only quantizers log every node at INFO on their own loggers."""
    loggers = [logging.getLogger(n) for n in ("onnxruntime.quantization.matmul_nbits_quantizer",
                                             "onnxruntime.quantization.neural_compressor.weight_only")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with quiet_quantizer():
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def weight_matmuls(model: onnx.ModelProto) -> list[str]:
    """MatMuls whose second input is a constant 2-D weight: the nodes a weight-only quantizer can rewrite."""
    inits = {i.name: i for i in model.graph.initializer}
    return [n.name for n in model.graph.node
            if n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2]


def quantize_weights(src, dst, name: str, feeds: list[dict] | None, algorithm: str = "rtn", fmt: str = "matmulnbits",
                     block_size: int = 128, keep_fp32=()) -> GraphResult:
    """src: the exported graph; dst: `<graph>.onnx` to write (weights in `<graph>.onnx.data` beside it)."""
    check_options(algorithm, fmt, block_size)
    if algorithm == "gptq" and not feeds:
        raise ConfigError(f"graph {name} received no feeds while capturing; GPTQ needs them (or use --algorithm rtn)")
    model, reasons = prepared_model(src, name, keep_fp32)
    candidates = weight_matmuls(model)
    excluded = {n: reasons[n] for n in candidates if n in reasons}
    with quiet_weight_quantizer():
        quantized = (_gptq(model, candidates, excluded, feeds, block_size) if algorithm == "gptq"
                     else _nbits(model, excluded, algorithm, fmt, block_size))
    quantized.save_model_to_file(str(dst), use_external_data_format=True)
    return GraphResult(name, excluded, len(candidates) - len(excluded))


def _nbits(model, excluded, algorithm, fmt, block_size):
    from onnxruntime.quantization import QuantFormat
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )
    qformat = QuantFormat.QDQ if fmt == "qdq" else QuantFormat.QOperator
    config = (HQQWeightOnlyQuantConfig(block_size=block_size) if algorithm == "hqq" else
              DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=True, quant_format=qformat))
    quantizer = MatMulNBitsQuantizer(model, block_size=block_size, is_symmetric=True, nodes_to_exclude=sorted(excluded),
                                     algo_config=config)
    quantizer.process()
    return quantizer.model


def prompt_feeds(feeds: list[dict]) -> list[dict]:
    """The prefill feeds of a decoder graph (many tokens each), without its decode steps (one token each): GPTQ
    runs the whole graph once per distinct MatMul input per feed, and a step adds one row to a Hessian that
    a prompt adds hundreds to."""
    prompts = [f for f in feeds if "hidden_in" not in f or f["hidden_in"].shape[1] > 1]
    return prompts or feeds


def _gptq(model, candidates, excluded, feeds, block_size):
    """The library's GPTQ pass itself: MatMulNBitsQuantizer's GPTQ path would quantize excluded nodes too."""
    from onnxruntime.quantization.neural_compressor import gptq_quantize
    feeds = prompt_feeds(feeds)
    config = {n: "fp32" if n in excluded else {"bits": 4, "group_size": block_size, "scheme": "sym", "algorithm": "GPTQ"}
              for n in candidates}
    return gptq_quantize(model, ((feed, None) for feed in feeds), weight_config=config, group_size=block_size,
                         scheme="sym", n_samples=-1, blocksize=block_size, perchannel=True)
