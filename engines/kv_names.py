"""KV-cache tensor names, the Optimum / onnxruntime-genai convention: `past_key_values.{i}.key|value` in,
`present.{i}.key|value` out. Runners keep tensors with these prefixes on the device between calls."""

KV_PREFIX = "present."  # the KV-cache outputs, which a GPU runner may leave on the device
PAST_PREFIX = "past_key_values."  # the KV-cache inputs (decode)


def kv_names(prefix: str, layers) -> list[str]:
    """`past_key_values` in, `present` out, key then value per layer."""
    return [f"{prefix}.{i}.{kind}" for i in layers for kind in ("key", "value")]
