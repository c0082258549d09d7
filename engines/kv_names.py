"""KV-cache tensor names, the Optimum / onnxruntime-genai convention: `past_key_values.{i}.key|value` in,
`present.{i}.key|value` out. Runners keep tensors with these prefixes on the device between calls. A graph that
takes both is one buffer updated in place: present is past with the new tokens written into it (ONNX ScatterND),
as onnxruntime-genai's past_present_share_buffer does."""

PAST, PRESENT = "past_key_values", "present"  # kv_names' prefixes: the caches in, the caches out
KV_PREFIX = PRESENT + "."  # the KV-cache outputs, which a GPU runner may leave on the device
PAST_PREFIX = PAST + "."  # the KV-cache inputs


def kv_names(prefix: str, layers) -> list[str]:
    """`past_key_values` in, `present` out, key then value per layer."""
    return [f"{prefix}.{i}.{kind}" for i in layers for kind in ("key", "value")]


def in_place_pairs(input_names, output_names) -> dict[str, str]:
    """{present output: the past input whose buffer it is}."""
    inputs = set(input_names)
    return {out: PAST_PREFIX + out[len(KV_PREFIX):] for out in output_names
            if out.startswith(KV_PREFIX) and PAST_PREFIX + out[len(KV_PREFIX):] in inputs}
