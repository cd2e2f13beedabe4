"""A restricted unpickler for CIFAR's official "python version" files.

Those files are pickles, and unpickling runs whatever a file names. ``restricted_load``
builds only dicts, lists, tuples, bytes, str, numbers and numpy arrays
(``ALLOWED_GLOBALS``, handed out as immutable wrappers, never the real objects); any
failure is a ``DatasetError`` whose message names the file. ``trainer/data.py`` then
checks what was built (keys, shapes, labels). samsweep/core/admission.py parses the same
files on the API without executing anything (``pickletools.genops``).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np

try:  # numpy 2 moved numpy.core to numpy._core
    from numpy._core.multiarray import _reconstruct as _numpy_reconstruct
except ImportError:  # pragma: no cover - numpy 1
    from numpy.core.multiarray import (  # type: ignore[no-redef]  # numpy 1's path to it
        _reconstruct as _numpy_reconstruct,
    )


class DatasetError(ValueError):
    """A dataset file that is not what its format promises; the message names the file."""


def _refuse_call(*args: object) -> None:
    raise pickle.UnpicklingError("numpy.ndarray may only be named as _reconstruct's subtype")


class _Allowed:
    """A callable the restricted unpickler hands out. Immutable: a BUILD opcode aimed at
    it cannot patch it for later loads (no __dict__, setattr refused)."""

    __slots__ = ("_name", "_call")
    _name: str
    _call: Callable[..., object]

    def __init__(self, name: str, call: Callable[..., object]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_call", call)

    def __setattr__(self, key: str, value: object) -> None:
        raise pickle.UnpicklingError(f"cannot set attributes of {self._name}")

    def __call__(self, *args: object) -> object:
        return self._call(*args)

    def __repr__(self) -> str:
        return self._name


# Stands for numpy.ndarray: passed to _reconstruct, but calling it is refused.
_NDARRAY = _Allowed("numpy.ndarray", _refuse_call)


def _reconstruct(subtype: object, shape: object, dtype: object) -> np.ndarray:
    # What ndarray.__reduce__ writes: an empty array that BUILD then fills from bytes in
    # the file (so every row of data is in the file: see samsweep.core.admission's size bound).
    if subtype is not _NDARRAY or shape != (0,):
        raise pickle.UnpicklingError("_reconstruct is admitted for an empty numpy.ndarray only")
    return cast(np.ndarray, _numpy_reconstruct(np.ndarray, (0,), dtype))  # stub: -> object


def _frombuffer(buf: object, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    # Protocol 5's in-band buffers (Python 3.14's default protocol). dtype and shape are
    # the file's, unchecked here: numpy refuses (TypeError, ValueError) what is not one.
    if not isinstance(buf, bytes | bytearray) or order not in ("C", "F"):
        raise pickle.UnpicklingError("_frombuffer is admitted for in-file bytes only")
    return np.frombuffer(buf, dtype=np.dtype(dtype)).reshape(shape, order=order)


def _latin1(text: object, encoding: object) -> bytes:
    # How Python 3 writes bytes at protocol 2: _codecs.encode(str, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is admitted for latin1 text only")
    return text.encode("latin-1")


# Every global the official files (Python 2, protocol 2) and numpy's own pickles of
# uint8 / int arrays name (protocols 2 to 5, numpy 1 and 2 module names); nothing
# else. samsweep/core/admission.py parses files without this list: it executes nothing.
ALLOWED_GLOBALS: dict[tuple[str, str], object] = {
    ("numpy.core.multiarray", "_reconstruct"): _Allowed("_reconstruct", _reconstruct),
    ("numpy._core.multiarray", "_reconstruct"): _Allowed("_reconstruct", _reconstruct),
    ("numpy.core.numeric", "_frombuffer"): _Allowed("_frombuffer", _frombuffer),
    ("numpy._core.numeric", "_frombuffer"): _Allowed("_frombuffer", _frombuffer),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Allowed("numpy.dtype", np.dtype),
    ("_codecs", "encode"): _Allowed("_codecs.encode", _latin1),
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, bytes, str, numbers and numpy arrays; nothing else.

    Every class or function a pickle names goes through find_class (GLOBAL,
    STACK_GLOBAL, INST, OBJ, NEWOBJ, the extension registry): only ALLOWED_GLOBALS
    pass, and as the wrappers above, not the real objects. Out-of-band buffers and
    persistent ids are refused by pickle itself (none are supplied).
    """

    def find_class(self, module: str, name: str) -> object:
        allowed = ALLOWED_GLOBALS.get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: a CIFAR batch holds only dicts, lists, "
                f"bytes, str, ints and numpy arrays"
            )
        return allowed


def restricted_load(file: Path) -> object:
    """Unpickle ``file`` admitting only the official format's types; DatasetError else."""
    try:
        with open(file, "rb") as f:
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except OSError as e:
        raise DatasetError(f"{file}: cannot be read ({e.strerror or e})") from e
    except Exception as e:  # hostile input: whatever unpickling raises names the file
        raise DatasetError(
            f"{file}: not a CIFAR python-format batch ({type(e).__name__}: {e})"
        ) from e
