"""The Python environment that Triton's Python-backend stub runs in, and the libpython it links.

- numpy: the stub that PyTriton 0.7 bundles reads arrays with numpy 1.x's C layout. Under numpy 2 every output
  tensor comes back empty. So the stub gets a side env of its own, made once from this interpreter with numpy<2
  and pyzmq (what PyTriton's proxy imports there), and the server process keeps numpy 2.
- libpython: the stub links libpython3.X.so with no rpath. Unless LD_LIBRARY_PATH names this interpreter's
  LIBDIR, it may find the system's, of another patch level, and the model fails to load."""
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

from runtime.cache import cache_root
from runtime.errors import PruneDeployError

STUB_PACKAGES = ("numpy>=1.21,<2", "pyzmq>=23")
CHECK = "import numpy, zmq, sys; sys.exit(0 if int(numpy.__version__.split('.')[0]) < 2 else 3)"
# Extra distributions (a model that runs the engines inside the stub needs onnxruntime, tokenizers, pillow) are
# checked by their installed metadata: import names differ from distribution names (pillow -> PIL).
CHECK_EXTRA = "import importlib.metadata as m, sys; [m.version(d) for d in sys.argv[1:]]"


class ServeError(PruneDeployError):
    """The server cannot start as configured (ports, stub env, libpython, engines)."""


def default_stub_env(extra: tuple[str, ...] = ()) -> Path:
    """One cached env per package set: extras get a dir of their own, named by a hash of their requirements."""
    root = cache_root()
    name = f"triton-stub-env-py{sys.version_info.major}.{sys.version_info.minor}"
    if extra:
        name += "-" + hashlib.sha256("\n".join(sorted(extra)).encode()).hexdigest()[:10]
    return root / name


def _distribution(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0]


def stub_env_ok(path: Path, extra: tuple[str, ...] = ()) -> bool:
    python = path / "bin" / "python3"
    if not python.exists() or subprocess.run([str(python), "-c", CHECK], capture_output=True).returncode != 0:
        return False
    return not extra or subprocess.run([str(python), "-c", CHECK_EXTRA, *map(_distribution, extra)],
                                       capture_output=True).returncode == 0


def ensure_stub_env(path: Path | None = None, progress=print, extra: tuple[str, ...] = ()) -> Path:
    """An env with numpy<2 and pyzmq for the stub (plus the `extra` requirements, e.g. onnxruntime for a model
    that runs the engines in the stub): `path` as given (checked), or the cached default for that package set,
    made on first use (a venv of this interpreter plus a pip install, written beside it and renamed, so a failed
    attempt leaves nothing half-made)."""
    extra = tuple(extra)
    packages = (*STUB_PACKAGES, *extra)
    if path is not None:
        path = Path(path).resolve()
        if not stub_env_ok(path, extra):
            raise ServeError(f"--stub-env {path} is not a Python {sys.version_info.major}.{sys.version_info.minor} "
                             f"env with {' and '.join(packages)}: {_how_to_make(path, packages)}")
        return path
    path = default_stub_env(extra)
    if stub_env_ok(path, extra):
        return path
    progress(f"making the Triton stub env once, in {path} ({', '.join(packages)}; PyTriton's stub needs numpy 1.x)")
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        venv.create(tmp, with_pip=True)
        pip = subprocess.run([str(tmp / "bin" / "python3"), "-m", "pip", "install", "-q", *packages],
                             capture_output=True, text=True)
        if pip.returncode != 0 or not stub_env_ok(tmp, extra):
            last = (pip.stderr or pip.stdout).strip().splitlines()[-1:] or ["the check failed"]
            raise ServeError(f"could not make the Triton stub env ({last[0]}): {_how_to_make(path, packages)}")
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _how_to_make(path: Path, packages: tuple[str, ...] = STUB_PACKAGES) -> str:
    return (f"make one with `{sys.executable} -m venv {path} && {path}/bin/pip install "
            f"{' '.join(repr(p) for p in packages)}` and pass --stub-env {path}")


def libpython_dir() -> str:
    """The folder of this interpreter's libpython, which the stub must load."""
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        raise ServeError(f"{sys.executable} was built without --enable-shared, so it has no libpython"
                         f"{sys.version_info.major}.{sys.version_info.minor}.so for Triton's Python backend to load. "
                         "Use a Python that has it (Debian/Ubuntu's python3, conda, or pyenv built with "
                         "PYTHON_CONFIGURE_OPTS=--enable-shared).")
    return sysconfig.get_config_var("LIBDIR")


def with_libpython(environ: dict) -> dict:
    """environ with this interpreter's LIBDIR first on LD_LIBRARY_PATH."""
    old = environ.get("LD_LIBRARY_PATH")
    return {**environ, "LD_LIBRARY_PATH": libpython_dir() + (f":{old}" if old else "")}
