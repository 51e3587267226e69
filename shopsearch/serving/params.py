"""Typed parameters of the served steps, carried across the Triton boundary as strings.

Triton hands a Python-backend model its config's `parameters` as a map of strings. Each step
declares a frozen dataclass of what it needs (tensor names, sizes, the embedder it was built with);
the config builder writes it with `to_parameters()`, and the step reads it back with
`from_parameters()`, typed and checked, so a renamed or missing key fails with the model and the
key named instead of a KeyError deep in a load.

Fields are `int`, `str`, `bool` (written "1" / "0"), or one of those `| None` (None: not written,
absent: None).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import TypeVar

from shopsearch.errors import ArtifactError

P = TypeVar("P", bound="StepParams")


@dataclasses.dataclass(frozen=True)
class StepParams:
    def to_parameters(self) -> tuple[tuple[str, str], ...]:
        """(key, value) pairs for the config's `parameters`, in field order; None fields are left out."""
        out = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out.append((f.name, _encode(value)))
        return tuple(out)

    @classmethod
    def from_parameters(cls: type[P], params: Mapping[str, str], model: str) -> P:
        """The parameters `model` was configured with; keys this class does not declare are ignored
        (the backend's own switches travel in the same map)."""
        hints = typing.get_type_hints(cls)
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in params:
                values[f.name] = _decode(params[f.name], hints[f.name], model, f.name)
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ArtifactError(f"{model}: config.pbtxt parameter '{f.name}' is missing")
        return cls(**values)


def _encode(value: int | str | bool) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _decode(raw: str, hint, model: str, key: str) -> int | str | bool:
    kind = _base_type(hint)
    if kind is bool:
        if raw not in ("0", "1"):
            raise ArtifactError(f"{model}: config.pbtxt parameter '{key}': '{raw}' is not 0 or 1")
        return raw == "1"
    if kind is int:
        try:
            return int(raw)
        except ValueError:
            raise ArtifactError(f"{model}: config.pbtxt parameter '{key}': '{raw}' is not an integer") from None
    return raw


def _base_type(hint) -> type:
    """int / str / bool, also out of `X | None`."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
    if hint not in (int, str, bool):
        raise TypeError(f"step parameters are int, str or bool (or those | None), not {hint!r}")
    return hint
