"""The options of a method or a metric: a default, and the range or the choices the manifest may give."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    default: bool | int | float | str | tuple[int, ...]  # a tuple: a list of integers in [low, high]
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()


def defaults(options: dict[str, Option]) -> dict[str, Any]:
    return {name: option.default for name, option in options.items()}
