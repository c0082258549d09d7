"""The single place that knows the methods: each registers its name, config type and plan builder."""
from dataclasses import dataclass, fields
from typing import Callable

METHODS: dict[str, "MethodEntry"] = {}


@dataclass(frozen=True)
class MethodEntry:
    name: str
    config_type: type
    build: Callable  # (Checkpoint, config) -> MethodPlan
    needs_clip: bool
    summary: str

    def knobs(self) -> dict:
        return {f.name: f.default for f in fields(self.config_type)}


def register(name: str, config_type: type, needs_clip: bool, summary: str):
    def wrap(build):
        METHODS[name] = MethodEntry(name, config_type, build, needs_clip, summary)
        return build
    return wrap


def all_methods() -> dict[str, MethodEntry]:
    from export import methods  # noqa: F401  (importing the package registers every method)
    return METHODS


def get_method(name: str) -> MethodEntry:
    if name not in all_methods():
        from runtime.errors import ConfigError
        raise ConfigError(f"unknown method {name!r}; choose one of: {', '.join(sorted(METHODS))}")
    return METHODS[name]
