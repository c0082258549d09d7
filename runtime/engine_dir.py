"""An engine dir on disk: its file records (sizes, sha256), their checks, and the staged write every command
that makes one goes through (export, calibrate, build), so that none leaves a half-written dir behind.

Opening a dir checks every listed file's size, which costs nothing; hashing tens of GB would cost a minute at every
start, so the sha256 check is its own command (`cli.py verify DIR`, `verify_files`).

A dir is written into `.<name>.partial-<pid>-<random>` beside its destination and renamed into place only once it
is complete, readable by everyone (dirs 0755, files 0644). A partial dir whose process is gone (killed, or the
machine went down) is removed by the next write beside it.
"""
import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from pathlib import Path

from runtime.errors import ConfigError, EngineDirError

PARTIAL, OLD = ".partial-", ".old-"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: Path) -> dict:
    return {"bytes": path.stat().st_size, "sha256": sha256(path)}


def file_records(root: Path, skip=("manifest.json",)) -> dict:
    """{relative path: record} of every file under root but `skip` (the manifest is written after its records)."""
    return {str(f.relative_to(root)): file_record(f) for f in sorted(root.rglob("*"))
            if f.is_file() and str(f.relative_to(root)) not in skip}


def size_problems(root: Path, records: dict) -> list[str]:
    """Every listed file must exist with its recorded size."""
    problems = []
    for rel, record in records.items():
        f = root / rel
        if not f.is_file():
            problems.append(f"missing {rel}")
        elif f.stat().st_size != record["bytes"]:
            problems.append(f"{rel} is {f.stat().st_size} bytes, the manifest says {record['bytes']}")
    return problems


def verify_files(root: Path, records: dict, progress=lambda done, total, rel: None) -> list[str]:
    """Sizes, then the sha256 of every listed file; `progress(bytes hashed, bytes in all, file)` after each file."""
    problems = size_problems(root, records)
    if problems:
        return problems
    total, done = sum(r["bytes"] for r in records.values()), 0
    for rel, record in records.items():
        if sha256(root / rel) != record["sha256"]:
            problems.append(f"{rel} does not match its sha256 in the manifest (modified or corrupt)")
        done += record["bytes"]
        progress(done, total, rel)
    return problems


def unlisted_files(root: Path, records: dict, skip=("manifest.json",)) -> list[str]:
    """Files under root that the manifest does not list (left by hand, or by another tool)."""
    return [str(f.relative_to(root)) for f in sorted(root.rglob("*"))
            if f.is_file() and str(f.relative_to(root)) not in records and str(f.relative_to(root)) not in skip]


def check_destination(out: Path, force: bool):
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; pass --force to replace it or choose another --out")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_abandoned(out: Path):
    """Partial dirs beside `out` whose writer is gone, and old dirs a replacement left when it was killed."""
    if not out.parent.is_dir():
        return
    for entry in out.parent.glob(f".{out.name}.*"):
        rest = entry.name[len(out.name) + 1:]
        if rest.startswith(PARTIAL):
            pid = rest[len(PARTIAL):].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)
        elif rest.startswith(OLD):
            shutil.rmtree(entry, ignore_errors=True)


def make_readable(root: Path):
    """mkdtemp makes an owner-only dir; an engine dir is read by whoever runs it."""
    for path in [root, *root.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def publish(tmp: Path, out: Path):
    """Moves a finished engine dir into place; an old dir is only removed once the new one is complete."""
    if out.exists():
        old = out.with_name(f".{out.name}{OLD}{int(time.time())}")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


@contextlib.contextmanager
def staged_engine_dir(out, force: bool = False):
    """Yields an empty dir beside `out` to write into. On success it becomes `out` (replacing it under force);
    on any error, or an interrupt, it is removed and `out` is left as it was."""
    out = Path(out).resolve()
    check_destination(out, force)
    if out.exists() and not out.is_dir():
        raise EngineDirError(f"{out} exists and is not a directory; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL}{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        make_readable(tmp)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
