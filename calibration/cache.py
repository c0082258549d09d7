"""Calibration caches: per-tensor ranges as JSON (all graphs), and a TensorRT-style text cache per graph.

The TensorRT cache is the format its IInt8Calibrator writes: a header line `TRT-<version>-<calibrator>`, then
`tensor: <scale>` with the scale (amax / 127) as the big-endian hex of a float32. Tensor names are those of the
fp32 graph, so TensorRT can build an implicitly quantized engine from the fp32 ONNX plus this cache. TensorRT
checks the version in the header; 8601 is what TensorRT 8.6 writes (edit the header for another version).
"""
import json
import struct
from pathlib import Path

TRT_HEADER = "TRT-8601-{}"
TRT_CALIBRATOR = {"minmax": "MinMaxCalibration", "percentile": "MinMaxCalibration", "entropy": "EntropyCalibration2"}


def amax(lo: float, hi: float) -> float:
    return max(abs(lo), abs(hi))


def write_ranges(path: Path, results, method: str):
    """{graph: {tensor: {min, max, scale, quantized}}}: scale is the symmetric int8 one, amax / 127."""
    data = {"method": method, "symmetric": True, "graphs": {
        r.name: {t: {"min": lo, "max": hi, "scale": amax(lo, hi) / 127.0, "quantized": t in set(r.quantized_tensors)}
                 for t, (lo, hi) in sorted(r.ranges.items())} for r in results}}
    path.write_text(json.dumps(data, indent=1))


def trt_scale_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def write_trt_cache(path: Path, result, method: str):
    """Only the tensors the QDQ graph quantizes: in implicit mode a tensor without a range cannot run int8, so
    TensorRT keeps the excluded nodes in higher precision too."""
    lines = [TRT_HEADER.format(TRT_CALIBRATOR[method])]
    for t in result.quantized_tensors:
        lo, hi = result.ranges[t]
        lines.append(f"{t}: {trt_scale_hex(amax(lo, hi) / 127.0)}")
    path.write_text("\n".join(lines) + "\n")
