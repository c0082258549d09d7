"""TensorRT versions as tuples: parsed from text (`--tensorrt 10.3`) or read off the installed module."""


def parse_version(text: str) -> tuple:
    """'10.3' or '10.3.0' -> (10, 3, 0); a ValueError that names the expected form otherwise."""
    try:
        parts = tuple(int(p) for p in text.split("."))
    except ValueError:
        parts = ()
    if not 2 <= len(parts) <= 4:
        raise ValueError(f"--tensorrt wants a version like 10.3 or 10.14.1, got {text!r}")
    return parts


def version_of(module) -> tuple:
    """(major, minor, patch) of an imported tensorrt module; builds like '10.14.1.post1' keep their digits."""
    return tuple(int(p) for p in module.__version__.split(".")[:3] if p.isdigit())


def installed_version() -> tuple | None:
    """TensorRT's version if it imports here, else None (checks then assume a recent one)."""
    try:
        import tensorrt
    except ImportError:
        return None
    return version_of(tensorrt)
