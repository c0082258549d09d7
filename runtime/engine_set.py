"""Opens every graph of an engine dir and checks each against the manifest's record of its I/O."""
import numpy as np

from engines.onnxruntime_engine import OnnxrtRunner, SessionFromOnnx
from runtime.errors import EngineDirError
from runtime.manifest import Manifest


def open_onnxruntime(manifest: Manifest, providers: list[str] | None = None,
                     kv_device: str | None = "auto") -> dict[str, OnnxrtRunner]:
    """kv_device: see OnnxrtRunner ("auto": KV caches stay on the GPU when the sessions run there)."""
    runners, qdq = {}, set(manifest.data.get("quantization", {}).get("graphs", []))
    for name, record in manifest["graphs"].items():
        runner = OnnxrtRunner(SessionFromOnnx(manifest.graph_file(name), providers, qdq=name in qdq), name, kv_device)
        try:
            signature = runner.io_signature()
        except Exception as e:  # ORT's own message says what is wrong with the file
            raise EngineDirError(f"graph {name} ({record['file']}) does not load: {e}. Export the engine dir again.") from e
        check_signature(name, record, signature)
        runners[name] = runner
    return runners


def check_signature(name: str, record: dict, signature: dict):
    problems = []
    for kind in ("inputs", "outputs"):
        want = {io["name"]: io for io in record[kind]}
        have = {n: (dtype, shape) for n, dtype, shape in signature[kind]}
        missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
        if missing:
            problems.append(f"{kind} missing {missing}")
        if extra:
            problems.append(f"unexpected {kind} {extra}")
        for n in set(want) & set(have):
            if np.dtype(have[n][0]).name != want[n]["dtype"]:
                problems.append(f"{n} is {have[n][0]}, the manifest says {want[n]['dtype']}")
    if problems:
        raise EngineDirError(f"graph {name} does not match the manifest: " + "; ".join(problems)
                             + ". The engine file was replaced or the manifest edited: export again.")
