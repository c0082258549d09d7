"""Runtime: everything done to an engine dir on the device it serves, with numpy, tokenizers, pillow and
onnxruntime (or TensorRT) and no torch: the manifest contract, opening the engines, generating, and TensorRT's
check and build steps."""
