"""The single place that knows the methods. A method is a class registered with @register:

- `config_type`, a frozen dataclass whose fields become `cli.py export` flags (export/methods/knobs.py);
- `schedule(cfg, dims)`: where it prunes and how many tokens each stage keeps, from the model's dimensions
  alone, which the manifest records, the runtime reports and the FLOPs counter counts;
- `build(ckpt, cfg)`: its graphs and the pipeline the runtime follows (a MethodPlan).
"""
import importlib
import pkgutil
from dataclasses import dataclass, field, fields
from typing import Callable

from runtime.errors import ConfigError
from runtime.manifest import Manifest, Pipeline, Stage


@dataclass
class Schedule:
    stages: list[Stage]  # vision stages first
    vision_tokens: int  # visual tokens the vision graph hands the LLM
    visual_ids: list[str] | None = field(default_factory=list)  # see runtime.manifest.Pipeline.visual_ids
    pseudo_cls_layers: int = 0  # decoder layers that carry IVTP's pseudo-CLS query (FLOPs count it)
    text_encoder: bool = False  # CLIP's text tower runs over the instruction (FLOPs count it)

    @classmethod
    def of_manifest(cls, m: Manifest) -> "Schedule":
        """An engine dir's schedule: the stages its manifest records, and the parts its pipeline runs."""
        return cls(m.stages, m.vision_tokens_out, m.pipeline.visual_ids,
                   sum(s.last - s.first + 1 for s in m.pipeline.segments if s.pseudo_cls), m.pipeline.text_encoder is not None)


@dataclass
class MethodPlan:
    """What a method hands the exporter."""
    graphs: dict  # name -> export.graphs.graph.GraphDef
    pipeline: Pipeline
    schedule: Schedule
    calibrate: Callable | None = None  # (generator of torch runners, progress) -> None: fills pipeline constants


class Method:
    name: str
    title: str  # how messages name it: "IVTP", "FastV"
    summary: str
    config_type: type
    needs_clip: bool = False  # it scores the instruction with CLIP's text tower

    def schedule(self, cfg, dims: dict) -> Schedule:
        raise NotImplementedError

    def build(self, ckpt, cfg) -> MethodPlan:
        raise NotImplementedError

    def make_config(self, values: dict | None = None):
        """The config dataclass from values by field name (a manifest's JSON or parsed flags): lists become
        tuples, an unknown name is a ConfigError that lists the known ones."""
        values, known = dict(values or {}), {f.name for f in fields(self.config_type)}
        if set(values) - known:
            raise ConfigError(f"unknown {self.title} config keys {sorted(set(values) - known)}; known: {sorted(known)}")
        return self.config_type(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


METHODS: dict[str, Method] = {}


def register(cls: type) -> type:
    METHODS[cls.name] = cls()
    return cls


def all_methods() -> dict[str, Method]:
    """Every method, each module under export/methods imported once (each registers itself)."""
    from export import methods
    for module in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"{methods.__name__}.{module.name}")
    return METHODS


def get_method(name: str) -> Method:
    if name not in all_methods():
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]
