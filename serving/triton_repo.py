"""A Triton model repository from an engine dir (`cli.py triton-repo`).

variant "engines" (for clusters: a GPU container, Kubernetes): one Triton model per graph (`onnxruntime_onnx`, or
`tensorrt_plan` for a dir made by `cli.py build`), on KIND_GPU instances, plus the decoupled Python model
`<model_name>` that batches in flight and calls them through BLS. variant "in-process" (for a server with the Python
backend only, like PyTriton's bundled one): the Python model alone, running the graphs with ONNX Runtime in its stub.

Either way the Python model's version dir holds model.py (serving/triton_model.py), the runtime's source packages
and the manifest with its tokenizers, so the repository runs without this checkout. It is written beside `out` and
renamed at the end; every config.pbtxt is read back with Triton's schema and checked against the manifest."""
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from runtime.engine_dir import staged_engine_dir
from runtime.manifest import MANIFEST, Manifest, load_manifest
from serving.triton_config import (
    PLATFORMS,
    RepoError,
    engine_config,
    engine_problems,
    parse_config,
    python_config,
    python_problems,
)
from serving.triton_engines import VARIANTS, engine_model_name

SOURCE = Path(__file__).resolve().parent.parent
PACKAGES = ("runtime", "engines")  # copied whole: the runtime and the runners it opens (their heavy imports are lazy)
# what model.py imports of serving/, no more
SERVING = ("__init__.py", "engine_loop.py", "stream_text.py", "triton_io.py", "triton_engines.py")
ENGINE_DIR = "engine"  # serving/triton_model.py's name for it
# What "in-process" runs in the stub, besides numpy<2: the runtime's own pins (pyproject.toml).
IN_PROCESS_PACKAGES = ("onnxruntime==1.31.1", "tokenizers==0.23.3", "pillow==13.0.0")


@dataclass
class RepoConfig:
    engine_dir: Path
    out: Path
    variant: str = "engines"
    model_name: str = "prunevlm"
    instances: int = 1  # per model; for "engines", of every engine model (the Python model only orchestrates)
    max_batch: int = 8
    max_queue: int = 32
    max_new_tokens: int = 32
    provider: str = "cpu"  # "in-process": cpu or cuda
    force: bool = False


def write_repo(cfg: RepoConfig) -> Path:
    """Returns the repository's path."""
    _check(cfg)
    manifest = load_manifest(cfg.engine_dir)  # the runtime's own errors for a bad dir
    if cfg.variant == "in-process" and manifest.engines is not None:
        raise RepoError(f"{cfg.engine_dir} holds TensorRT plans; the in-process variant runs ONNX graphs with ONNX "
                        "Runtime and batches in flight over host KV pools. Use --variant engines (Triton's TensorRT "
                        f"backend runs the plans) or the ONNX dir it was built from ({manifest.built_from}).")
    out = Path(cfg.out).resolve()
    with staged_engine_dir(out, cfg.force) as tmp:
        _python_model(cfg, manifest, tmp / cfg.model_name)
        if cfg.variant == "engines":
            for graph in manifest.graphs:
                _engine_model(cfg, manifest, graph, tmp)
        problems = check_repo(tmp, manifest, cfg.model_name)
        if problems:
            raise RepoError("the repository written is inconsistent (a bug): " + "; ".join(problems))
    return out


def _check(cfg: RepoConfig):
    if cfg.variant not in VARIANTS:
        raise RepoError(f"--variant must be one of {VARIANTS}, got {cfg.variant!r}")
    if cfg.provider not in ("cpu", "cuda"):
        raise RepoError(f"--provider must be cpu or cuda for the in-process variant, got {cfg.provider!r}")
    for name in ("instances", "max_batch", "max_new_tokens"):
        if getattr(cfg, name) < 1:
            raise RepoError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    if cfg.max_queue < 0:
        raise RepoError(f"--max-queue must be at least 0, got {cfg.max_queue}")
    if not cfg.model_name or not all(c.isalnum() or c in "_-" for c in cfg.model_name):
        raise RepoError(f"--model-name must be letters, digits, '_' or '-' (a directory and a URL part), "
                        f"got {cfg.model_name!r}")


def _python_model(cfg: RepoConfig, manifest: Manifest, root: Path):
    version = root / "1"
    version.mkdir(parents=True)
    shutil.copyfile(SOURCE / "serving" / "triton_model.py", version / "model.py")
    for package in PACKAGES:
        shutil.copytree(SOURCE / package, version / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (version / "serving").mkdir()
    for name in SERVING:
        shutil.copyfile(SOURCE / "serving" / name, version / "serving" / name)
    # "engines": the Generator reads only the manifest and tokenizers here; the graphs are the engine models'.
    files = list(manifest.files) if cfg.variant == "in-process" else list(manifest.tokenizers.values())
    for rel in [MANIFEST, *files]:
        _place(manifest.root / rel, version / ENGINE_DIR / rel)
    in_process = cfg.variant == "in-process"
    params = {"variant": cfg.variant, "engine_prefix": cfg.model_name, "provider": cfg.provider,
              "max_batch": cfg.max_batch, "max_queue": cfg.max_queue, "max_new_tokens": cfg.max_new_tokens}
    # In-process, each instance opens its own engines (GPU instances when they run on CUDA); as an orchestrator,
    # one CPU instance batches for all, and the engine models' instance counts set the GPU parallelism.
    kind = "KIND_GPU" if in_process and cfg.provider == "cuda" else "KIND_CPU"
    (root / "config.pbtxt").write_text(python_config(cfg.model_name, params, kind, cfg.instances if in_process else 1))


def _engine_model(cfg: RepoConfig, manifest: Manifest, graph: str, repo: Path):
    name = engine_model_name(cfg.model_name, graph)
    record = manifest.graphs[graph]
    kind = "onnx" if manifest.engines is None else "plan"
    version = repo / name / "1"
    if kind == "onnx":
        _place(manifest.graph_file(graph), version / PLATFORMS["onnx"][1])
        if record.data:  # the graph names its data file relative to itself: it keeps that name beside model.onnx
            _place(manifest.path(record.data), version / record.data)
    else:
        _place(manifest.path(manifest.engines[graph].file), version / PLATFORMS["plan"][1])
    (repo / name / "config.pbtxt").write_text(engine_config(name, record, kind, cfg.instances))


def _place(src: Path, dst: Path):
    """Hard-linked where the file already has the mode the published repository gets (so publishing does not
    change the source's), else copied."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if stat.S_IMODE(src.stat().st_mode) == 0o644:
        try:
            os.link(src, dst)
            return
        except OSError:  # another filesystem, or links not allowed
            pass
    shutil.copyfile(src, dst)


def check_repo(repo, manifest: Manifest, model_name: str) -> list[str]:
    """Every config.pbtxt parses with Triton's schema (RepoError if not); then what contradicts the manifest: engine
    models' tensors, decoupled anywhere but the Python model, files missing or of the wrong size."""
    repo = Path(repo)
    graphs = {engine_model_name(model_name, g): g for g in manifest.graphs}
    problems, variant = [], None
    for path in sorted(repo.glob("*/config.pbtxt")):
        config = parse_config(path.read_text(), str(path))
        if config.name != path.parent.name:
            problems.append(f"{path} names model {config.name!r}, but its directory is {path.parent.name!r}")
        if config.name == model_name:
            problems += python_problems(config)
            variant = config.parameters["variant"].string_value if "variant" in config.parameters else None
        elif config.name in graphs:
            problems += engine_problems(config, manifest.graphs[graphs[config.name]], graphs[config.name])
        else:
            problems.append(f"{path}: model {config.name!r} is not the Python model or any graph's")
    if variant not in VARIANTS:
        return problems + [f"the Python model {model_name} is missing or names no variant ({variant!r})"]
    missing = sorted(set(graphs) - {p.parent.name for p in repo.glob("*/config.pbtxt")})
    if variant == "engines" and missing:
        problems.append(f"graphs without an engine model: {missing}")
    for rel, size in expected_files(manifest, model_name, variant).items():
        path = repo / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif path.stat().st_size != size:
            problems.append(f"{rel} is {path.stat().st_size} bytes, the manifest says {size}")
    return problems


def expected_files(manifest: Manifest, model_name: str, variant: str) -> dict[str, int]:
    """{path in the repository: bytes} of every engine file it must hold, by the manifest."""
    size = lambda rel: manifest.files[rel]["bytes"]  # noqa: E731
    engine = f"{model_name}/1/{ENGINE_DIR}"
    files = manifest.files if variant == "in-process" else manifest.tokenizers.values()
    expected = {f"{engine}/{rel}": size(rel) for rel in files}
    if variant == "engines":
        for graph, record in manifest.graphs.items():
            version = f"{engine_model_name(model_name, graph)}/1"
            if manifest.engines is not None:
                expected[f"{version}/{PLATFORMS['plan'][1]}"] = size(manifest.engines[graph].file)
                continue
            expected[f"{version}/{PLATFORMS['onnx'][1]}"] = size(record.file)
            if record.data:
                expected[f"{version}/{record.data}"] = size(record.data)
    return expected


def repo_summary(repo: Path) -> list[tuple[str, int]]:
    """(model, bytes on disk) per model of the repository."""
    return [(d.name, sum(f.stat().st_size for f in d.rglob("*") if f.is_file()))
            for d in sorted(Path(repo).iterdir()) if (d / "config.pbtxt").is_file()]
