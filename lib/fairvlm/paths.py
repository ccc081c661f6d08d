"""Where things go: results, figures and the model/testbed cache.

All three can be moved with environment variables, so that cells copied into another
project write somewhere sensible:

- ``FAIRVLM_RESULTS`` (default ``./results``)
- ``FAIRVLM_FIGURES`` (default ``./figures``)
- ``FAIRVLM_CACHE``   (default ``~/.cache/fairvlm``): de-quantized SmolLM2, testbed models
"""

from __future__ import annotations

import os
from pathlib import Path


def results_dir() -> Path:
    return Path(os.environ.get("FAIRVLM_RESULTS", "results"))


def figures_dir() -> Path:
    return Path(os.environ.get("FAIRVLM_FIGURES", "figures"))


def cache_dir() -> Path:
    env = os.environ.get("FAIRVLM_CACHE")
    path = Path(env) if env else Path.home() / ".cache" / "fairvlm"
    path.mkdir(parents=True, exist_ok=True)
    return path


def repo_root() -> Path | None:
    """The book's repository root if this package is an editable install inside it."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "_config.yml").is_file() and (parent / "notebooks").is_dir():
            return parent
    return None


def display_path(path) -> str:
    """``path`` as an executed chapter prints it, never as an absolute path of the machine
    that ran it: relative to the repository root (or the working folder) when inside it,
    else relative to ``$FAIRVLM_RESULTS`` / ``$FAIRVLM_FIGURES`` / ``$FAIRVLM_CACHE`` (named
    so), else just the file name."""
    if not isinstance(path, (str, os.PathLike)):
        from fairvlm.errors import ParameterError

        raise ParameterError(f"path={path!r} is not valid: it must be a path (a string or pathlib.Path)")
    p = Path(path).resolve()
    for base in (repo_root(), Path.cwd()):
        if base is not None:
            try:
                return p.relative_to(Path(base).resolve()).as_posix()
            except ValueError:
                pass
    for var, base in (("FAIRVLM_RESULTS", results_dir()), ("FAIRVLM_FIGURES", figures_dir()),
                      ("FAIRVLM_CACHE", Path(os.environ.get("FAIRVLM_CACHE", Path.home() / ".cache" / "fairvlm")))):
        try:
            return f"${var}/" + p.relative_to(Path(base).resolve()).as_posix()
        except ValueError:
            pass
    return p.name
