"""The generator of the repository's Python model, in either variant (serving/triton_repo.py writes them):

- "engines": every graph is a Triton model of its own (ONNX Runtime or TensorRT backend), and the Generator's
  runners call them through BLS (`pb_utils.InferenceRequest(...).exec()`). Their outputs come back as new host
  arrays, which the KV pools copy in (runtime/kv_pool.py), so in-flight batching works over them unchanged.
- "in-process": the engine dir is opened inside the stub with ONNX Runtime, as `cli.py run` opens it.

Imported inside Triton's stub, from the copy of the runtime beside model.py: no torch, no tritonclient."""
import numpy as np

from runtime.errors import EngineDirError
from runtime.generator import Generator
from runtime.manifest import read_manifest

VARIANTS = ("engines", "in-process")


def engine_model_name(model_name: str, graph: str) -> str:
    """The Triton model serving `graph` (decoder.0 -> prunevlm_decoder_0): prefixed so that several deployments
    share one repository, and dot-free like the names Triton's docs use."""
    return f"{model_name}_{graph.replace('.', '_')}"


class BlsRunner:
    """A runner over a Triton model: infer(feed) -> {output name: numpy array}, via a BLS request."""

    def __init__(self, pb_utils, model: str, outputs: list[str]):
        self.pb, self.model, self.outputs = pb_utils, model, outputs

    def infer(self, feed: dict) -> dict:
        inputs = [self.pb.Tensor(name, np.ascontiguousarray(value)) for name, value in feed.items()]
        response = self.pb.InferenceRequest(model_name=self.model, inputs=inputs,
                                            requested_output_names=self.outputs).exec()
        if response.has_error():
            raise EngineDirError(f"Triton model {self.model} failed: {response.error().message()}")
        return {name: self.pb.get_output_tensor_by_name(response, name).as_numpy() for name in self.outputs}


def open_generator(variant: str, engine_dir, model_name: str, provider: str, pb_utils) -> Generator:
    """engine_dir: the Python model's copy (manifest and tokenizers; for "in-process" the graphs too)."""
    if variant == "engines":
        manifest = read_manifest(engine_dir)  # the graphs live in the engine models, not here: no size check
        return Generator(manifest, {name: BlsRunner(pb_utils, engine_model_name(model_name, name),
                                                    [t.name for t in record.outputs])
                                    for name, record in manifest.graphs.items()})
    if variant == "in-process":
        from runtime.load import open_engine_dir
        # In-flight batching keeps KV caches in host numpy pools: sessions hand them back as numpy on any provider.
        return open_engine_dir(engine_dir, provider, kv_device=None)
    raise EngineDirError(f"variant must be one of {VARIANTS}, got {variant!r}")
