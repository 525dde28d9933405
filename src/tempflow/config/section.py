"""The base of every config section: type-checked fields, then the section's own range checks."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from tempflow.config.loading import coerce, field_types
from tempflow.errors import UserError


class Section:
    """Mixin for config sections: type-check fields, then run the section's own checks."""

    _prefix: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = field_types(type(self))
        for f in dataclasses.fields(self):
            value = coerce(getattr(self, f.name), hints[f.name], self._prefix + f.name)
            object.__setattr__(self, f.name, value)
        self._check()

    def _check(self) -> None:
        pass

    def _need(self, name: str, ok: bool, rule: str, why: str) -> None:
        """UserError '<prefix.name> must be <rule> (got <value>): <why>' unless ``ok``."""
        if not ok:
            raise UserError(f"{self._prefix}{name} must be {rule} (got {getattr(self, name)!r}): {why}")
