"""What a config file may make tempflow import (docs/security.md).

A reward named ``module.path:factory`` imports ``module.path`` and calls ``factory``: code
runs. Names typed by the user (``--set reward.name=...``, a TrainConfig built in Python) are
trusted; a config file (a preset someone sent, a downloaded run's config.yaml) is not, so a
factory path read from a file is refused unless its module is allowed explicitly
(``--allow-import MODULE`` on the command line, ``allow_imports=`` in Python).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Iterator

from tempflow.errors import UserError

#: the command-line flag that allows a module (named in the error messages)
FLAG = "--allow-import"


def factory_paths(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, 'module:attr') for every ``name`` holding a factory path in ``node``, a
    nested mapping / list such as a config's ``reward`` section or an override's value."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            where = f"{key}.{k}" if key else str(k)
            if k == "name" and isinstance(v, str) and ":" in v:
                yield where, v
            else:
                yield from factory_paths(v, where)
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            yield from factory_paths(v, f"{key}[{i}]")


def _strings(node: Any) -> Iterator[str]:
    """Every string inside a nested mapping / list (values only)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for v in node.values():
            yield from _strings(v)
    elif isinstance(node, (list, tuple)):
        for v in node:
            yield from _strings(v)


def module_allowed(path: str, allowed: Sequence[str]) -> bool:
    """Whether the module of ``path`` ('pkg.mod:attr') is one of ``allowed`` or inside one."""
    module = path.partition(":")[0].strip()
    return any(module == m or module.startswith(m + ".") for m in allowed)


def check_file_imports(data: Mapping, source: str, allowed: Sequence[str] = (),
                       typed: Sequence[Any] = ()) -> None:
    """UserError unless every factory path in config ``data`` (read from ``source``) is in an
    allowed module or was typed by the user: ``typed`` holds the override values."""
    trusted = set(_strings(typed))
    for where, path in factory_paths(data.get("reward"), "reward"):
        if path in trusted or module_allowed(path, allowed):
            continue
        module = path.partition(":")[0].strip() or "?"
        raise UserError(f"{source} sets {where} to {path!r}, which would import and run code from "
                        f"module {module!r}; a config file may not do that on its own: if you trust "
                        f"it, pass {FLAG} {module}")
