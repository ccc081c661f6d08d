"""Headline numbers and per-item tables, written with what produced them.

Every chapter ends with one call::

    save_results("07_clip_heads", params=P, headline={...},
                 provenance={"models": ["testbed-clip"], "data": ["testbed (synthetic)"]},
                 tables={"retrieval": df})

which writes ``results/07_clip_heads.json`` (headline numbers, parameters, package
versions, git commit) and ``results/07_clip_heads/<name>.csv`` (tidy tables: one row per
item, model, condition). Writes are atomic: the files appear complete or not at all.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from fairvlm import validate as V
from fairvlm.errors import FairVLMError
from fairvlm.paths import repo_root, results_dir

TRACKED_PACKAGES = (
    "fairvlm", "torch", "transformers", "trl", "peft", "numpy", "pandas", "scikit-learn",
    "scipy", "seaborn", "vaderSentiment", "papermill", "jupyter-book",
)



class SavedResults(type(Path())):
    """The path of a written results JSON (a :class:`pathlib.Path`) that shows nothing when
    it is a cell's last value: ``save_results(...)`` ending a chapter must not print
    ``PosixPath('results/...')``."""

    def _ipython_display_(self):  # IPython: display nothing
        return None

def package_versions(names=TRACKED_PACKAGES) -> dict:
    out = {"python": platform.python_version()}
    for name in V.strings("names", names, empty=True):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def git_commit() -> str | None:
    """The commit of the book's checkout (with ``-dirty`` if it has local changes)."""
    root = repo_root() or Path.cwd()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return sha + ("-dirty" if dirty else "")


def _jsonable(value):
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if hasattr(value, "as_dict"):
        return _jsonable(value.as_dict())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    raise FairVLMError(f"cannot write {type(value).__name__} to a results file: {value!r}")


def save_results(
    slug: str,
    *,
    params,
    headline: Mapping,
    provenance: Mapping,
    tables: Mapping[str, pd.DataFrame] | None = None,
    out_dir: Path | None = None,
) -> Path:
    """Write ``<results>/<slug>.json`` and ``<results>/<slug>/<table>.csv`` atomically.

    ``provenance`` must say which models and data produced the numbers
    (keys ``models`` and ``data``), so no testbed number is mistaken for a paper's.
    Returns the path of the JSON file.
    """
    if not isinstance(slug, str) or not slug.strip() or "/" in slug or "\\" in slug or slug.startswith("."):
        raise FairVLMError(f"slug={slug!r} must be a chapter name such as '07_clip_heads' "
                           "(no path separators, not hidden)")
    V.mapping("provenance", provenance)
    missing = {"models", "data"} - set(provenance)
    if missing:
        raise FairVLMError(f"provenance for {slug!r} must name {sorted(missing)}")
    if not hasattr(params, "as_dict"):
        V.mapping("params", params, empty=True)
    V.mapping("headline", headline, empty=True)
    if out_dir is not None:
        out_dir = V.path("out_dir", out_dir)
        if out_dir.exists() and not out_dir.is_dir():
            raise FairVLMError(f"out_dir={str(out_dir)!r} is a file; give a folder")
    if tables is not None:
        V.mapping("tables", tables, empty=True)
    if tables:
        for name, df in tables.items():
            if not isinstance(df, pd.DataFrame):
                raise FairVLMError(f"tables: table {name!r} must be a pandas DataFrame, not {type(df).__name__}")
            if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
                raise FairVLMError(f"tables: the table name {name!r} must be a plain file name")
    provenance = dict(provenance)
    # the testbed builds this process loaded (shipped artifact or trained here, sha256, date);
    # looked up, not imported: this module sits below the testbed
    store = sys.modules.get("fairvlm.testbed.store")
    if store is not None and store.loaded_builds() and "testbed_builds" not in provenance:
        provenance["testbed_builds"] = store.loaded_builds()
    record = {
        "chapter": slug,
        "params": _jsonable(params),
        "headline": _jsonable(headline),
        "provenance": _jsonable(provenance),
        "tables": sorted(tables) if tables else [],
        "packages": package_versions(),
        "git_commit": git_commit(),
    }
    text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
    out_dir = Path(out_dir) if out_dir is not None else results_dir()
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{slug}.", dir=out_dir))
    except OSError as exc:
        for p in created:  # innermost first: leave no empty folder behind
            try:
                p.rmdir()
            except OSError:
                break
        raise FairVLMError(
            f"cannot write results to {out_dir}: {exc.strerror or exc}; set $FAIRVLM_RESULTS "
            "(or out_dir=) to a writable folder") from None
    try:
        (staging / f"{slug}.json").write_text(text)
        if tables:
            (staging / slug).mkdir()
            for name, df in tables.items():
                if not isinstance(df, pd.DataFrame):
                    raise FairVLMError(f"table {name!r} must be a pandas DataFrame")
                df.to_csv(staging / slug / f"{name}.csv", index=False, float_format="%.6g")
        final_json = out_dir / f"{slug}.json"
        final_dir = out_dir / slug
        if final_dir.exists():
            shutil.rmtree(final_dir)
        if tables:
            os.replace(staging / slug, final_dir)
        os.replace(staging / f"{slug}.json", final_json)
    except OSError as exc:
        raise FairVLMError(f"cannot write results to {out_dir}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SavedResults(out_dir / f"{slug}.json")
