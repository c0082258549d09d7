"""The manifest: the only contract between export and runtime, as dataclasses, read and written here only.

`load_manifest` checks what can be checked without running anything: the format, every key, that every graph
the pipeline and the stages name exists, that every symbolic input dim has a profile range, and every file's
size (their sha256 is `cli.py verify`'s). The runtime then checks each engine's I/O against its graph record when it opens it.
"""
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from runtime.engine_dir import file_records, size_problems
from runtime.errors import EngineDirError

MANIFEST = "manifest.json"
FORMAT = 5  # 2: integer graph I/O is int32; 3: typed records, dim ranges per graph, pipeline.visual_ids;
# 4: a decoder graph per segment over KV buffers written in place, prefill graphs only where a segment prunes, lm_head;
# 5: weight-free prune graphs in their place, after the decoder graph's prefill


@dataclass
class TensorRecord:
    name: str
    dtype: str  # numpy dtype name
    shape: list  # ints for fixed dims, names for symbolic ones


@dataclass
class GraphRecord:
    file: str
    inputs: list[TensorRecord]
    outputs: list[TensorRecord]
    dims: dict[str, list[int]]  # symbolic input dim -> [min, opt, max]: what TensorRT profiles are built from
    data: str | None = None  # external weights beside the graph

    def signature(self) -> dict:
        """{"inputs" | "outputs": [(name, dtype, shape)]}, engines/signature.py's form."""
        return {kind: [(t.name, t.dtype, t.shape) for t in getattr(self, kind)] for kind in ("inputs", "outputs")}

    @classmethod
    def from_json(cls, d: dict) -> "GraphRecord":
        return cls(**{**d, "inputs": [TensorRecord(**t) for t in d["inputs"]],
                      "outputs": [TensorRecord(**t) for t in d["outputs"]]})


@dataclass
class PlanRecord:
    """A TensorRT plan built from a graph (`cli.py build`)."""
    file: str
    precision: str
    profiles: list[dict]  # per profile: {input: {"min", "opt", "max"}}


@dataclass
class Stage:
    """A pruning point. `kept` in a run result lists what this stage selected, in raster ids."""
    name: str  # vit.<...> before the LLM, llm.l<layer> inside it
    where: str  # "vision" | "llm"
    layer: int  # the ViT or decoder layer after which it prunes
    keep: int | None  # tokens it keeps; None where the count depends on the input (ATP)
    mean_keep: float | None = None  # ATP: the mean count on the calibration set (what FLOPs count)


@dataclass
class Segment:
    """Decoder layers [first, last]. `decoder` runs them for new tokens against the segment's KV buffers: the
    prompt, then every decode step. A segment with a stage prunes after `last`: its `prune` graph decides from the
    queries the decoder graph handed out over the prompt and the keys it cached."""
    decoder: str
    layers: list[int]  # [first, last]
    stage: str | None = None
    keep: int | None = None
    prune: str | None = None  # the graph that decides which visual tokens go on
    taps: list[int] = field(default_factory=list)  # layers whose queries (q.<l>) and keys the prune graph reads
    reads_values: bool = False  # the prune graph also reads the values of layer `last`
    pseudo_cls: bool = False  # the prompt ends with IVTP's pseudo-CLS token, whose output the next segment takes
    visual_mask: bool = False  # the prune graph takes the padding mask of a visual block padded to the longest request
    thresholds: list[float] | None = None  # ATP's (theta_r, theta_s), fed as an input so calibration needs no export

    @property
    def first(self) -> int:
        return self.layers[0]

    @property
    def last(self) -> int:
        return self.layers[1]


@dataclass
class Pipeline:
    """Which graph plays which part, segment by segment."""
    vision: str
    embed: str
    segments: list[Segment]
    text_encoder: str | None = None  # CLIP's text tower, for IVTP's instruction relevance
    tau: float | None = None  # IVTP's relevance threshold
    # Stages whose kept ids, merged and sorted, name the rows the vision graph hands the LLM; [] every patch in
    # raster order; None where those rows are merged tokens that no raster id names (pool, VisionZip, ToMe).
    visual_ids: list[str] | None = field(default_factory=list)
    lm_head: str = "lm_head"  # final norm and LM head: the logits at prefill's last token and at every decode step

    def graph_names(self) -> list[str]:
        return [self.vision, self.embed, self.lm_head, *([self.text_encoder] if self.text_encoder else []),
                *(g for s in self.segments for g in [s.decoder] + ([s.prune] if s.prune else []))]

    @classmethod
    def from_json(cls, d: dict) -> "Pipeline":
        return cls(**{**d, "segments": [Segment(**s) for s in d["segments"]]})


@dataclass
class Manifest:
    method: str
    config: dict  # the method's config dataclass, as JSON
    opset: int
    stages: list[Stage]  # vision stages first
    pipeline: Pipeline
    model: dict  # dimensions and special token ids (export.models.facts)
    vision_tokens_out: int  # visual tokens entering the LLM
    preprocess: dict  # runtime.preprocess.ImagePreprocessConfig
    prompt_template: str
    image_token: str
    tokenizers: dict[str, str]  # "llm" (and "clip") -> file
    source: dict  # the checkpoint dirs it was exported from
    versions: dict
    validation: dict  # tolerances and the sample every graph was validated on
    graphs: dict[str, GraphRecord] = field(default_factory=dict)
    files: dict[str, dict] = field(default_factory=dict)  # relative path -> {"bytes", "sha256"}
    engines: dict[str, PlanRecord] | None = None  # TensorRT plans, in a dir made by `cli.py build`
    built_from: str | None = None
    quantization: dict | None = None  # what `cli.py calibrate` quantized, and how
    dtype: str = "fp32"  # the weights' and activations' dtype (export --dtype); norms, softmax, scores stay fp32
    format: int = FORMAT
    root: Path | None = field(default=None, compare=False, repr=False)  # where it was read from; not written

    def path(self, relative: str) -> Path:
        return self.root / relative

    def graph_file(self, name: str) -> Path:
        return self.root / self.graphs[name].file

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def to_json(self) -> dict:
        data = asdict(self)
        del data["root"]
        return data

    @classmethod
    def from_json(cls, d: dict, root: Path | None = None) -> "Manifest":
        return cls(**{**d, "stages": [Stage(**s) for s in d["stages"]], "pipeline": Pipeline.from_json(d["pipeline"]),
                      "graphs": {k: GraphRecord.from_json(g) for k, g in d.get("graphs", {}).items()},
                      "engines": None if d.get("engines") is None else
                      {k: PlanRecord(**p) for k, p in d["engines"].items()}}, root=root)


def save_manifest(manifest: Manifest, root: Path) -> Manifest:
    """Records every file under `root` in the manifest and writes it there, last; returns it, rooted at `root`."""
    manifest.files, manifest.root = file_records(Path(root)), Path(root)
    (Path(root) / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=1))
    return manifest


def load_manifest(engine_dir) -> Manifest:
    """The dir's manifest, after checking it (see read_manifest) and the size of every file it lists (their sha256
    is `cli.py verify`'s: hashing tens of GB at every start would cost a minute)."""
    manifest = read_manifest(engine_dir)
    problems = size_problems(manifest.root, manifest.files)
    if problems:
        raise EngineDirError(f"engine dir {manifest.root} does not match its manifest: " + "; ".join(problems)
                             + ". Export it again (python cli.py export ... --force).")
    return manifest


def read_manifest(engine_dir) -> Manifest:
    """The dir's manifest, checked in itself (format, keys, references, dim ranges) but not against its files."""
    root = Path(engine_dir)
    if not root.is_dir():
        raise EngineDirError(f"engine dir {root} does not exist, so there is no {MANIFEST} to read; create one with "
                             f"`python cli.py export ... --out {root}`")
    path = root / MANIFEST
    if not path.is_file():
        raise EngineDirError(f"{root} has no {MANIFEST}: it is not an engine dir (or its export did not finish); "
                             "export again with `python cli.py export`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EngineDirError(f"{path} is not valid JSON ({e}); export the engine dir again") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise EngineDirError(f"{path} has format {found!r}, this runtime reads format {FORMAT}; "
                             "export again with this version")
    try:
        manifest = Manifest.from_json(data, root)
    except (TypeError, KeyError, AttributeError) as e:  # a key missing, unknown or of the wrong kind
        raise EngineDirError(f"{path} does not hold a format {FORMAT} manifest ({e}); export the engine dir again") from e
    problems = structure_problems(manifest)
    if problems:
        raise EngineDirError(f"{path} is inconsistent: " + "; ".join(problems) + ". Export the engine dir again.")
    return manifest


def structure_problems(m: Manifest) -> list[str]:
    """What in the manifest contradicts itself: references to graphs or stages it lacks, dims without ranges."""
    problems = [f"the pipeline names graph {g!r}, which the manifest has no record of"
                for g in m.pipeline.graph_names() if g not in m.graphs]
    stages = {s.name for s in m.stages}
    problems += [f"segment {s.decoder} prunes at stage {s.stage!r}, which the manifest does not list"
                 for s in m.pipeline.segments if s.stage is not None and s.stage not in stages]
    problems += [f"pipeline.visual_ids names stage {s!r}, which the manifest does not list"
                 for s in m.pipeline.visual_ids or () if s not in stages]
    problems += [f"segment {s.decoder} prunes at stage {s.stage!r} but names no prune graph"
                 for s in m.pipeline.segments if s.stage is not None and s.prune is None]
    if m.pipeline.segments and m.pipeline.segments[-1].stage is not None:
        problems.append("the last segment prunes, but no decoder layer follows to see what it kept")
    layers = [layer for s in m.pipeline.segments for layer in range(s.first, s.last + 1)]
    if layers != list(range(m.model.get("llm_layers", len(layers)))):
        problems.append(f"the segments cover decoder layers {layers[:1]}..{layers[-1:]} with gaps or overlaps, not "
                        f"0..{m.model.get('llm_layers', 0) - 1} once each")
    for name, record in m.graphs.items():
        unranged = sorted({d for t in record.inputs for d in t.shape if isinstance(d, str)} - set(record.dims))
        if unranged:
            problems.append(f"graph {name} has symbolic input dims {unranged} without a (min, opt, max) range")
    if m.engines is not None:
        problems += [f"graph {g} has no TensorRT plan in the manifest's engines" for g in m.graphs if g not in m.engines]
    return problems
