"""TensorRT engines at run time, polygraphy style: a lazy loader (`engine_from_plan`: EngineFromBytes over a
.plan) and a runner with OnnxrtRunner's infer(feed) -> dict contract. Plans are built in build.py."""
import math

import numpy as np

from engines.errors import EngineInputError
from engines.kv_names import KV_PREFIX, PAST_PREFIX
from engines.tensorrt.availability import require_tensorrt


def engine_from_plan(path):
    """Loader: calling it deserializes the .plan at `path` into an ICudaEngine."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes
    return EngineFromBytes(BytesFromPath(str(path)))


class TensorrtRunner:
    """polygraphy's TrtRunner (dynamic shapes: it sets each input shape per call) behind OnnxrtRunner's
    contract: activate / infer(feed) -> {name: output} / deactivate.

    KV caches stay on the GPU: `present.*` come back as polygraphy DeviceViews, which the generator feeds back
    unchanged as `past_key_values.*`. Every other output (logits, kept indices, hidden states) is copied to host
    numpy, as from ONNX Runtime.
    - A runner that reads past caches (every decoder graph and pruning prefill: present is past with new slots
      written) is fed its own last outputs, so it keeps copies (DeviceKV), valid through its next call. TensorRT
      writes each present into an output buffer of its own: unlike ONNX Runtime, it is not bound in place.
    - Any other runner returns views of polygraphy's own buffers, valid until its next call.
    """

    def __init__(self, load_engine, name: str = ""):
        self.load_engine, self.name, self.runner, self.input_names = load_engine, name, None, set()
        self.kv, self.output_dtypes = None, {}
        self.profiles, self.profile = [], 0  # per optimization profile {input: (min, opt, max)}; the active one

    def activate(self):
        if self.runner is None:
            require_tensorrt()
            from polygraphy.backend.trt import TrtRunner
            self.runner = TrtRunner(self.load_engine, name=self.name or None)
            self.runner.activate()
            signature = self.io_signature()
            self.use_signature(signature)
            engine = self.runner.engine
            dynamic = [name for name, _, shape in signature["inputs"] if -1 in shape]
            self.profiles = [{name: tuple(tuple(s) for s in engine.get_tensor_profile_shape(name, p)) for name in dynamic}
                             for p in range(engine.num_optimization_profiles)]
            self.profile = 0
        return self

    def use_signature(self, signature: dict):
        """Input names and output dtypes from the plan; KV copies only where the plan reads past caches."""
        from engines.tensorrt.device_kv import DeviceKV
        self.input_names = {name for name, _, _ in signature["inputs"]}
        self.output_dtypes = {name: np.dtype(dtype) for name, dtype, _ in signature["outputs"]}
        self.kv = DeviceKV() if any(name.startswith(PAST_PREFIX) for name in self.input_names) else None

    def deactivate(self):
        if self.runner is not None:
            if self.kv is not None:
                self.kv.free()
            self.runner.deactivate()
            self.runner = None

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.deactivate()

    def io_signature(self) -> dict:
        """{"inputs"|"outputs": [(name, numpy dtype, shape with -1 for dynamic dims)]}"""
        import tensorrt as trt
        engine = self.activate().runner.engine
        sig = {"inputs": [], "outputs": []}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            kind = "inputs" if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else "outputs"
            sig[kind].append((name, trt.nptype(engine.get_tensor_dtype(name)), list(engine.get_tensor_shape(name))))
        return sig

    def infer(self, feed: dict) -> dict:
        """feed: numpy arrays, or DeviceViews (KV caches a TensorrtRunner returned), which stay on the GPU."""
        from polygraphy.exception import PolygraphyException
        self.activate()
        missing, extra = sorted(self.input_names - set(feed)), sorted(set(feed) - self.input_names)
        if missing or extra:
            raise EngineInputError(f"graph {self.name}: missing inputs {missing}, unexpected inputs {extra}")
        feed = {k: np.ascontiguousarray(v) if isinstance(v, np.ndarray) else v for k, v in feed.items()}  # slices are views
        if len(self.profiles) > 1:  # a decoder graph: decode and prefill profiles
            best = pick_profile(self.profiles, {k: tuple(v.shape) for k, v in feed.items()}, self.profile)
            if best != self.profile:
                self.runner.set_profile(best)
                self.profile = best
        try:
            outputs = self.runner.infer(feed, copy_outputs_to_host=False)
        except PolygraphyException as e:  # shapes outside the plan's profile, wrong dtypes
            raise EngineInputError(f"graph {self.name}: {e}. Shapes must lie within the profile the plan was built "
                                   "with (manifest engines.<graph>.profiles); rebuild with a larger range if needed") from e
        if self.kv is not None:
            self.kv.next_call()
        return {name: self.cache(name, view) if name.startswith(KV_PREFIX) else view.numpy()
                for name, view in outputs.items()}

    def cache(self, name: str, view):
        """A `present.*` output as the generator carries it: a quiet view, copied only by a decode runner."""
        from engines.tensorrt.device_kv import CacheView
        dtype = self.output_dtypes[name]
        return self.kv.keep(name, view, dtype) if self.kv is not None else CacheView(view.ptr, tuple(view.shape), dtype)


def pick_profile(profiles: list[dict], shapes: dict, current: int = 0) -> int:
    """The profile whose ranges hold every feed shape and whose opt shapes are nearest them (|log(size / opt)| summed
    over axes: a 40-token prompt is nearer a 632-token opt than a one-token one); `current` where none holds them
    (the run then names the shape that is out of range)."""
    def fits(profile):
        return all(all(lo <= s <= hi for lo, s, hi in zip(r[0], shapes[n], r[2])) for n, r in profile.items() if n in shapes)

    def distance(profile):
        return sum(abs(math.log(max(s, 1) / max(o, 1))) for n, r in profile.items() if n in shapes
                   for s, o in zip(shapes[n], r[1]))

    holding = [i for i, p in enumerate(profiles) if fits(p)]
    return min(holding, key=lambda i: (distance(profiles[i]), i)) if holding else current
