"""Engines: load and run graphs on devices (ONNX Runtime now). Knows graphs, not LLaVA."""
