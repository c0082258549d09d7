"""Checkpoints: loading a Hugging Face LLaVA (+ CLIP) dir, the embedded random models, and their tokenizers."""
