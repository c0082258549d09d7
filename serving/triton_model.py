"""The Python-backend model of a prunevlm Triton repository (copied there as `<model>/1/model.py`): decoupled, one
EngineLoop per instance doing in-flight batching, one response per token and a last one with the finish reason and
details (serving/triton_io.py's tensors). Its parameters come from config.pbtxt (serving/triton_config.py)."""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the runtime's packages are copied beside this file: the repository is self-contained

import triton_python_backend_utils as pb_utils  # noqa: E402  (Triton's stub provides it)

from runtime.errors import InputError  # noqa: E402
from runtime.inflight import Cancelled  # noqa: E402
from serving.engine_loop import EngineLoop, Overloaded, Unavailable  # noqa: E402
from serving.triton_engines import open_generator  # noqa: E402
from serving.triton_io import INPUTS, TokenStream, request_from_inputs  # noqa: E402

ENGINE_DIR = "engine"  # beside this file: the manifest and tokenizers (and, in-process, the graphs)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        generator = open_generator(p["variant"], HERE / ENGINE_DIR, p["engine_prefix"], p["provider"], pb_utils)
        self.loop = EngineLoop(generator, int(p["max_batch"]), int(p["max_queue"]), int(p["max_new_tokens"])).start()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                inputs = {s.name: _input(request, s.name) for s in INPUTS}
                job = request_from_inputs(inputs)
                stream = Stream(sender, job)
                submitted = self.loop.submit(job, stream.on_token, stream.on_done)
                stream.cancel = lambda submitted=submitted: self.loop.cancel(submitted)
            except Exception as e:  # a bad request fails alone, at once; the model keeps serving
                sender.send(error_response(e), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None  # decoupled: every response goes through the senders

    def finalize(self):
        self.loop.stop()


class Stream:
    """One request's responses (serving/triton_io.py's TokenStream), sent from the engine loop's thread."""

    def __init__(self, sender, request):
        self.sender, self.responses = sender, TokenStream(request)
        self.cancel = None  # set once submitted: frees the request's row

    def on_token(self, token: int, text: str):
        if self.sender.is_cancelled():  # the client went away: free its row for others (on_done ends the stream)
            if self.cancel is not None:
                self.cancel()
            return
        self.sender.send(outputs_response(self.responses.token(token, text)))

    def on_done(self, result, error):
        response = error_response(error) if error is not None else outputs_response(self.responses.last(result))
        self.sender.send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)


def _input(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()


def outputs_response(outputs: dict):
    return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()])


def error_response(error: Exception):
    code = (pb_utils.TritonError.INVALID_ARG if isinstance(error, InputError) else
            pb_utils.TritonError.CANCELLED if isinstance(error, Cancelled) else
            pb_utils.TritonError.UNAVAILABLE if isinstance(error, (Overloaded, Unavailable)) else
            pb_utils.TritonError.INTERNAL)
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(error), code))
