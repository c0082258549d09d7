"""A stand-in for Triton's `triton_python_backend_utils`, enough to run the repository's model.py in this process:
a BLS request runs the named engine model's model.onnx with ONNX Runtime (what Triton's ORT backend does), and each
request's response sender collects what the model sends."""
import threading
from pathlib import Path

import numpy as np

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
REPO: Path | None = None  # the repository the BLS requests run against; set by the test
_sessions: dict = {}
calls: list[str] = []  # the engine models called, in order


class TritonError:
    UNKNOWN, INTERNAL, NOT_FOUND, INVALID_ARG, UNAVAILABLE, UNSUPPORTED, ALREADY_EXISTS, CANCELLED = range(8)

    def __init__(self, message: str, code: int = 0):
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> int:
        return self._code


class Tensor:
    def __init__(self, name: str, array):
        self._name, self._array = name, np.asarray(array)

    def name(self) -> str:
        return self._name

    def as_numpy(self):
        return self._array


class InferenceResponse:
    def __init__(self, output_tensors=(), error: TritonError | None = None):
        self.output_tensors, self._error = list(output_tensors), error

    def has_error(self) -> bool:
        return self._error is not None

    def error(self):
        return self._error

    def outputs(self) -> dict:
        return {t.name(): t.as_numpy() for t in self.output_tensors}


class InferenceRequest:
    def __init__(self, model_name: str, inputs, requested_output_names):
        self.model_name, self.inputs, self.outputs = model_name, list(inputs), list(requested_output_names)

    def exec(self) -> InferenceResponse:
        import onnxruntime as ort
        path = REPO / self.model_name / "1" / "model.onnx"
        if not path.is_file():
            return InferenceResponse(error=TritonError(f"Request for unknown model: '{self.model_name}'", 2))
        if self.model_name not in _sessions:
            options = ort.SessionOptions()
            options.log_severity_level = 3
            _sessions[self.model_name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        calls.append(self.model_name)
        values = _sessions[self.model_name].run(self.outputs, {t.name(): t.as_numpy() for t in self.inputs})
        return InferenceResponse([Tensor(n, v) for n, v in zip(self.outputs, values)])


def get_input_tensor_by_name(request, name: str):
    return request.tensors.get(name)


def get_output_tensor_by_name(response: InferenceResponse, name: str):
    return next((t for t in response.output_tensors if t.name() == name), None)


class Sender:
    def __init__(self, cancel_after: int | None = None):
        """cancel_after: the client goes away once this many responses were sent."""
        self.responses, self.done, self.cancel_after = [], threading.Event(), cancel_after

    def is_cancelled(self) -> bool:
        return self.cancel_after is not None and len(self.responses) >= self.cancel_after

    def send(self, response=None, flags: int = 0):
        self.responses.append(response)
        if flags & TRITONSERVER_RESPONSE_COMPLETE_FINAL:
            self.done.set()


class Request:
    """What Triton hands execute(): input tensors by name and a response sender."""

    def __init__(self, cancel_after: int | None = None, **arrays):
        self.tensors = {k: Tensor(k, v) for k, v in arrays.items()}
        self.sender = Sender(cancel_after)

    def get_response_sender(self) -> Sender:
        return self.sender
