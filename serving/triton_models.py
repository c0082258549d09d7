"""`cli.py serve`'s Triton side: two models bound through PyTriton on the one EngineLoop that the OpenAI endpoint
feeds too, so requests from every front end share the running batch.

- `<name>`: KServe v2 infer over HTTP and gRPC; the whole answer in one response.
- `<name>_stream`: decoupled; one response per token, then a last one with the finish reason and details (gRPC
  streaming, or HTTP `POST /v2/models/<name>_stream/generate_stream`).

The tensors are serving/triton_io.py's. The infer functions are coroutines: PyTriton runs them on one asyncio loop,
so each awaits its request's tokens from the engine loop's thread instead of blocking the others.

A bad request raises its InputError here, which PyTriton answers with Triton's INTERNAL status (HTTP 500, gRPC
INTERNAL) and the message: it has no way to send INVALID_ARG. Triton's own checks (input names, shapes, types)
answer 400 before the model runs, `generate_stream` answers 400 to any model error, and the OpenAI endpoint and the
model repository's Python model answer 400 with the same message."""
import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

from serving.engine_loop import EngineLoop
from serving.stub_env import with_libpython
from serving.triton_io import INPUTS, OUTPUTS, TokenStream, final_outputs, request_from_inputs


@dataclass(frozen=True)
class TritonPorts:
    host: str = "127.0.0.1"
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002


def start_triton(loop: EngineLoop, model_name: str, ports: TritonPorts, stub_env: Path, log_file: Path):
    """Starts tritonserver with both models loaded; returns the running pytriton Triton (stop() ends it)."""
    import pytriton.server.triton_server as pytriton_server
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    # PyTriton 0.7 takes the stub's env from this (private) function; ours has numpy<2 (serving/stub_env.py).
    pytriton_server.get_triton_python_backend_python_env = lambda: stub_env
    os.environ.update(with_libpython(dict(os.environ)))  # tritonserver, and the stub it starts, inherit os.environ
    config = TritonConfig(http_address=ports.host, http_port=ports.http, grpc_address=ports.host,
                          grpc_port=ports.grpc, metrics_address=ports.host, metrics_port=ports.metrics,
                          exit_timeout_secs=3, log_file=log_file)
    triton = Triton(config=config)
    inputs = [Tensor(name=s.name, dtype=s.dtype, shape=s.shape, optional=s.optional) for s in INPUTS]
    outputs = [Tensor(name=s.name, dtype=s.dtype, shape=s.shape) for s in OUTPUTS]
    triton.bind(model_name=model_name, infer_func=_whole(loop), inputs=inputs, outputs=outputs,
                config=ModelConfig(batching=False))
    triton.bind(model_name=f"{model_name}_stream", infer_func=_streamed(loop), inputs=inputs, outputs=outputs,
                config=ModelConfig(batching=False, decoupled=True))
    triton.run()
    return triton


def _whole(loop: EngineLoop):
    async def infer(requests):
        return list(await asyncio.gather(*(_answer(loop, r) for r in requests)))
    return infer


async def _answer(loop: EngineLoop, inputs) -> dict:
    events = _Events()
    job = events.submit(loop, request_from_inputs(dict(inputs.items())), stream=False)
    try:
        kind, result, error = await events.queue.get()
    except asyncio.CancelledError:
        loop.cancel(job)
        raise
    if error is not None:
        raise error
    return final_outputs(result)


def _streamed(loop: EngineLoop):
    async def infer(requests):
        (inputs,) = requests  # unbatched: one request per call
        request, events = request_from_inputs(dict(inputs.items())), _Events()
        job = events.submit(loop, request, stream=True)
        responses, finished = TokenStream(request), False
        try:
            while True:
                kind, a, b = await events.queue.get()
                if kind == "token":
                    yield [responses.token(a, b)]
                    continue
                if b is not None:
                    raise b
                finished = True
                yield [responses.last(a)]
                return
        finally:
            if not finished:  # the client went away, or an error: free its row
                loop.cancel(job)
    return infer


class _Events:
    """The engine loop's callbacks (on its thread) -> an asyncio queue on PyTriton's loop."""

    def __init__(self):
        self.aloop, self.queue = asyncio.get_running_loop(), asyncio.Queue()

    def submit(self, loop: EngineLoop, request, stream: bool):
        put = lambda *item: self.aloop.call_soon_threadsafe(self.queue.put_nowait, item)  # noqa: E731
        return loop.submit(request, on_token=(lambda token, text: put("token", token, text)) if stream else None,
                           on_done=lambda result, error: put("done", result, error))
