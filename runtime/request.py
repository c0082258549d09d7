"""What goes into a generation and what comes out of it."""
from dataclasses import dataclass, field

from runtime.sampling import SamplingParams


@dataclass
class Request:
    image: object  # path or PIL image
    prompt: str
    sampling: SamplingParams | None = None  # None: greedy, up to the generate call's max_new_tokens


@dataclass
class Result:
    text: str
    token_ids: list[int]
    input_ids: list[int]  # the prompt, with a single image token id where the image goes
    stages: list[dict]  # per pruning point: {"name", "kept": raster ids that stage selected, sorted}
    timings_ms: dict
    relevant_tokens: list[int] = field(default_factory=list)  # suffix positions that formed the pseudo-CLS
    kv_cache_bytes: int = 0  # this request's KV caches after prefill, all segments (padding included)
    # The visual tokens the last decoder layers see: how many, and their raster ids (None where they are merges)
    visual_tokens: dict = field(default_factory=dict)
    finish_reason: str = "length"  # "stop": EOS or a stop string; "length": the request's max_new_tokens

    def to_json(self) -> dict:
        return {"text": self.text, "token_ids": self.token_ids, "input_ids": self.input_ids,
                "stages": self.stages, "visual_tokens": self.visual_tokens, "timings_ms": self.timings_ms,
                "relevant_tokens": self.relevant_tokens, "kv_cache_bytes": self.kv_cache_bytes,
                "finish_reason": self.finish_reason}
