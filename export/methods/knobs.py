"""Command-line flags derived from the methods' config dataclasses: a method declares a field (with an
optional `help` and `flag` in its metadata) and `cli.py export` grows the flag; nothing else to edit."""
import types
import typing
from dataclasses import dataclass, fields
from typing import Callable

from runtime.errors import ConfigError


@dataclass(frozen=True)
class Knob:
    field: str
    flag: str          # e.g. --important-ratio
    parse: Callable    # str -> value
    help: str
    invert: bool = False  # a store_true flag that sets a True-by-default bool field to False


def _parser(annotation) -> Callable:
    """str -> value for the annotation of a config field (int, float, str, bool, tuple[int, ...], optional)."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _parser(inner[0])
    if typing.get_origin(annotation) is tuple:
        item = typing.get_args(annotation)[0]
        return lambda s: tuple(item(x) for x in s.split(","))
    return annotation


def knobs_of(config_type) -> list[Knob]:
    hints = typing.get_type_hints(config_type)
    out = []
    for f in fields(config_type):
        meta = dict(f.metadata)
        if hints[f.name] is bool:
            invert = f.default is True
            flag = meta.get("flag", f"--no-{f.name.replace('_', '-')}" if invert else f"--{f.name.replace('_', '-')}")
            out.append(Knob(f.name, flag, bool, meta.get("help", ""), invert))
        else:
            out.append(Knob(f.name, meta.get("flag", f"--{f.name.replace('_', '-')}"), _parser(hints[f.name]),
                            meta.get("help", "")))
    return out


def config_from_flags(method, given: dict, all_knobs: dict):
    """The method's config from the flags a user gave ({field: raw value}, only those set); a flag of another
    method is a ConfigError that lists this one's. A value that does not parse raises ValueError."""
    own = {k.field: k for k in knobs_of(method.config_type)}
    values = {}
    for name, raw in given.items():
        if name not in own:
            raise ConfigError(f"{all_knobs[name].flag} does not apply to method {method.name}; its knobs are: "
                              f"{', '.join(k.flag for k in own.values()) or 'none'}")
        knob = own[name]
        values[name] = (not raw) if knob.invert else (raw if knob.parse is bool else knob.parse(raw))
    return method.make_config(values)
