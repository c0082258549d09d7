"""Graphs: torch modules with their I/O names and symbolic dims, exported to ONNX and validated against torch."""
