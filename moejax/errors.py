"""Errors every moejax step raises for bad input, so commands can report them without a traceback,
and the type check every config dataclass runs before its range checks."""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing


class ConfigError(ValueError):
    """A configuration value is outside its allowed range; the message names the knob."""


_SCALARS = {int: "an integer", float: "a number", str: "a string", bool: "True or False",
            type(None): "None"}


def _scalar_types(hint) -> tuple[type, ...] | None:
    """The scalar types a field annotation allows (``int``, ``float | None``, ...); None when it
    allows anything else (tuples, nested configs), which their own validation checks."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        allowed = typing.get_args(hint)
    else:
        allowed = (hint,)
    return allowed if all(t in _SCALARS for t in allowed) else None


def _has_type(value, allowed: tuple[type, ...]) -> bool:
    if value is None or isinstance(value, bool):
        return type(value) in allowed
    if isinstance(value, numbers.Integral):
        return int in allowed or float in allowed  # an integer is a fine float
    if isinstance(value, numbers.Real):
        return float in allowed
    return isinstance(value, str) and str in allowed


def check_field_types(config) -> None:
    """Raise ConfigError naming the first field of a config dataclass whose value is not of its
    declared scalar type: a gin binding of ``'128'`` or ``4.5`` to an integer knob stops here
    instead of failing as a TypeError deep in validation, or training a fractional step count."""
    hints = typing.get_type_hints(type(config))
    for field in dataclasses.fields(config):
        allowed = _scalar_types(hints[field.name])
        value = getattr(config, field.name)
        if allowed is not None and not _has_type(value, allowed):
            wanted = " or ".join(_SCALARS[t] for t in allowed)
            raise ConfigError(f"{type(config).__name__}.{field.name} = {value!r} is not allowed: "
                              f"{wanted} (got {type(value).__name__})")
