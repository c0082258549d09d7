"""Pruning methods. Importing this package registers each one (one file per method)."""
from export.methods import ivtp, none  # noqa: F401
