"""Checks for the arguments of every public function and command: one clear error each.

Each check takes the parameter's name and its value, returns the value in the form the
caller wants (an ``int``, a ``float``, a ``list`` of ``str``, a ``Path``, a tensor) and
otherwise raises :class:`~fairvlm.errors.ParameterError` (or, for a file, a
:class:`~fairvlm.errors.DataError`) whose message starts with ``name=value`` and says what
the parameter accepts. The cases a plain ``isinstance`` or comparison lets through are the
point of the module:

- ``True`` is an ``int`` in Python; a flag where a count belongs is refused;
- ``nan < low`` and ``nan > high`` are both false, so NaN passes every range written as two
  comparisons; infinities pass one-sided ones;
- a ``str`` is a sequence of one-letter strings, so ``words="man"`` would be read letter by
  letter; every "list of" check refuses a lone string;
- a label of ``None`` or NaN vanishes from a ``groupby``.

:func:`staged_folder` writes a folder next to its target and renames it into place, and
:func:`verified` checks a folder against the ``SHA256SUMS`` written with it, naming the file
that changed. This module sits in the base layer: it imports only :mod:`fairvlm.errors` and
:mod:`fairvlm.checksums` (torch and numpy lazily, where a tensor or array is checked).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable

from fairvlm import checksums
from fairvlm.errors import DataError, ParameterError, UnknownNameError

__all__ = [
    "show", "integer", "number", "learning_rate", "flag", "text", "strings", "sequence", "integers",
    "numbers_list", "choice", "labels", "tensor", "array", "loaded", "path", "existing_file", "existing_dir",
    "staged_folder", "replaceable", "verified", "frame", "mapping", "function",
]


def show(value: Any, limit: int = 60) -> str:
    """A short description of ``value`` for a message (arrays by shape, long text cut)."""
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, (str, bytes)):
        return f"<{type(value).__name__} of shape {tuple(shape)}>"
    r = repr(value)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def _fail(name: str, value: Any, wants: str) -> ParameterError:
    return ParameterError(f"{name}={show(value)} is not valid: {wants}")


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not _is_bool(value)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ in ("bool_", "bool")


def _range_text(low, high, low_open, high_open) -> str:
    lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low}"
    hi = "inf)" if high is None else f"{high}" + (")" if high_open else "]")
    return f"{lo}, {hi}"


def _in_range(v, low, high, low_open, high_open) -> bool:
    if low is not None and (v <= low if low_open else v < low):
        return False
    if high is not None and (v >= high if high_open else v > high):
        return False
    return True


def integer(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """An ``int`` (numpy integers too; not ``bool``, not ``3.0``) with ``low <= value <= high``."""
    if not isinstance(value, numbers.Integral) or _is_bool(value):
        raise _fail(name, value, f"it must be an integer in {_range_text(low, high, False, False)}")
    v = int(value)
    if not _in_range(v, low, high, False, False):
        raise _fail(name, value, f"it must be an integer in {_range_text(low, high, False, False)}")
    return v


def number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number (not ``bool``, not a string, not NaN or inf) in the range; a float."""
    rng = _range_text(low, high, low_open, high_open)
    if hasattr(value, "ndim") and getattr(value, "ndim") == 0 and hasattr(value, "item"):
        value = value.item()  # a 0-d tensor or array
    if not _is_real(value):
        raise _fail(name, value, f"it must be a number in {rng}")
    v = float(value)
    if not math.isfinite(v):
        raise _fail(name, value, f"it must be a finite number in {rng}, not NaN or infinity")
    if not _in_range(v, low, high, low_open, high_open):
        raise _fail(name, value, f"it must lie in {rng}")
    return v


def learning_rate(name: str, value: Any, *, high: float = 10.0) -> float:
    """A learning rate: finite, > 0 and at most ``high`` (larger ones train to NaN)."""
    return number(name, value, low=0.0, high=high, low_open=True)


def flag(name: str, value: Any) -> bool:
    """``True`` or ``False`` (not 0/1, not the string ``"false"``, which is truthy)."""
    if not _is_bool(value):
        raise _fail(name, value, "it must be True or False")
    return bool(value)


def text(name: str, value: Any, *, empty: bool = False) -> str:
    """A ``str`` (non-blank unless ``empty``)."""
    if not isinstance(value, str):
        raise _fail(name, value, "it must be a string")
    if not empty and not value.strip():
        raise _fail(name, value, "it must be a non-empty string")
    return value


def sequence(name: str, value: Any, *, empty: bool = False, length: int | None = None) -> list:
    """A list, tuple or other iterable of items, as a ``list``; a lone ``str``/``bytes``, a
    mapping or ``None`` is refused (a string would be read letter by letter)."""
    if isinstance(value, (str, bytes)):
        raise _fail(name, value, "it must be a list, not a single string (wrap it: [value])")
    if value is None or isinstance(value, dict) or not isinstance(value, Iterable):
        raise _fail(name, value, "it must be a list")
    if getattr(value, "ndim", 1) == 0:
        raise _fail(name, value, "it must be a list, not a scalar")
    out = list(value)
    if not empty and not out:
        raise _fail(name, value, "it must be a non-empty list")
    if length is not None and len(out) != length:
        raise _fail(name, value, f"it must have {length} entries, one per row; it has {len(out)}")
    return out


def strings(name: str, value: Any, *, empty: bool = False, blank: bool = False,
            length: int | None = None) -> list[str]:
    """A list of ``str`` (not one ``str``); blank strings refused unless ``blank``."""
    out = sequence(name, value, empty=empty, length=length)
    for i, s in enumerate(out):
        if not isinstance(s, str):
            raise ParameterError(f"{name}[{i}]={show(s)} is not valid: {name} must be a list of strings")
        if not blank and not s.strip():
            raise ParameterError(f"{name}[{i}]={s!r} is not valid: {name} must not hold blank strings")
    return out


def integers(name: str, value: Any, *, empty: bool = False, low: int | None = None,
             high: int | None = None, unique: bool = False) -> list[int]:
    """A list of integers in range (``bool`` refused), optionally without repeats."""
    out = [integer(f"{name}[{i}]", v, low=low, high=high)
           for i, v in enumerate(sequence(name, value, empty=empty))]
    if unique and len(set(out)) != len(out):
        raise _fail(name, value, "it must not repeat a value")
    return out


def numbers_list(name: str, value: Any, *, empty: bool = False, low=None, high=None) -> list[float]:
    """A list of finite numbers in range."""
    return [number(f"{name}[{i}]", v, low=low, high=high)
            for i, v in enumerate(sequence(name, value, empty=empty))]


def choice(name: str, value: Any, choices: Iterable) -> Any:
    """One of ``choices`` (an :class:`UnknownNameError` listing them otherwise)."""
    choices = tuple(choices)
    try:
        ok = value in choices
    except TypeError:  # an unhashable value against a set-like
        ok = False
    if not ok or _is_bool(value) and not any(_is_bool(c) for c in choices):
        listed = ", ".join(map(repr, choices))
        raise UnknownNameError(f"{name}={show(value)} is not valid: choose one of {listed}")
    return value


def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(v != v)  # NaN, pandas.NA raises
    except (TypeError, ValueError):
        return True


def labels(name: str, value: Any, *, length: int | None = None, empty: bool = False) -> list:
    """Group labels, one per row: no ``None``/NaN (a ``groupby`` would drop those rows)."""
    out = sequence(name, value, empty=empty, length=length)
    bad = [i for i, v in enumerate(out) if _missing(v)]
    if bad:
        raise ParameterError(f"{name} holds {len(bad)} missing labels (None or NaN; first at position "
                             f"{bad[0]}): label every row, or drop the unlabelled rows first")
    return out


def tensor(name: str, value: Any, *, ndim: int | tuple | None = None, width: int | None = None,
           nonempty: bool = True, finite: bool = True, dtype=None):
    """A ``torch.Tensor`` (numpy arrays and nested lists of numbers are converted) with
    ``ndim`` axes, last axis ``width``, at least one row and only finite values."""
    import numpy as np
    import torch

    if isinstance(value, (str, bytes, dict)) or value is None or _is_bool(value):
        raise _fail(name, value, "it must be a tensor")
    if not isinstance(value, torch.Tensor):
        try:
            arr = np.asarray(value)
            if arr.dtype == object or arr.dtype.kind in "USb":
                raise ValueError
            value = torch.as_tensor(arr)
        except (TypeError, ValueError):
            raise _fail(name, value, "it must be a tensor of numbers") from None
    if value.is_complex() or value.dtype == torch.bool:
        raise _fail(name, value, "it must be a real-valued tensor")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if dims is not None and value.ndim not in dims:
        want = " or ".join(str(d) for d in dims)
        raise _fail(name, value, f"it must have {want} axes")
    if width is not None and (value.ndim == 0 or value.shape[-1] != width):
        raise _fail(name, value, f"its last axis must be {width} wide")
    if nonempty and value.numel() == 0:
        raise _fail(name, value, "it must not be empty")
    if finite and value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise ParameterError(f"{name} holds NaN or inf ({show(value)}); only finite values are accepted")
    return value if dtype is None else value.to(dtype)


def array(name: str, value: Any, *, ndim: int | None = None, finite: bool = True, nonempty: bool = True):
    """A numeric ``numpy`` array (``float``) of ``ndim`` axes with only finite values."""
    import numpy as np

    if isinstance(value, (str, bytes, dict)) or value is None or _is_bool(value):
        raise _fail(name, value, "it must be an array of numbers")
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
        if arr.dtype == object or arr.dtype.kind in "USbc":
            raise ValueError
        arr = arr.astype(float)
    except (TypeError, ValueError):
        raise _fail(name, value, "it must be an array of numbers") from None
    if ndim is not None and arr.ndim != ndim:
        raise _fail(name, value, f"it must have {ndim} axes (got {arr.ndim})")
    if nonempty and arr.size == 0:
        raise _fail(name, value, "it must not be empty")
    if finite and not np.isfinite(arr).all():
        raise ParameterError(f"{name} holds NaN or inf ({show(value)}); only finite values are accepted")
    return arr


def frame(name: str, value: Any, *, columns: Iterable[str] = (), empty: bool = True):
    """A ``pandas.DataFrame`` holding ``columns`` (rows required unless ``empty``)."""
    import pandas as pd

    if not isinstance(value, pd.DataFrame):
        raise _fail(name, value, "it must be a pandas DataFrame")
    need = [c for c in columns if c not in value.columns]
    if need:
        raise ParameterError(f"{name} lacks the columns {need} (it has {list(map(str, value.columns))[:12]})")
    if not empty and value.empty:
        raise _fail(name, value, "it must hold at least one row")
    return value


def mapping(name: str, value: Any, *, empty: bool = False) -> dict:
    """A ``dict`` or other mapping (not a string, not a list of keys), non-empty unless ``empty``."""
    from collections.abc import Mapping

    if not isinstance(value, Mapping):
        raise _fail(name, value, "it must be a dict")
    if not empty and not value:
        raise _fail(name, value, "it must be a non-empty dict")
    return value


def function(name: str, value: Any) -> Any:
    """A callable (a function, not its name as a string)."""
    if not callable(value) or isinstance(value, (str, bytes, type)):
        raise _fail(name, value, "it must be a function (a callable), not its name")
    return value


def loaded(name: str, value: Any, *, kinds: Iterable[str] | None = None):
    """A model from :func:`fairvlm.models.load` (checked by its attributes, so this module need
    not import the model layer), optionally of one of ``kinds`` (``"vlm"``, ``"causal-lm"``,
    ``"dual-encoder"``, ...). A model's name given as a string is refused with the call to make."""
    if isinstance(value, str):
        raise _fail(name, value, f"it must be a loaded model, not its name: pass fairvlm.models.load({value!r})")
    if not all(hasattr(value, a) for a in ("model", "tokenizer", "kind", "name")):
        raise _fail(name, value, "it must be a model from fairvlm.models.load(name)")
    kinds = tuple(kinds or ())
    if kinds and value.kind not in kinds:
        raise ParameterError(f"{name}={value.name!r} is a {value.kind} model; this needs a {' or a '.join(kinds)} model")
    return value


def path(name: str, value: Any) -> Path:
    """A ``str`` or ``os.PathLike`` naming a path (not empty, not a number)."""
    if not isinstance(value, (str, os.PathLike)) or not str(value).strip():
        raise _fail(name, value, "it must be a path (a string or pathlib.Path)")
    return Path(value).expanduser()


def existing_file(name: str, value: Any) -> Path:
    """A path to an existing file (not a folder)."""
    p = path(name, value)
    if not p.is_file():
        what = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise DataError(f"{name}={str(p)!r} {what}")
    return p


def existing_dir(name: str, value: Any) -> Path:
    """A path to an existing folder."""
    p = path(name, value)
    if not p.is_dir():
        what = "is a file, not a folder" if p.exists() else "does not exist"
        raise DataError(f"{name}={str(p)!r} {what}")
    return p


@contextlib.contextmanager
def staged_folder(name: str, target: Any, *, overwrite: bool = False):
    """Write a folder next to ``target`` and move it into place only when the block succeeds.

    Yields the staging folder; on success a ``SHA256SUMS`` of what was written is added and the
    folder renamed to ``target``. Nothing that fairvlm did not write is ever removed: an empty
    folder at ``target`` is replaced; a non-empty one only with ``overwrite=True`` *and* when
    every file in it is one a previous call wrote (it is listed in its ``SHA256SUMS``),
    otherwise the call is refused naming a file that would be lost. On an exception the staging
    folder is removed and ``target`` is as it was.
    """
    target = path(name, target)
    overwrite = flag("overwrite", overwrite)
    if target.exists() and not target.is_dir():
        raise ParameterError(f"{name}={str(target)!r} is a file; give a folder path")
    replaceable(name, target, overwrite=overwrite)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield staging
        checksums.write_sums(staging)
        replaceable(name, target, overwrite=overwrite)  # again: it may have changed meanwhile
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old / "x")
        try:
            os.replace(staging, target)
        except BaseException:
            if old is not None:  # put the previous save back
                os.replace(old / "x", target)
            raise
        finally:
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replaceable(name: str, target: Any, *, overwrite: bool = False) -> None:
    """Raise unless :func:`staged_folder` may put a new folder at ``target``: it is absent or
    empty, or ``overwrite`` and it holds only what fairvlm saved there (its ``SHA256SUMS``)."""
    target = path(name, target)
    if not target.is_dir() or not any(target.iterdir()):
        return
    if not overwrite:
        raise ParameterError(f"{name}={str(target)!r} is a folder that is not empty; give a new folder, "
                             "or pass overwrite=True to replace what fairvlm saved there before")
    foreign = [p for p in checksums.problems(target) if "not part of" in p or "missing (" in p]
    if foreign:
        raise ParameterError(f"{name}={str(target)!r} holds files fairvlm did not save there ({foreign[0]}); "
                             "it is not replaced even with overwrite=True: give a new folder")


def verified(name: str, folder: Any, *, required: Iterable[str] = ()) -> Path:
    """``folder`` exists, holds ``required`` files and matches its ``SHA256SUMS``; else a
    :class:`DataError` naming the first file that is missing, altered or truncated."""
    folder = existing_dir(name, folder)
    for r in required:
        if not (folder / r).is_file():
            raise DataError(f"{name}={str(folder)!r} holds no {r}; save one there first (or give the right folder)")
    bad = checksums.problems(folder)
    if bad:
        raise DataError(f"{name}={str(folder)!r} fails its sha256 manifest: {bad[0]}"
                        + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                        + "; the files were changed or damaged after saving: save or train them again")
    return folder
