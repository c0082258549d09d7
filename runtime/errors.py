"""Errors users see. Each message says what was expected, what was found, and how to fix it."""


class PruneDeployError(Exception):
    """Base class: the CLI prints the message and exits with status 2."""


class InputError(PruneDeployError):
    """A bad image, prompt or request file."""


class EngineDirError(PruneDeployError):
    """An engine dir whose files do not match its manifest."""


class ConfigError(PruneDeployError):
    """Knobs that cannot work together (impossible keep counts, bad schedules)."""
