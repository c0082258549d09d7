"""TensorRT through polygraphy: availability, versions, the static parser check, plan builds and the runner.

tensorrt and polygraphy.backend.trt are imported inside functions only, so every module here imports on any
machine and says what is missing (TensorRT, a GPU) and how to get it when a TensorRT path is taken.
"""
