"""The JSON the OpenAI endpoint answers with: chat.completion objects, chat.completion.chunk events, token usage and
errors, shaped as OpenAI's API shapes them so its clients parse them unchanged. `prunevlm` is this server's extension
field: what the pruning kept, which OpenAI's clients ignore."""
import time
import uuid

from runtime.request import Result

ERROR_TYPES = {403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}


class Completion:
    """One request's id, creation time and model name, shared by every chunk of its stream."""

    def __init__(self, model: str):
        self.id, self.created, self.model = "chatcmpl-" + uuid.uuid4().hex, int(time.time()), model

    def whole(self, result: Result, vision_tokens: int) -> dict:
        return {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                             "finish_reason": result.finish_reason}],
                "usage": usage(result, vision_tokens), "prunevlm": extension(result)}

    def chunk(self, delta: dict | None = None, finish_reason: str | None = None, **extra) -> dict:
        """A chat.completion.chunk; delta=None with `usage` in extra gives the usage chunk (no choices)."""
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices, **extra}


def usage(result: Result, vision_tokens: int) -> dict:
    """prompt_tokens counts what the LLM saw: the prompt's text tokens (input_ids holds one placeholder where the
    image goes) and the visual tokens that enter it, as the generator's length check counts them."""
    prompt = len(result.input_ids) - 1 + vision_tokens
    return {"prompt_tokens": prompt, "completion_tokens": len(result.token_ids),
            "total_tokens": prompt + len(result.token_ids)}


def extension(result: Result) -> dict:
    """How many tokens each pruning stage kept and how many reach the last layers (counts, not the ids: small)."""
    return {"stages": [{"name": s["name"], "kept": len(s["kept"])} for s in result.stages],
            "visual_tokens": result.visual_tokens.get("count"), "token_ids": result.token_ids}


def error(status: int, message: str) -> dict:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}


def metrics(stats: dict, model: str) -> str:
    """The engine loop's counts in Prometheus' text format: every front end's requests, which Triton's own metrics
    (its models only) do not see."""
    label = f'model="{model}"'
    lines = ["# HELP prunevlm_requests_total Requests that ended, by outcome (refused: the queue was full).",
             "# TYPE prunevlm_requests_total counter"]
    lines += [f'prunevlm_requests_total{{{label},outcome="{k}"}} {stats[k]}'
              for k in ("completed", "failed", "cancelled", "refused")]
    for name, key, what in (("running", "running", "Requests in the running batch."),
                            ("queued", "queued", "Requests waiting for a row."),
                            ("max_batch", "max_batch", "Rows of the running batch.")):
        lines += [f"# HELP prunevlm_{name} {what}", f"# TYPE prunevlm_{name} gauge",
                  f"prunevlm_{name}{{{label}}} {stats[key]}"]
    return "\n".join(lines) + "\n"
