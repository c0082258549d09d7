"""`cli.py serve DIR`: one process, one engine loop, three front ends on it: Triton (KServe v2 HTTP and gRPC,
Prometheus metrics, health) through PyTriton, and the OpenAI-compatible endpoint. It runs until SIGINT or SIGTERM,
then stops taking requests, ends the ones running and shuts Triton down."""
import signal
import socket
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from runtime.load import open_engine_dir
from serving.engine_loop import EngineLoop
from serving.stub_env import ServeError, ensure_stub_env
from serving.triton_models import TritonPorts


@dataclass(frozen=True)
class ServeConfig:
    engine_dir: Path
    host: str = "127.0.0.1"
    port: int = 9000  # the OpenAI-compatible API
    http_port: int = 8000  # Triton's own three
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int = 8
    max_queue: int = 32
    max_new_tokens: int = 32  # a request's limit when it sets none (max_tokens)
    batching: str = "inflight"
    provider: str = "cpu"
    model_name: str | None = None  # default: prunevlm-<method>
    allow_local_images: Path | None = None
    stub_env: Path | None = None  # default: made once under the cache (serving/stub_env.py)
    triton: bool = True  # False: the OpenAI endpoint alone, without PyTriton
    triton_log: Path | None = None


class Server:
    """Started by start(), ended by stop(); serve() does both around a wait for SIGINT/SIGTERM."""

    def __init__(self, cfg: ServeConfig, progress=print):
        self.cfg, self.progress = cfg, progress
        self.loop = self.triton = self.openai = None

    def start(self) -> "Server":
        from serving.openai_server import OpenAIServer
        cfg = self.cfg
        check_ports(cfg)
        self.progress(f"loading {cfg.engine_dir} ({cfg.provider})")
        # In-flight batching keeps the KV caches in host pools; on a GPU provider they then travel each step.
        generator = open_engine_dir(cfg.engine_dir, cfg.provider, None if cfg.batching == "inflight" else "auto")
        stub_env = ensure_stub_env(cfg.stub_env, self.progress) if cfg.triton else None
        self.model_name = cfg.model_name or f"prunevlm-{generator.m.method}"
        self.loop = EngineLoop(generator, cfg.max_batch, cfg.max_queue, cfg.max_new_tokens, cfg.batching).start()
        try:
            if cfg.triton:
                from serving.triton_models import start_triton
                log = cfg.triton_log or Path(tempfile.gettempdir()) / f"prunevlm-triton-{cfg.http_port}.log"
                self.progress(f"starting Triton (its log: {log})")
                self.triton = start_triton(self.loop, self.model_name,
                                           TritonPorts(cfg.host, cfg.http_port, cfg.grpc_port, cfg.metrics_port),
                                           stub_env, log)
            self.openai = OpenAIServer(self.loop, self.model_name, cfg.host, cfg.port, cfg.allow_local_images)
            self.openai.start()
        except BaseException:
            self.stop()
            raise
        self._announce()
        return self

    def _announce(self):
        cfg, name = self.cfg, self.model_name
        if self.triton:
            self.progress(f"Triton: KServe v2 HTTP {cfg.host}:{cfg.http_port}, gRPC {cfg.host}:{cfg.grpc_port}, "
                          f"metrics http://{cfg.host}:{cfg.metrics_port}/metrics; models {name} and {name}_stream")
        self.progress(f"OpenAI API: http://{cfg.host}:{self.openai.port}/v1 (model {name}); "
                      f"{cfg.batching} batching, up to {cfg.max_batch} running and {cfg.max_queue} queued")
        self.progress("ready")

    def stop(self):
        if self.openai is not None:
            self.openai.stop()
        if self.loop is not None:
            self.loop.stop()
        if self.triton is not None:
            self.triton.stop()

    def serve(self):
        stopped = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stopped.set())
        self.start()
        try:
            stopped.wait()
        finally:
            self.progress("stopping")
            self.stop()


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports free on host now (for tests and benchmarks that start servers side by side)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind((host, 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def check_ports(cfg: ServeConfig):
    """Every port free before anything starts: a Triton that finds its port taken dies, and PyTriton's health
    checks would then reach whatever else listens there."""
    wanted = {"--port": cfg.port}
    if cfg.triton:
        wanted.update({"--http-port": cfg.http_port, "--grpc-port": cfg.grpc_port, "--metrics-port": cfg.metrics_port})
    seen = {}
    for flag, port in wanted.items():
        if port in seen and port != 0:
            raise ServeError(f"{flag} and {seen[port]} are both {port}: give each its own port")
        seen[port] = flag
        if port == 0:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((cfg.host, port))
            except OSError as e:
                raise ServeError(f"cannot listen on {cfg.host}:{port} ({flag}): {e.strerror}; pick another with "
                                 f"{flag}") from None
