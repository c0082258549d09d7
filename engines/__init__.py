"""Engines: load, run, check and build graphs on devices (ONNX Runtime; TensorRT through polygraphy).

A library in the manner of polygraphy's backends: loaders, runners and builders that know graphs and devices
and nothing of LLaVA or of the engine-dir format. It imports no other folder of this project.
"""
