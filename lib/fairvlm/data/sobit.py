"""So-B-IT: the Social Bias Implications Taxonomy (Hamidieh et al., AIES 2024).

A JSON object that maps 10 categories ("appearance", "occupation", ...) to lists of
descriptive words that often carry stereotypes. The CLIP head-intervention paper
(Gomez-Grabowska et al., ECIR 2026) retrieves the top-100 FairFace images for each word
and reports the normalized entropy of their demographic labels per category.

The upstream file spells one category "behavorial"; this module calls it "behavioral"
and accepts the upstream spelling as an alias (:data:`CATEGORY_ALIASES`) wherever a
category name is taken.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from fairvlm.data import _roots
from fairvlm.data.fetch import Remote, fetch_tree
from fairvlm import validate
from fairvlm.errors import DataError, unknown

SOBIT_ENV = "FAIRVLM_SOBIT"
SOBIT_FILE = "So-B-IT_taxonomy.json"
SOBIT_REPO = "ameliagmz/Debiasing_CLIP_Neural_Interventions"
SOBIT_COMMIT = "cc90ab99a1191ddf9e8c5c4ec644158d4d077c2d"
#: The taxonomy is fetched from ``SOBIT_BASE_URL + So-B-IT_taxonomy.json``: it sits at the
#: root of the upstream repository (its file listing shows no other copy).
SOBIT_BASE_URL = f"https://raw.githubusercontent.com/{SOBIT_REPO}/{SOBIT_COMMIT}/"
SOBIT_MANIFEST_NAME = "sobit.sha256"
#: What :func:`fairvlm.data.fetch.fetch_tree` needs to fetch the taxonomy.
SOBIT_REMOTE = Remote(title="So-B-IT taxonomy", manifest_name=SOBIT_MANIFEST_NAME,
                      base_url=SOBIT_BASE_URL, folder="sobit", func="fetch_sobit")
#: upstream spelling -> the name used in this book
CATEGORY_ALIASES = {"behavorial": "behavioral"}

#: Words per category in the pinned file (after normalizing and de-duplicating): the check
#: used with ``verify=True`` when the manifest ``data/sobit.sha256`` is not at hand.
PINNED_COUNTS = {
    "appearance": 25, "behavioral": 78, "education and wealth": 24, "criminal justice": 29,
    "healthcare": 14, "portrayal in media": 24, "political": 25, "religion": 25,
    "occupation": 167, "stereotyping": 30,
}

_HOW_TO_GET = (
    f"Fetch {SOBIT_FILE} with `python -m fairvlm.data fetch sobit` (downloads it from "
    f"https://github.com/{SOBIT_REPO} at commit {SOBIT_COMMIT[:7]} into data/sobit/ and "
    f"checks it), or point ${SOBIT_ENV} at the file or its folder."
)


def normalize_category(name: str) -> str:
    """Lower-case, strip and map an alias (``"behavorial"`` -> ``"behavioral"``)."""
    key = " ".join(validate.text("name", name).strip().lower().split())
    return CATEGORY_ALIASES.get(key, key)


def sobit_path(path: str | os.PathLike | None = None, *, required: bool = True) -> Path | None:
    """The taxonomy file: ``path`` (the file or its folder), ``$FAIRVLM_SOBIT``,
    ``data/sobit/``, ``../shared/data/sobit/``."""
    required = validate.flag("required", required)
    if path is not None:
        validate.path("path", path)
    for source in (path, os.environ.get(SOBIT_ENV)):
        if source:
            p = Path(source).expanduser()
            if p.is_dir():
                p = p / SOBIT_FILE
            if not p.is_file():
                raise DataError(f"So-B-IT taxonomy not found at {p}. {_HOW_TO_GET}")
            return p
    folder = _roots.resolve("sobit", None, SOBIT_ENV, what="the So-B-IT taxonomy",
                            how_to_get=_HOW_TO_GET, required=required)
    if folder is None:
        return None
    if not (folder / SOBIT_FILE).is_file():
        if not required:
            return None
        raise DataError(f"So-B-IT taxonomy not found at {folder / SOBIT_FILE}. {_HOW_TO_GET}")
    return folder / SOBIT_FILE


def fetch_sobit(
    dest: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
    *,
    base_url: str = SOBIT_BASE_URL,
    manifest: str | os.PathLike | None = None,
    overwrite: bool = False,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Put a verified copy of the taxonomy in the folder ``dest`` and return ``dest``.

    The file is checked against the sha256 manifest ``data/sobit.sha256``. Without
    ``source`` it is downloaded from ``base_url + So-B-IT_taxonomy.json`` (GitHub's raw
    file at the pinned commit; a ``file://`` URL works too); with ``source`` (a folder
    holding the file, e.g. a clone of the repository) it is copied. ``dest`` defaults to
    ``data/sobit`` in the book's checkout. Staged, verified and renamed into place as
    :func:`fairvlm.data.fetch_pairs` is: a bad file raises :class:`DataError` naming it and
    leaves nothing at ``dest``; a verified ``dest`` is returned untouched;
    ``overwrite=True`` replaces anything else once the new copy is verified.
    """
    return fetch_tree(SOBIT_REMOTE, dest, source, base_url=base_url, manifest=manifest,
                      overwrite=overwrite, timeout=timeout, progress=progress)


def load_sobit(path: str | os.PathLike | None = None, *, verify: bool = True) -> pd.DataFrame:
    """The taxonomy as a tidy frame: one row per (category, word), columns
    ``category, word``.

    Categories are normalized (:func:`normalize_category`) and kept in file order; words
    are stripped and kept in file order. A word listed in two categories (e.g. "lazy")
    gives two rows; a word repeated within one category is kept once. Raises
    :class:`DataError` for a missing file or one that is not an object of non-empty word
    lists. ``verify=True`` (default) also requires the pinned file: its sha256 equals the
    one in ``data/sobit.sha256`` (without that manifest: the words per category equal
    :data:`PINNED_COUNTS`), so a file with a word removed is not read as the taxonomy;
    ``verify=False`` loads a taxonomy of your own, checking only its format.
    """
    verify = validate.flag("verify", verify)
    p = sobit_path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the So-B-IT taxonomy {p}: {exc}") from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{p}: expected a JSON object mapping categories to word lists")
    rows, seen = [], set()
    for category, words in raw.items():
        name = normalize_category(category)
        if name in seen:
            raise DataError(f"{p}: category {name!r} appears twice (after normalizing "
                            f"{category!r})")
        seen.add(name)
        if (not isinstance(words, list) or not words
                or not all(isinstance(w, str) and w.strip() for w in words)):
            raise DataError(f"{p}: category {category!r} must hold a non-empty list of "
                            "non-empty words")
        kept = dict.fromkeys(w.strip() for w in words)
        rows.extend((name, w) for w in kept)
    df = pd.DataFrame(rows, columns=["category", "word"]).astype("string")
    if verify:
        _verify_pinned(p, df)
    return df


def _verify_pinned(p: Path, df: pd.DataFrame) -> None:
    from fairvlm.data.fetch import manifest_path, read_manifest, sha256_file

    fix = ("Re-fetch it with `python -m fairvlm.data fetch sobit --overwrite`, or pass "
           "verify=False to load a taxonomy of your own (then only its format is checked)")
    try:
        manifest = manifest_path(SOBIT_MANIFEST_NAME, "So-B-IT")
    except DataError:
        manifest = None
    if manifest is not None:
        want = read_manifest(manifest, "So-B-IT").get(SOBIT_FILE)
        if want is not None:
            if sha256_file(p) != want:
                raise DataError(f"{p} is not the pinned So-B-IT taxonomy: its sha256 differs "
                                f"from {manifest.name} ({len(df)} words read; the pinned file "
                                f"has {sum(PINNED_COUNTS.values())}). {fix}")
            return
    counts = df.groupby("category", sort=False).size().to_dict()
    if counts != PINNED_COUNTS:
        diff = sorted(set(counts.items()) ^ set(PINNED_COUNTS.items()))
        raise DataError(f"{p} is not the pinned So-B-IT taxonomy (words per category differ: "
                        f"{diff[:4]}). {fix}")


def sobit_categories(path: str | os.PathLike | None = None, *, verify: bool = True) -> pd.DataFrame:
    """Words per category: columns ``category, n_words, examples`` (first three words)."""
    df = load_sobit(path, verify=verify)
    g = df.groupby("category", sort=False)["word"]
    return pd.DataFrame({
        "n_words": g.size(),
        "examples": g.apply(lambda w: ", ".join(w.iloc[:3])),
    }).reset_index()


def sobit_words(category: str, path: str | os.PathLike | None = None, *, verify: bool = True) -> list[str]:
    """The words of one category (an alias such as ``"behavorial"`` is accepted).

    Raises :class:`~fairvlm.errors.UnknownNameError` listing the categories otherwise.
    """
    validate.text("category", category)  # a bad name is refused before the file is read
    df = load_sobit(path, verify=verify)
    name = normalize_category(category)
    known = list(dict.fromkeys(df["category"]))
    if name not in known:
        raise unknown("So-B-IT category", category, known)
    return df.loc[df["category"] == name, "word"].tolist()
