"""Errors the engines raise. Each message says what was expected, what was found, and how to fix it."""


class EngineError(Exception):
    """Base class: the CLI prints the message and exits with status 2."""


class EngineInputError(EngineError):
    """A feed that does not fit the graph (names, dtypes, ranks or fixed dims), or a missing provider."""


class EngineConfigError(EngineError):
    """Build settings that cannot work together: a precision the graphs or the TensorRT version cannot give."""
