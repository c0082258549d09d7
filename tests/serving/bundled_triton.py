"""The tritonserver that PyTriton 0.7 bundles (Python backend only), started on free local ports for a test and
stopped cleanly: SIGINT, then a wait; stubs that outlive it (they can ignore SIGTERM) are killed by their repo."""
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from serving.server import free_ports
from serving.stub_env import with_libpython


def bundled_tritonserver() -> Path | None:
    try:
        import pytriton
    except ImportError:
        return None
    root = Path(pytriton.__file__).parent / "tritonserver"
    return root if (root / "bin" / "tritonserver").is_file() else None


class BundledTriton:
    def __init__(self, repo: Path, stub_env: Path, workdir: Path):
        self.repo, self.stub_env, self.workdir = Path(repo), Path(stub_env), Path(workdir)
        self.http, self.grpc, self.metrics = free_ports(3)
        self.proc = None

    def start(self, timeout: float = 120) -> "BundledTriton":
        server = bundled_tritonserver()
        backend = self.workdir / "backends" / "python"
        backend.mkdir(parents=True, exist_ok=True)
        for src in ("backends/python/libtriton_python.so", "backends/python/triton_python_backend_utils.py",
                    "python_backend_stubs/3.11/triton_python_backend_stub"):
            shutil.copy2(server / src, backend / Path(src).name)
        libs = server.parent.parent / "nvidia_pytriton.libs"
        # No PYTHONPATH: the stub must find the runtime in the repository, not in this checkout.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PATH"] = f"{self.stub_env}/bin:{env.get('PATH', '/usr/bin:/bin')}"
        env = with_libpython({**env, "LD_LIBRARY_PATH": str(libs)})
        cmd = [str(server / "bin" / "tritonserver"), "--model-repository", str(self.repo),
               "--backend-directory", str(backend.parent), "--http-address", "127.0.0.1", "--http-port",
               str(self.http), "--grpc-address", "127.0.0.1", "--grpc-port", str(self.grpc), "--metrics-address",
               "127.0.0.1", "--metrics-port", str(self.metrics), "--exit-timeout-secs", "2"]
        self.log = open(self.workdir / "tritonserver.log", "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        import tritonclient.http as http
        client = http.InferenceServerClient(f"127.0.0.1:{self.http}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tritonserver exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if client.is_server_ready():
                    return self
            except Exception:  # not listening yet
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"tritonserver not ready within {timeout} s:\n{self.log_text()}")

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.workdir / "tritonserver.log").read_text()[-6000:]

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in stray_stubs(self.repo):
            os.kill(pid, signal.SIGKILL)
        self.log.close()


def stray_stubs(repo: Path) -> list[int]:
    """Stub processes still running with this repository on their command line."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "triton_python_backend_stub" in cmdline and str(repo) in cmdline:
            pids.append(int(proc.name))
    return pids
