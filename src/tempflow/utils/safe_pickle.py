"""A restricted unpickler for answers of pickle-speaking servers (docs/security.md).

:func:`safe_loads` builds plain data only (dict, list, tuple, set, frozenset, str, bytes, int,
float, bool, None) plus numpy numbers and numeric arrays, rebuilt by this module's own code
from their raw bytes (numpy is never imported or called): any other object a pickle names is
refused (:class:`ForbiddenObject`) before it is created.
"""

from __future__ import annotations

import io
import math
import pickle
import struct
from typing import Any

class ForbiddenObject(Exception):
    """A pickle asked for an object that is not plain data; the message names it."""


_NP_CODES = {"f2": "e", "f4": "f", "f8": "d", "i1": "b", "i2": "h", "i4": "i", "i8": "q",
             "u1": "B", "u2": "H", "u4": "I", "u8": "Q", "b1": "?"}
_MAX_DIMS = 32


def _short(x: Any) -> str:
    text = repr(x) if isinstance(x, (str, bytes, int, float, bool, type(None))) else type(x).__name__
    return text if len(text) <= 40 else text[:37] + "..."


class _DType:
    """Stand-in for numpy.dtype(spec, align, copy): a plain number type as a struct code."""

    def __init__(self, spec: Any = None, align: Any = False, copy: Any = True):
        if not isinstance(spec, str) or spec not in _NP_CODES:
            raise ForbiddenObject(f"numpy.dtype({_short(spec)}) (only bool, int and float numbers)")
        self.code, self.order = _NP_CODES[spec], "<"

    def __setstate__(self, state: Any) -> None:  # BUILD: (version, byte order, ...)
        if not (isinstance(state, tuple) and len(state) >= 2 and state[1] in ("<", ">", "|", "=")):
            raise ValueError("bad numpy dtype state")
        self.order = "<" if state[1] == "|" else state[1]

    def unpack(self, raw: Any, count: int) -> list:
        if not isinstance(raw, (bytes, bytearray)):
            raise ForbiddenObject("a numpy array of objects")
        fmt = f"{self.order}{count}{self.code}"
        if len(raw) != struct.calcsize(fmt):
            raise ValueError("numpy data of the wrong size")
        return list(struct.unpack(fmt, raw))


def _dtype(*args: Any) -> _DType:
    return _DType(*args)


def _shape(shape: Any) -> tuple[int, ...]:
    if not (isinstance(shape, tuple) and len(shape) <= _MAX_DIMS
            and all(type(n) is int and n >= 0 for n in shape)):
        raise ValueError("bad numpy shape")
    return shape


def _nest(values: list, shape: tuple[int, ...]) -> list:
    if len(shape) <= 1:
        return values
    step = len(values) // shape[0] if shape[0] else 0
    return [_nest(values[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


class _Array(list):
    """Stand-in for a numpy array: a (nested) list of its numbers, filled by BUILD."""

    def fill(self, shape: Any, dtype: Any, fortran: Any, raw: Any) -> "_Array":
        shape = _shape(shape)
        if not isinstance(dtype, _DType):
            raise ValueError("bad numpy dtype")
        if fortran and len(shape) > 1:
            raise ValueError("Fortran-ordered numpy arrays are not read")
        values = dtype.unpack(raw, math.prod(shape))
        self[:] = _nest(values, shape) if shape else values
        return self

    def __setstate__(self, state: Any) -> None:  # BUILD: ([version,] shape, dtype, fortran, raw)
        if isinstance(state, tuple) and len(state) == 5:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise ValueError("bad numpy array state")
        self.fill(*state)


_NDARRAY = object()  # numpy.ndarray: only ever the first argument of _reconstruct


def _scalar(dtype: Any, raw: Any = None) -> Any:
    if not isinstance(dtype, _DType):
        raise ValueError("bad numpy scalar")
    return dtype.unpack(raw, 1)[0]


def _reconstruct(cls: Any, shape: Any = None, typecode: Any = None) -> _Array:
    if cls is not _NDARRAY:
        raise ValueError("bad numpy array")
    return _Array()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> _Array:
    return _Array().fill(shape, dtype, order == "F", bytes(buf) if isinstance(buf, bytearray) else buf)


def _codecs_encode(text: Any, encoding: Any = None) -> bytes:  # how protocols 0-2 write bytes
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise ForbiddenObject("_codecs.encode of something other than latin-1 text")
    return text.encode("latin-1")


def _empty_bytes() -> bytes:  # how protocols 0-2 write b""
    return b""


def _set(items: Any = ()) -> set:  # how protocols 0-3 write sets
    if not isinstance(items, (list, tuple)):
        raise ValueError("bad set")
    return set(items)


def _frozenset(items: Any = ()) -> frozenset:
    return frozenset(_set(items))


_ADMITTED: dict[tuple[str, str], Any] = {("numpy", "dtype"): _dtype, ("numpy", "ndarray"): _NDARRAY,
                                         ("_codecs", "encode"): _codecs_encode}
for _builtins in ("builtins", "__builtin__"):
    _ADMITTED.update({(_builtins, "set"): _set, (_builtins, "frozenset"): _frozenset,
                      (_builtins, "bytes"): _empty_bytes})
for _core in ("numpy.core", "numpy._core"):
    _ADMITTED.update({(f"{_core}.multiarray", "scalar"): _scalar,
                      (f"{_core}.multiarray", "_reconstruct"): _reconstruct,
                      (f"{_core}.numeric", "_frombuffer"): _frombuffer})


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles plain data only: every global a pickle names is refused unless it is one of
    the stand-ins above (our own functions, never the named object)."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ADMITTED[(module, name)]
        except (KeyError, TypeError):
            raise ForbiddenObject(f"{module}.{name}"[:120]) from None

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenObject("a persistent id")


class MalformedPickle(Exception):
    """Bytes that are not a readable pickle of plain data."""


def safe_loads(data: bytes) -> Any:
    """Unpickle ``data`` building plain data only; ForbiddenObject names the first other
    object asked for, MalformedPickle says why the bytes are no pickle."""
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except ForbiddenObject:
        raise
    except RecursionError:
        raise MalformedPickle("nested too deeply") from None
    except Exception as e:  # UnpicklingError, EOFError, ValueError, TypeError, struct.error, ...
        raise MalformedPickle(f"{type(e).__name__}: {str(e)[:100]}") from None
