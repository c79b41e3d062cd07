"""The command line's argument types and the helpers every study's options use.

This module imports no study (each study's option groups import it).

Each training setting is declared once: its default lives in the study's config
dataclass (:class:`~torchkron.experiments.mnist.config.TrainConfig`,
:class:`~torchkron.experiments.lm.config.LMConfig`), its flag, type and help in the
study's option groups (``mnist/options.py``) or in the one command that uses it, and
:func:`config_from` builds the config from the parsed arguments by field name.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, fields
from typing import Any, TypeVar

__all__ = [
    "add_jobs_argument",
    "config_from",
    "default_of",
    "finite_float",
    "fraction",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
]

_T = TypeVar("_T")


def _whole_number(text: str) -> int:
    """``text`` as an int, or the argparse error every integer option shares."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _number(text: str) -> float:
    """``text`` as a float (``inf`` and ``nan`` included), or the shared argparse error."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def finite_float(text: str) -> float:
    """A finite number (``inf`` and ``nan`` are rejected: they would train to NaN)."""
    value = _number(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def fraction(text: str) -> float:
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def default_of(config: type[Any], name: str) -> Any:
    """The default of field ``name`` of the config dataclass ``config``."""
    for f in fields(config):
        if f.name == name and f.default is not MISSING:
            return f.default
    raise KeyError(f"{config.__name__} has no field {name!r} with a default")


def config_from(config: type[_T], args: argparse.Namespace, **given: Any) -> _T:
    """``config`` built from the parsed arguments named like its fields (``given`` wins)."""
    values = {f.name: getattr(args, f.name) for f in fields(config) if hasattr(args, f.name)}  # type: ignore[arg-type]
    return config(**{**values, **given})


def add_jobs_argument(p: argparse.ArgumentParser, runs: str = "runs") -> None:
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=None,
        help=f"{runs} trained side by side in worker processes (default: one per CPU core)",
    )
