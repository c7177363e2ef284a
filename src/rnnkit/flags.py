"""Parsers of flag values for argparse (``type=``): each names what it expected and what it got.

Tasks declare their command flags with these (``rnnkit.tasks.base.Flag``), so they live below the tasks and the CLI.
"""

from __future__ import annotations

import argparse
import math

__all__ = ["float_flag", "int_flag", "parse_bool"]


def parse_bool(text: str) -> bool:
    """'true/false', 'yes/no', '1/0', 'on/off' -> bool (argparse ``type=``)."""
    value = text.strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def int_flag(low: int, high: int = 2**63 - 1):
    """argparse ``type=``: an integer in [low, high] (the default ceiling keeps it inside int64)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be <= {high}, got {value}")
        return value

    return parse


def float_flag(low: float, high: float, *, low_open: bool = False):
    """argparse ``type=``: a finite number in [low, high] (or (low, high] with ``low_open``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or not ((value > low) if low_open else (value >= low)) or not value <= high:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be in {interval}, got {value:g}")
        return value

    return parse
