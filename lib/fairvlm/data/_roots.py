"""Where a dataset lives: one resolution order for every loader.

A dataset folder is looked for, in order, at

1. the ``root`` argument of the loader (used as given, never second-guessed);
2. the dataset's environment variable (e.g. ``FAIRVLM_PAIRS``);
3. ``data/<name>`` under the current directory, then under the book's checkout;
4. ``../shared/data/<name>`` beside the current directory, then beside the checkout
   (the read-only copy used by the project's tests and CI).

An explicit choice (1 or 2) that does not exist is an error, not a reason to fall back
to another copy: silently reading a different dataset than the one asked for is worse
than stopping.
"""

from __future__ import annotations

import os
from pathlib import Path

from fairvlm import validate
from fairvlm.errors import DataError
from fairvlm.paths import repo_root


def _bases() -> list[Path]:
    bases = [Path.cwd()]
    root = repo_root()
    if root is not None and root.resolve() != Path.cwd().resolve():
        bases.append(root)
    return bases


def candidates(name: str) -> list[Path]:
    """The default places (3 and 4 above) for ``data/<name>``, in search order."""
    bases = _bases()
    return [b / "data" / name for b in bases] + [
        b.parent / "shared" / "data" / name for b in bases
    ]


def resolve(
    name: str,
    root: str | os.PathLike | None,
    env: str,
    *,
    what: str,
    how_to_get: str,
    required: bool = True,
    is_file: bool = False,
    arg: str = "root",
) -> Path | None:
    """Resolve the folder (or file, with ``is_file``) of dataset ``name``.

    Returns the path, or ``None`` when nothing is found and ``required`` is false.
    Raises :class:`DataError` naming every place looked at and ``how_to_get`` otherwise.
    ``arg`` names the loader's parameter that gave ``root``, for messages.
    """
    exists = Path.is_file if is_file else Path.is_dir
    required = validate.flag("required", required)
    if root is not None:
        path = validate.path(arg, root)
        if exists(path):
            return path
        raise DataError(f"{what} not found at {arg}={str(path)!r} (the path given). {how_to_get}")
    if os.environ.get(env):
        path = Path(os.environ[env]).expanduser()
        if exists(path):
            return path
        raise DataError(f"{what} not found at {path} (from ${env}). {how_to_get}")
    looked = candidates(name)
    for path in looked:
        if exists(path):
            return path
    if not required:
        return None
    places = ", ".join(str(p) for p in looked)
    raise DataError(f"{what} not found (set ${env} or looked in: {places}). {how_to_get}")
