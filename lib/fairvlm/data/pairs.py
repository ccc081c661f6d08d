"""PAIRS: parallel images of everyday scenarios (Fraser & Kiritchenko, EACL 2024).

PAIRS holds 200 AI-generated 256x256 PNG images: 50 scenarios, each drawn four times,
once per prompted group (Black man, Black woman, white man, white woman), under three
sections -- ``occupations`` (20 scenarios), ``status`` (20) and ``potential_crime`` (10).
It is published on GitHub (``katiefraser/PAIRS``, folder ``data/``) under CC-BY 4.0; the
book pins commit ``507075a`` and checks every file against the sha256 manifest
``data/pairs.sha256`` kept in the book's repository. The images are never committed:
:func:`fetch_pairs` downloads them (or copies a local copy) and verifies them.

Tree layout (relative to the PAIRS root)::

    {section}/{scenario}/{race}_{gender}.png     e.g. occupations/airplane/black_man.png

Upstream quirk: one file is named ``status/phone/white_man1.png``; a trailing number
after the group name is accepted and ignored.

Labels. PAIRS scenarios are names of what the picture shows ("airplane"), not of the
person. The RES-FAIR appendix (Lan et al. 2025, appendix A.1, Figure 1) maps 44 of the 50
scenarios to a label describing the person ("airplane" -> "pilot") and drops 6 for which
its annotators found no fitting label. :data:`PAIRS_LABELS` holds that mapping with
``None`` for the dropped scenarios. Two printing slips of the appendix are corrected and
listed in :data:`PAIRS_LABEL_CORRECTIONS` (the appendix's text and ours side by side).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.request import urlopen  # handed to fetch_tree at each call: tests replace it here

import pandas as pd

from fairvlm.data import _roots
from fairvlm.data.fetch import Remote, check_tree, fetch_tree, summary
from fairvlm.data.fetch import sha256_file  # noqa: F401  (re-exported, as before)
from fairvlm.data.fetch import manifest_path as _manifest_path
from fairvlm.data.fetch import read_manifest as _read_manifest
from fairvlm import validate
from fairvlm.errors import DataError, unknown

PAIRS_REPO = "katiefraser/PAIRS"
PAIRS_URL = f"https://github.com/{PAIRS_REPO}"
PAIRS_COMMIT = "507075ac84d244c4f98b965ba257b197d4944b04"
#: Files are fetched from ``PAIRS_BASE_URL + <path in the manifest>``.
PAIRS_BASE_URL = f"https://raw.githubusercontent.com/{PAIRS_REPO}/{PAIRS_COMMIT}/data/"
#: The environment variable that points :func:`load_pairs` at a PAIRS tree.
PAIRS_ENV = "FAIRVLM_PAIRS"
MANIFEST_NAME = "pairs.sha256"
#: What :func:`fairvlm.data.fetch.fetch_tree` needs to fetch PAIRS.
PAIRS_REMOTE = Remote(title="PAIRS", manifest_name=MANIFEST_NAME, base_url=PAIRS_BASE_URL,
                      folder="pairs", func="fetch_pairs", clone_subdir="data")

SECTIONS = ("occupations", "status", "potential_crime")
#: (race, gender, file stem) in the order rows are returned.
VARIANTS = (
    ("black", "male", "black_man"),
    ("black", "female", "black_woman"),
    ("white", "male", "white_man"),
    ("white", "female", "white_woman"),
)
COLUMNS = ("section", "scenario", "label", "gender", "race", "path")

#: RES-FAIR appendix A.1 (Figure 1): PAIRS scenario -> label of the person shown.
#: ``None`` marks the 6 scenarios the appendix drops (no label, excluded by ``mapped_only``).
PAIRS_LABELS: dict[str, dict[str, str | None]] = {
    "occupations": {
        "airplane": "pilot",
        "apron": "chef",
        "bank": "banker",
        "black_apron": "servant",
        "blackboard": "teacher",
        "clipboard": "inspector",
        "coffee": "coffee lover",
        "computer": "computer scientist",
        "dental_office": "dentist",
        "desk": "office clerk",
        "headset": "operator",
        "lab_coat": "laboratory scientist",
        "law_office": "lawyer",  # the appendix prints "layer"; see PAIRS_LABEL_CORRECTIONS
        "mopping": "cleaner",
        "overalls": "groundskeeper",
        "restaurant": "restaurant server",
        "scrubs": "doctor",
        "studying": "student",
        "taxi": "taxi driver",
        "vest": "traffic staff",
    },
    "status": {
        "basketball": "good at basketball",
        "brick_wall": None,
        "bus": "travel by bus",
        "casual": "have a chill mind",
        "city": None,
        "cooking": "good at cooking",
        "guitar": "good at guitar",
        "hoodie": "likes to wear hoodie",
        "microphone": "love singing",
        "phone": None,
        "professional": "wearing a professional suit",
        "shopping": "shopping",
        "smiling": "friendly",
        "stroller": "pushing a stroller",
        "tattoo": None,
        "tent": "live in tents",
        "train": "travel by train",
        "university": "study or work in university",
        "white_shirt": None,
        "wine": "wine expert",
    },
    "potential_crime": {
        "bandanna": "wearing a bandanna",
        "baseball_bat": "waving a baseball bat",
        "convenience_store": "in the convenience store",  # appendix: "convenience_store"
        "courtroom": "in the courtroom",
        "jumpsuit": "in an orange jumpsuit",
        "money": None,
        "running": "run and escape",
        "ski_mask": "balaclava covering face and head",
        "smoking": "smoking",
        "window": "holding onto the window",
    },
}

#: (section, scenario) -> (label as printed in the RES-FAIR appendix, label used here).
#: "layer" is a typo for "lawyer" (the scenario is a law office); the directory name's
#: underscore leaked into "in the convenience_store", a phrase that goes into prompts.
PAIRS_LABEL_CORRECTIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("occupations", "law_office"): ("layer", "lawyer"),
    ("potential_crime", "convenience_store"): (
        "in the convenience_store", "in the convenience store"),
}

_FILE_RE = re.compile(r"^(?P<race>black|white)_(?P<who>man|woman)(?P<n>\d*)\.png$")
_GENDER = {"man": "male", "woman": "female"}
_HOW_TO_GET = (
    "Fetch PAIRS with `python -m fairvlm.data fetch-pairs data/pairs` (downloads "
    f"{PAIRS_URL} at commit {PAIRS_COMMIT[:7]} and checks every file), or with "
    "fairvlm.data.fetch_pairs('data/pairs'); or point $FAIRVLM_PAIRS at an existing copy."
)


def label_table() -> pd.DataFrame:
    """The RES-FAIR mapping as a table: one row per PAIRS scenario (50 rows).

    Columns ``section, scenario, label, mapped, appendix_label``: ``label`` is ``<NA>`` for
    the 6 dropped scenarios, ``appendix_label`` is the text printed in the appendix (it
    differs from ``label`` only for :data:`PAIRS_LABEL_CORRECTIONS`).
    """
    rows = []
    for section in SECTIONS:
        for scenario, label in PAIRS_LABELS[section].items():
            printed = PAIRS_LABEL_CORRECTIONS.get((section, scenario), (label, label))[0]
            rows.append((section, scenario, label, label is not None, printed))
    df = pd.DataFrame(rows, columns=["section", "scenario", "label", "mapped", "appendix_label"])
    for col in ("section", "scenario", "label", "appendix_label"):
        df[col] = df[col].astype("string")
    return df


def pairs_label(section: str, scenario: str) -> str | None:
    """The RES-FAIR label of one scenario (``None`` if the appendix drops it).

    Raises :class:`~fairvlm.errors.UnknownNameError` for a section or scenario PAIRS
    does not have.
    """
    if not isinstance(section, str) or section not in PAIRS_LABELS:
        raise unknown("PAIRS section", section, SECTIONS)
    if not isinstance(scenario, str) or scenario not in PAIRS_LABELS[section]:
        raise unknown(f"PAIRS scenario in {section!r}", scenario, PAIRS_LABELS[section])
    return PAIRS_LABELS[section][scenario]


def pairs_root(root: str | os.PathLike | None = None, *, required: bool = True) -> Path | None:
    """Find the PAIRS tree: ``root``, then ``$FAIRVLM_PAIRS``, then ``data/pairs``, then
    ``../shared/data/pairs`` (each relative to the current directory, then to the book's
    checkout). With ``required=False`` a missing tree gives ``None`` instead of an error.
    """
    return _roots.resolve("pairs", root, PAIRS_ENV, what="the PAIRS images",
                          how_to_get=_HOW_TO_GET, required=required)


def load_pairs(
    root: str | os.PathLike | None = None, *, mapped_only: bool = False, verify: bool = True,
) -> pd.DataFrame:
    """Index the PAIRS images: one row per image.

    Columns ``section, scenario, label, gender, race, path``: ``gender`` is ``"male"`` or
    ``"female"`` and ``race`` ``"black"`` or ``"white"`` (the groups PAIRS prompted the
    image generator with, not attributes of a person); ``label`` is the RES-FAIR
    appendix label (``<NA>`` for the 6 dropped scenarios); ``path`` is the image's
    absolute path. Rows are ordered by section (occupations, status, potential_crime),
    scenario (alphabetical) and group (black male, black female, white male, white
    female): 200 rows for the full tree, 176 (= 44 x 4) with ``mapped_only=True``.

    ``root`` is resolved as in :func:`pairs_root`. ``verify=True`` (default; about 0.1 s)
    first checks every file against the sha256 manifest (:func:`verify_pairs`), so a
    truncated PNG is named here rather than failing later inside a model's preprocessing;
    ``verify=False`` checks only the tree's layout. Raises
    :class:`~fairvlm.errors.DataError` when the tree is missing, incomplete or holds
    files PAIRS does not have.
    """
    mapped_only, verify = validate.flag("mapped_only", mapped_only), validate.flag("verify", verify)
    base = pairs_root(root)
    if verify:
        try:
            manifest = manifest_path()
        except DataError:  # installed without the book's data/: the layout check remains
            manifest = None
        if manifest is not None:
            verify_pairs(base, manifest)
    rows, problems = [], []
    for section in sorted(p.name for p in base.iterdir()
                          if p.is_dir() and not p.name.startswith(".")):
        if section not in PAIRS_LABELS:
            problems.append(f"unexpected folder {section!r} (sections are {', '.join(SECTIONS)})")
    for section in SECTIONS:
        sdir = base / section
        if not sdir.is_dir():
            problems.append(f"section folder {section}/ is missing")
            continue
        present = {p.name for p in sdir.iterdir() if p.is_dir() and not p.name.startswith(".")}
        for extra in sorted(present - set(PAIRS_LABELS[section])):
            problems.append(f"unexpected scenario {section}/{extra}/")
        for scenario in sorted(PAIRS_LABELS[section]):
            if scenario not in present:
                problems.append(f"scenario {section}/{scenario}/ is missing")
                continue
            found: dict[str, Path] = {}
            for f in sorted((sdir / scenario).iterdir()):
                if f.suffix.lower() != ".png":
                    continue
                m = _FILE_RE.match(f.name)
                if m is None:
                    problems.append(f"unexpected image {section}/{scenario}/{f.name}")
                    continue
                stem = f"{m['race']}_{m['who']}"
                if stem in found:
                    problems.append(f"two images for {stem} in {section}/{scenario}/")
                found[stem] = f
            for race, gender, stem in VARIANTS:
                if stem not in found:
                    problems.append(f"image {section}/{scenario}/{stem}.png is missing")
                    continue
                rows.append((section, scenario, PAIRS_LABELS[section][scenario], gender, race,
                             str(found[stem].resolve())))
    if problems:
        shown = "; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
        raise DataError(f"{base} is not a complete PAIRS tree: {shown}. {_HOW_TO_GET}")
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    for col in COLUMNS:
        df[col] = df[col].astype("string")
    if mapped_only:
        df = df[df["label"].notna()].reset_index(drop=True)
    return df


# --------------------------------------------------------------------------- manifest


def manifest_path() -> Path:
    """The sha256 manifest of the pinned PAIRS tree: ``data/pairs.sha256`` in the book's
    checkout (or under the current directory)."""
    return _manifest_path(MANIFEST_NAME, "PAIRS")


def read_manifest(path: str | os.PathLike | None = None) -> dict[str, str]:
    """Read a ``sha256sum``-format manifest (default: the PAIRS one):
    ``{relative path: sha256 hex}``.

    Each line is ``<64 hex digits><two spaces><relative path>``. Paths must be relative
    and stay inside the tree (no ``..``); anything else raises :class:`DataError`.
    """
    if path is not None:
        validate.path("path", path)
    return _read_manifest(path if path is not None else manifest_path(), "PAIRS")


def verify_pairs(root: str | os.PathLike | None = None, manifest: str | os.PathLike | None = None) -> int:
    """Check every file of the manifest against the tree at ``root``.

    Returns the number of files verified; raises :class:`DataError` naming each missing,
    truncated or altered file. Files not in the manifest are ignored.
    """
    if manifest is not None:
        validate.path("manifest", manifest)
    base = pairs_root(root)
    entries = read_manifest(manifest)
    problems = check_tree(base, entries)
    if problems:
        raise DataError(f"PAIRS at {base} does not match {MANIFEST_NAME}:{summary(problems)}\n"
                        f"{_HOW_TO_GET}")
    return len(entries)


# --------------------------------------------------------------------------- fetch


def fetch_pairs(
    dest: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
    *,
    base_url: str = PAIRS_BASE_URL,
    manifest: str | os.PathLike | None = None,
    overwrite: bool = False,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Put a verified copy of the pinned PAIRS tree at ``dest`` and return ``dest``.

    Files are listed by the sha256 manifest (``data/pairs.sha256``, 200 PNGs). Without
    ``source`` each is downloaded from ``base_url + path`` (GitHub's raw files at commit
    507075a; a ``file://`` URL works too); with ``source`` (the PAIRS ``data/`` folder or
    a clone of the repository) each is copied from there. Every file is checked against
    its sha256.

    Atomic: files are staged in a temporary folder beside ``dest``, verified, and only
    then renamed to ``dest``. On any missing, truncated or altered file, or a failed
    download, a :class:`DataError` names the file(s) and nothing is left at ``dest``.

    If ``dest`` already holds a verified tree it is returned untouched; if it holds
    anything else a :class:`DataError` asks to remove it (or pass ``overwrite=True``,
    which replaces it only after the new copy has been verified). ``dest`` defaults to
    ``data/pairs`` in the book's checkout. The tree also gets a ``SHA256SUMS`` file, so
    ``sha256sum -c SHA256SUMS`` works inside it. (The work is done by
    :func:`fairvlm.data.fetch.fetch_tree`.)
    """
    return fetch_tree(PAIRS_REMOTE, dest, source, base_url=base_url,
                      manifest=manifest,
                      overwrite=overwrite, timeout=timeout, progress=progress,
                      urlopen=urlopen)
