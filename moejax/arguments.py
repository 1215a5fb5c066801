"""argparse types the moejax commands share: a bad number stops a command while its arguments are
read (argparse's exit 2, naming the option), before anything is loaded, trained or fitted."""

from __future__ import annotations

import argparse
from typing import Callable


def integer_at_least(minimum: int) -> Callable[[str], int]:
    """The type of an integer option that must be ``minimum`` or more."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}; give {minimum} or more")
        return value

    parse.__name__ = f"integer >= {minimum}"  # what argparse names in its own messages
    return parse


def checkpoint_step(text: str) -> str | int:
    """The type of a ``--step`` option: 'latest' or a step number >= 0."""
    if text.strip().lower() == "latest":
        return "latest"
    try:
        step = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'latest' or a step number") from None
    if step < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {step}")
    return step


def capacity_factor_or_none(text: str) -> float | None:
    """The type of an ``--eval_capacity_factor`` option: 'none' (dropless) or a number > 0."""
    if text.strip().lower() in ("none", "dropless", ""):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not 'none' or a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 (or 'none' for dropless), got {text}")
    return value
