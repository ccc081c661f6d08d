"""Checked caches: a ``SHA256SUMS`` file written with a cached folder, verified on reading.

A cache is only as good as the check on it: a folder whose ``config.json`` was edited, whose
weights were cut short by a full disk, or whose arrays were deleted must not be served as
fresh. Every cache the library writes (the de-quantized SmolLM2, the MCQ/lens collections)
therefore gets a ``SHA256SUMS`` (``sha256sum`` format: ``sha256sum -c SHA256SUMS`` works
inside the folder) when it is written, and :func:`verify` reads it back before the folder
is used. The folders are small (at most a few hundred MB), so hashing them costs well under
a second on a laptop next to loading them.

This module sits at the bottom of the package (it imports nothing from ``fairvlm`` but the
errors), so any layer can use it.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from fairvlm.errors import DataError

SUMS = "SHA256SUMS"


def _dir(name: str, folder) -> Path:
    if not isinstance(folder, (str, os.PathLike)):
        raise DataError(f"{name}={folder!r} must be a folder path (a string or pathlib.Path)")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{name}={str(folder)!r} " + ("is a file, not a folder" if folder.exists() else "does not exist"))
    return folder


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file's bytes."""
    if not isinstance(path, (str, os.PathLike)) or not Path(path).is_file():
        raise DataError(f"path={path!r} is not a file" + (" (it is a folder)" if isinstance(path, (str, os.PathLike))
                                                          and Path(path).is_dir() else ""))
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_sums(folder: str | os.PathLike) -> Path:
    """Write ``folder/SHA256SUMS`` listing every file below ``folder`` (sorted, relative
    paths); call it last, once everything else is written. Returns the file's path."""
    folder = _dir("folder", folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != SUMS)
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}\n" for p in files]
    out = folder / SUMS
    out.write_text("".join(lines))
    return out


def problems(folder: str | os.PathLike) -> list[str]:
    """What is wrong with ``folder`` against its ``SHA256SUMS``: one line per missing,
    altered or unlisted file (an empty list means the folder is as it was written).
    A folder without the file gives one problem saying so."""
    folder = _dir("folder", folder)
    sums = folder / SUMS
    if not sums.is_file():
        return [f"{SUMS} is missing (the folder was written by an older fairvlm or not "
                "completely)"]
    listed: dict[str, str] = {}
    for line in sums.read_text().splitlines():
        m = re.fullmatch(r"([0-9a-f]{64})  (.+)", line.strip())
        if m is None:
            return [f"{SUMS} has a malformed line {line!r}"]
        listed[m.group(2)] = m.group(1)
    out = []
    for rel, want in listed.items():
        f = folder / rel
        if not f.is_file():
            out.append(f"{rel}: missing")
        elif sha256_file(f) != want:
            out.append(f"{rel}: altered or truncated ({f.stat().st_size} bytes; sha256 differs "
                       "from the one written with the cache)")
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*")
               if p.is_file() and p.name != SUMS}
    out.extend(f"{rel}: not part of the cache as written" for rel in sorted(present - set(listed)))
    return out
