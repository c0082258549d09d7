"""Runtime: runs an exported engine dir with numpy, tokenizers, pillow and onnxruntime only (no torch)."""
