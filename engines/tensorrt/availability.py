"""Whether TensorRT can run here: the module imports and the CUDA runtime offers a GPU; else how to get them."""
import ctypes
import platform

from engines.errors import EngineError


class TensorRTUnavailable(EngineError):
    """TensorRT does not import here, or there is no NVIDIA GPU for it."""


def install_hint() -> str:
    if platform.machine() in ("aarch64", "arm64"):
        return ("On Jetson, TensorRT comes with JetPack (`sudo apt install nvidia-jetpack`, or python3-libnvinfer): use "
                "the system Python or a venv made with --system-site-packages; do not pip install tensorrt there.")
    return ("On an x86-64 host with an NVIDIA GPU and driver: `pip install tensorrt` (or this project's "
            "`pip install -e '.[gpu]'`).")


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as e:
        raise TensorRTUnavailable(f"TensorRT is not installed in this Python ({e}). {install_hint()} Without a GPU, "
                                  "run the ONNX engine dir with ONNX Runtime instead (`cli.py run DIR --provider cpu`)."
                                  ) from e
    return tensorrt


def cuda_device_problem() -> str | None:
    """Why the CUDA runtime (through polygraphy's wrapper) offers no GPU here, or None when it offers one."""
    try:
        from polygraphy import cuda
        count = ctypes.c_int(0)
        status = cuda.wrapper().handle.cudaGetDeviceCount(ctypes.byref(count))
    except Exception as e:  # no libcudart, no polygraphy, or polygraphy refusing to load it
        return f"the CUDA runtime does not load: {e}"
    return None if status == 0 and count.value > 0 else f"CUDA status {status}, {count.value} device(s)"


def require_gpu():
    """TensorRT needs a GPU to build or load a plan."""
    problem = cuda_device_problem()
    if problem:
        raise TensorRTUnavailable(f"TensorRT imports but finds no NVIDIA GPU ({problem}). TensorRT engines build and "
                                  "run only on a host with an NVIDIA GPU and its driver (`nvidia-smi` lists it); without "
                                  "one, run the ONNX engine dir with ONNX Runtime (`cli.py run DIR --provider cpu`).")


def require_tensorrt():
    trt = import_tensorrt()
    require_gpu()
    return trt
