"""The PyTorch oracle of an engine dir: the same method rebuilt from the manifest's source checkpoints and config,
stitched by the same runtime, with torch modules in place of engines."""
from export.graphs.torch_runner import TorchRunner
from export.methods.registry import get_method
from export.models.checkpoint import load_checkpoint
from export.models.dtypes import DTYPES
from runtime.generator import Generator
from runtime.manifest import Manifest


def reference_generator(manifest: Manifest, checkpoint=None) -> Generator:
    method = get_method(manifest.method)
    dtype = DTYPES[manifest.dtype]  # the graphs' dtype: the oracle runs what was exported
    ckpt = checkpoint or load_checkpoint(manifest.source["model"], manifest.source["clip"], method.needs_clip, dtype)
    plan = method.build(ckpt, method.make_config(manifest.config))
    return Generator(manifest, {name: TorchRunner(name, graph, dtype=dtype) for name, graph in plan.graphs.items()})
