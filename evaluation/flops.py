"""Prefill FLOPs of one evaluated request, by export/profiling/flops.py's convention (the IVTP paper's: batch 1,
matmuls only): the engine dir's schedule with the counts this request's stages actually kept where the method
decides them per input (ATP), at this request's own text length. No torch."""
from dataclasses import replace

from export.methods.registry import Schedule
from export.profiling.flops import _clip_text_dims, count_flops, tokens_per_layer
from runtime.manifest import Manifest
from runtime.request import Result


class RequestFlops:
    def __init__(self, manifest: Manifest):
        self.dims, self.schedule = manifest.model, Schedule.of_manifest(manifest)
        self.text_encoder = _clip_text_dims(manifest.source.get("clip"))  # as `cli.py flops DIR` reads it

    def tflops(self, result: Result) -> float:
        kept = {s["name"]: len(s["kept"]) for s in result.stages}
        stages = [replace(s, keep=kept[s.name]) if s.keep is None and s.name in kept else s
                  for s in self.schedule.stages]
        tokens = tokens_per_layer(replace(self.schedule, stages=stages), self.dims)
        return count_flops(self.dims, tokens, text_tokens(result), self.schedule.text_encoder,
                           self.text_encoder)["total_tflops"]


def text_tokens(result: Result) -> int:
    """The prompt's tokens other than the image's (input_ids holds one image token id where the image goes)."""
    return len(result.input_ids) - 1
