"""Typed views of the ``params.yaml`` sections: each step reads only its own section."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

import yaml

from busi.errors import BusiError

T = TypeVar("T")


def load_section(params_path: Path, section: str, cls: type[T]) -> T:
    """Read ``section`` of a params file into the dataclass ``cls``; unknown keys are an error."""
    params_path = Path(params_path)
    if not params_path.is_file():
        raise BusiError(
            f"params file {params_path} not found: run the command from the project root "
            "or pass --params PATH"
        )
    raw = yaml.safe_load(params_path.read_text()) or {}
    if section not in raw:
        raise BusiError(f"{params_path} has no '{section}' section; add one (see README)")
    return from_dict(cls, raw[section] or {}, where=f"{params_path}:{section}")


def from_dict(cls: type[T], values: dict[str, Any], where: str = "config") -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise BusiError(f"{where}: unknown keys {unknown}; known keys are {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise BusiError(f"{where}: {exc}") from exc
