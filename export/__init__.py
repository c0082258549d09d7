"""Export: a LLaVA checkpoint plus a pruning method -> an engine dir of validated ONNX graphs and a manifest.

Needs the `[export]` extra (torch, transformers, the ONNX tooling), except profiling/flops.py and the engine
half of profiling/profile.py, which the runtime-only install runs too.
"""
