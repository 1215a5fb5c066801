"""Errors every moejax step raises for bad input, so commands can report them without a traceback."""


class ConfigError(ValueError):
    """A configuration value is outside its allowed range; the message names the knob."""
