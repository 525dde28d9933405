"""Configs from YAML files and ``key=value`` overrides, back to YAML, and their differences.

The type checks are generic: a value is checked against the dataclass field's annotation
(``typing.get_type_hints``), so a new field needs no loader code. YAML is read with PyYAML's
safe loader plus two fixes: ``1e-4`` is a float (PyYAML reads it as a string) and a key given
twice in one mapping is an error (PyYAML keeps the last silently).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from tempflow.errors import UserError

if typing.TYPE_CHECKING:
    from tempflow.config.schema import TrainConfig

# ---------------------------------------------------------------------------- type checking


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of dataclass ``cls`` (cached)."""
    return typing.get_type_hints(cls)


def _article(tp: Any) -> str:
    """How a type reads in an error message."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_article(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args) if len(args) > 1 else repr(args[0])
    if origin is list:
        return "a list of " + {int: "integers", float: "numbers", str: "strings"}.get(args[0], "values")
    if origin is dict or dataclasses.is_dataclass(tp):
        return "a mapping"
    return {type(None): "null", bool: "true or false", int: "an integer", float: "a number",
            str: "a string"}.get(tp, "any value")


def _value(v: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            type(None): "null", list: "a list", tuple: "a list", dict: "a mapping"}
    return f"{v!r} ({kind.get(type(v), type(v).__name__)})"


def _matches(value: Any, tp: Any) -> bool:
    """Shallow type test (:func:`coerce` checks the contents); a bool is never a number."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in typing.get_args(tp))
    if origin is list:
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, Mapping)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, (tp, Mapping))
    if tp in (int, float):
        return isinstance(value, (int, float) if tp is float else int) and not isinstance(value, bool)
    return value is None if tp is type(None) else isinstance(value, tp)


def coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against annotation ``tp``: an int becomes a float, a tuple a list, a
    mapping a dataclass. UserError naming the dotted field ``where`` on a mismatch."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        alt = next((a for a in args if _matches(value, a)), None)
        if alt is None:
            raise UserError(f"{where} must be {_article(tp)}, got {_value(value)}")
        return coerce(value, alt, where)
    if not _matches(value, tp):
        raise UserError(f"{where} must be {_article(tp)}, got {_value(value)}")
    if origin is list:
        return [coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        return {coerce(k, args[0], f"{where} key"): coerce(v, args[1], f"{where}.{k}")
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and not isinstance(value, tp):
        return from_mapping(tp, value)
    if tp is float:
        if not math.isfinite(value):
            raise UserError(f"{where} must be a finite number, got {value!r}")
        return float(value)
    return value


def unknown_key_error(key: Any, valid: Sequence[str], prefix: str = "") -> UserError:
    """UserError for an unknown key at the level ``prefix``, suggesting the closest valid one."""
    close = difflib.get_close_matches(str(key), list(valid), n=1, cutoff=0.6)
    hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
    level = f" under '{prefix[:-1]}'" if prefix else ""
    return UserError(f"unknown config key '{prefix}{key}'{hint} (valid keys{level}: {', '.join(valid)})")


def from_mapping(cls: type, data: Mapping) -> Any:
    """Build dataclass ``cls`` from a mapping: missing keys take defaults, unknown keys fail."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            raise unknown_key_error(key, names, getattr(cls, "_prefix", ""))
    return cls(**data)


def _section(tp: Any) -> Any:
    """The dataclass (or dict type) inside an annotation such as ``LoraConfig | None``."""
    for alt in typing.get_args(tp) if typing.get_origin(tp) in (Union, types.UnionType) else (tp,):
        if dataclasses.is_dataclass(alt) or typing.get_origin(alt) is dict:
            return alt
    return tp


def _check_keys(data: Mapping, cls: type, prefix: str = "") -> None:
    """Unknown keys anywhere in a nested mapping meant for dataclass ``cls``."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        if key not in names:
            raise unknown_key_error(key, names, prefix)
        sub = _section(field_types(cls)[key])
        if isinstance(value, Mapping) and dataclasses.is_dataclass(sub):
            _check_keys(value, sub, f"{prefix}{key}.")

# ---------------------------------------------------------------------------- YAML

_FLOAT = re.compile(r"""^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                        |[0-9][0-9_]*[eE][-+]?[0-9]+
                        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?)$""", re.X)


class _Loader(yaml.SafeLoader):
    """Safe loader: ``1e-4`` is a float, a repeated key is an error."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark)
            seen.add(key) if isinstance(key, typing.Hashable) else None
        return super().construct_mapping(node, deep=deep)


class _Dumper(yaml.SafeDumper):
    """Safe dumper: block mappings, lists of scalars on one line, and quotes around strings
    that :class:`_Loader` would read as floats."""

    def represent_list(self, data):
        flow = all(not isinstance(x, (list, dict)) for x in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _yaml_error(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(err, "problem", None) or str(err)
    return f"{where}: {' '.join(str(problem).split())}"


def read_yaml(path: str | os.PathLike) -> dict:
    """The mapping in a YAML file ({} for an empty file); UserError naming the file otherwise."""
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "not found"
        raise UserError(f"config file {path} {what}: give the path of a YAML config, "
                        f"e.g. configs/shapes-tempflow.yaml")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML{_yaml_error(err)}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read config file {path}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must be a mapping of sections (model:, sampling:, ...), "
                        f"got {_value(data)}")
    return data

# ---------------------------------------------------------------------------- overrides


def parse_override(item: str) -> tuple[list[str], Any]:
    """``"a.b.c=value"`` -> (["a", "b", "c"], value parsed as YAML)."""
    key, eq, text = item.partition("=")
    parts = key.strip().split(".")
    if not eq or not all(parts):
        raise UserError(f"override {item!r} must look like section.key=value, "
                        f"e.g. algorithm.num_branches=6")
    try:
        value = yaml.load(text, Loader=_Loader) if text.strip() else None
    except yaml.YAMLError as err:
        raise UserError(f"override {item!r}: the value is not valid YAML{_yaml_error(err)}") from None
    return parts, value


def apply_override(data: dict, item: str, root: type | None = None) -> dict:
    """Set ``"a.b.c=value"`` in the nested dict ``data`` (in place; also returned).

    Keys are checked against the dataclass ``root`` (default :class:`TrainConfig`); a section
    that is null or absent (``model.lora: null``) becomes a mapping, so
    ``model.lora.rank=4`` turns LoRA back on with default settings and rank 4. Keys under a
    free-form mapping field (``reward.kwargs.url=...``) are not checked.
    """
    parts, value = parse_override(item)
    tp: Any = root or _train_config()
    for i, part in enumerate(parts):
        prefix = "".join(p + "." for p in parts[:i])
        tp = _section(tp)
        if typing.get_origin(tp) is dict:
            break
        if not dataclasses.is_dataclass(tp):
            raise UserError(f"override {item!r}: {prefix[:-1]} is not a section; "
                            f"set it as a whole, e.g. {prefix[:-1]}=<value>")
        names = [f.name for f in dataclasses.fields(tp)]
        if part not in names:
            raise unknown_key_error(part, names, prefix)
        tp = field_types(tp)[part]
    node = data
    for i, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}
        elif not isinstance(node[part], dict):
            raise UserError(f"override {item!r}: {'.'.join(parts[:i + 1])} is {_value(node[part])}, "
                            f"not a mapping")
        node = node[part]
    node[parts[-1]] = value
    return data

# ---------------------------------------------------------------------------- public API


def _train_config() -> type:
    from tempflow.config.schema import TrainConfig

    return TrainConfig


def config_from_dict(data: Mapping) -> TrainConfig:
    """A validated :class:`TrainConfig` from a nested mapping (missing keys: defaults)."""
    return from_mapping(_train_config(), data)


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = (),
                allow_imports: Sequence[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file ``path`` (None: none), then ``key=value`` overrides.

    Each override's value is YAML: ``algorithm.branch_points=[0,2,4]``, ``model.lora=null``,
    ``sampling.guidance_scale=4.5``, ``algorithm.scheme=flow_grpo``. Raises UserError for a
    missing or invalid file, an unknown key (with the closest valid key), a value of the wrong
    type or out of range, and for a reward factory path ('module:attr') that comes from the
    file when its module is not in ``allow_imports`` (a file is not trusted to run code; an
    override is: see :mod:`tempflow.config.trust`).
    """
    from tempflow.config.trust import check_file_imports

    cls = _train_config()
    data: dict = {}
    if path is not None:
        data = read_yaml(path)
        try:
            _check_keys(data, cls)
        except UserError as err:
            raise UserError(f"config file {path}: {err}") from None
    typed = []
    for item in overrides:
        apply_override(data, item, cls)
        typed.append(parse_override(item)[1])
    if path is not None:
        check_file_imports(data, f"config file {path}", allow_imports, typed)
    return config_from_dict(data)


def config_to_dict(cfg: Any) -> dict:
    """The nested dict of a config (plain lists, dicts, numbers, strings; YAML-ready)."""
    return dataclasses.asdict(cfg)


def dump_config(cfg: Any, path: str | os.PathLike) -> Path:
    """Write ``cfg`` as YAML (parent folders created); ``load_config(path) == cfg``."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False,
                     default_flow_style=False, width=100, allow_unicode=True)
    p.write_text(f"# tempflow training config (tempflow.config.TrainConfig)\n{text}", encoding="utf-8")
    return p


def diff_configs(a: Any, b: Any) -> list[str]:
    """Dotted keys whose values differ between two configs (TrainConfig or full nested dicts),
    in schema order: e.g. ``["algorithm.beta", "run.out"]``. A section that is null on one
    side (``model.lora``) is reported once, by its own key."""
    out: list[str] = []

    def walk(x: Any, y: Any, key: str) -> None:
        if isinstance(x, Mapping) and isinstance(y, Mapping):
            for k in list(x) + [k for k in y if k not in x]:
                walk(x.get(k, _MISSING), y.get(k, _MISSING), f"{key}{k}.")
        elif x != y or (type(x) is bool) != (type(y) is bool):
            out.append(key[:-1])

    walk(a if isinstance(a, Mapping) else config_to_dict(a),
         b if isinstance(b, Mapping) else config_to_dict(b), "")
    return out


_MISSING = object()
