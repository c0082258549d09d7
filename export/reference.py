"""The PyTorch oracle of an engine dir: the same method rebuilt from the manifest's source checkpoints,
stitched by the same runtime, with torch modules in place of engines."""
from dataclasses import fields

from export.checkpoint import load_checkpoint
from export.methods.registry import get_method
from export.torch_runner import TorchRunner
from runtime.generator import Generator
from runtime.manifest import Manifest


def method_config(method, saved: dict):
    """The method's config dataclass from the manifest's JSON (lists back to tuples)."""
    values = {f.name: saved[f.name] for f in fields(method.config_type) if f.name in saved}
    return method.config_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def reference_generator(manifest: Manifest, checkpoint=None) -> Generator:
    method = get_method(manifest["method"])
    source = manifest["source"]
    ckpt = checkpoint or load_checkpoint(source["model"], source["clip"], method.needs_clip)
    plan = method.build(ckpt, method_config(method, manifest["config"]))
    return Generator(manifest, {name: TorchRunner(name, graph) for name, graph in plan.graphs.items()})
