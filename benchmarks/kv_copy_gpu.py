"""What carrying the KV cache costs per decode step, outside TensorRT's kernels, at LLaVA-1.5-7B geometry:
through the host (the plan's outputs copied down, fed back up, as with numpy feeds) or kept on the GPU
(DeviceKV's device-to-device copy). Needs an NVIDIA GPU and the CUDA runtime, not TensorRT.

    python -m benchmarks.kv_copy_gpu [--tokens 700] [--batch 1] [--runs 10]
"""
import argparse
import sys
import time

import numpy as np
from polygraphy import cuda

from engines.tensorrt.availability import cuda_device_problem
from engines.tensorrt.device_kv import DeviceKV

LAYERS, HEADS, HEAD_DIM = 32, 32, 128  # LLaVA-1.5-7B's LLM (Vicuna-7B)
DTYPE = np.float32  # the exported graphs carry KV caches in fp32, whatever precision a plan computes in


def kv_outputs(batch: int, tokens: int):
    """One device array per present.* output, as a plan's output buffers hold them."""
    shape = (batch, HEADS, tokens, HEAD_DIM)
    zeros = np.zeros(shape, DTYPE)  # content does not change copy time
    return {f"present.{i}.{kind}": cuda.DeviceArray(shape, DTYPE).copy_from(zeros)
            for i in range(LAYERS) for kind in ("key", "value")}


def through_host(outputs, inputs) -> None:
    for name, out in outputs.items():
        host = out.numpy()  # the runner's copy to host
        inputs[name].copy_from(host)  # fed back as the next step's past


def on_device(outputs, kv: DeviceKV) -> None:
    kv.next_call()
    for name, out in outputs.items():
        kv.keep(name, out.view(), np.dtype(DTYPE))


def median_ms(step, runs: int) -> float:
    step()  # warm-up: first allocations
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=700, help="cached tokens per request (LLaVA-1.5: ~640 unpruned)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args(argv)
    problem = cuda_device_problem()
    if problem:
        sys.exit(f"error: this benchmark needs an NVIDIA GPU and the CUDA runtime ({problem})")
    outputs = kv_outputs(args.batch, args.tokens)
    inputs = {name: cuda.DeviceArray(out.shape, DTYPE) for name, out in outputs.items()}
    kv = DeviceKV()
    try:
        mib = sum(a.nbytes for a in outputs.values()) / 2**20
        host = median_ms(lambda: through_host(outputs, inputs), args.runs)
        device = median_ms(lambda: on_device(outputs, kv), args.runs)
        print(f"| KV (fp32, batch {args.batch}, {args.tokens} tokens) | through the host | kept on the GPU | ratio |")
        print("|---|---|---|---|")
        print(f"| {mib:.0f} MiB per step | {host:.2f} ms | {device:.3f} ms | {device / host:.4f} |")
    finally:
        kv.free()
        for a in [*outputs.values(), *inputs.values()]:
            a.free()


if __name__ == "__main__":
    main()
