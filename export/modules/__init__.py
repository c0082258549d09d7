"""Torch modules every method shares, traced into the graphs and run as the PyTorch oracle: layers written out
with HF's weights, the vision tower, CLIP's text tower, the decoder segments and the pruning protocol."""
