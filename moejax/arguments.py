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
