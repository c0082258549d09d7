"""TensorRT steps on an engine dir, on the target device and without torch: the static check of its graphs and
building its plans. The TensorRT machinery itself is engines/tensorrt; runtime/runners.py opens built plans."""
