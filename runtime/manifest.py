"""The manifest: the only contract between export and runtime. Loading it checks every file it names."""
import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import EngineDirError

MANIFEST = "manifest.json"
FORMAT = 2  # 2: integer graph I/O is int32


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256(path)}


def file_records(root: Path) -> dict:
    """The manifest's `files` section: every file under root (the manifest itself is written after)."""
    return {str(f.relative_to(root)): file_record(f) for f in sorted(root.rglob("*")) if f.is_file()}


def publish(tmp: Path, out: Path):
    """Moves a finished engine dir into place; an old dir is only removed once the new one is complete."""
    if out.exists():
        old = out.with_name(f".{out.name}.old-{int(time.time())}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


@dataclass
class Manifest:
    root: Path
    data: dict

    def __getitem__(self, key):
        return self.data[key]

    @property
    def pipeline(self) -> dict:
        return self.data["pipeline"]

    def path(self, relative: str) -> Path:
        return self.root / relative

    def graph_file(self, name: str) -> Path:
        return self.root / self.data["graphs"][name]["file"]


def load_manifest(engine_dir, verify_checksums: bool = True) -> Manifest:
    root = Path(engine_dir)
    if not root.is_dir():
        raise EngineDirError(f"engine dir {root} does not exist; create one with `python cli.py export ... --out {root}`")
    path = root / MANIFEST
    if not path.is_file():
        raise EngineDirError(f"{root} has no {MANIFEST}: it is not an engine dir (or its export did not finish); "
                             "export again with `python cli.py export`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EngineDirError(f"{path} is not valid JSON ({e}); export the engine dir again") from e
    if data.get("format") != FORMAT:
        raise EngineDirError(f"{path} has format {data.get('format')!r}, this runtime reads format {FORMAT}; "
                             "export again with this version")
    manifest = Manifest(root, data)
    check_files(manifest, verify_checksums)
    return manifest


def check_files(manifest: Manifest, verify_checksums: bool):
    """Every file the manifest lists must exist with its recorded size and (optionally) sha256."""
    problems = []
    for rel, record in manifest["files"].items():
        f = manifest.root / rel
        if not f.is_file():
            problems.append(f"missing {rel}")
        elif f.stat().st_size != record["bytes"]:
            problems.append(f"{rel} is {f.stat().st_size} bytes, the manifest says {record['bytes']}")
        elif verify_checksums and sha256(f) != record["sha256"]:
            problems.append(f"{rel} does not match its sha256 in the manifest (modified or corrupt)")
    if problems:
        raise EngineDirError(f"engine dir {manifest.root} does not match its manifest: " + "; ".join(problems)
                             + ". Export it again (python cli.py export ... --force).")
