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

import hashlib
import os
import re
import shutil
import tempfile
import urllib.parse
from pathlib import Path
from urllib.error import URLError
from urllib.request import urlopen

import pandas as pd

from fairvlm.data import _roots
from fairvlm.errors import DataError, unknown
from fairvlm.paths import repo_root

PAIRS_REPO = "katiefraser/PAIRS"
PAIRS_URL = f"https://github.com/{PAIRS_REPO}"
PAIRS_COMMIT = "507075ac84d244c4f98b965ba257b197d4944b04"
#: Files are fetched from ``PAIRS_BASE_URL + <path in the manifest>``.
PAIRS_BASE_URL = f"https://raw.githubusercontent.com/{PAIRS_REPO}/{PAIRS_COMMIT}/data/"
#: The environment variable that points :func:`load_pairs` at a PAIRS tree.
PAIRS_ENV = "FAIRVLM_PAIRS"
MANIFEST_NAME = "pairs.sha256"

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
    if section not in PAIRS_LABELS:
        raise unknown("PAIRS section", section, SECTIONS)
    if scenario not in PAIRS_LABELS[section]:
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
    root: str | os.PathLike | None = None, *, mapped_only: bool = False, verify: bool = False,
) -> pd.DataFrame:
    """Index the PAIRS images: one row per image.

    Columns ``section, scenario, label, gender, race, path``: ``gender`` is ``"male"`` or
    ``"female"`` and ``race`` ``"black"`` or ``"white"`` (the groups PAIRS prompted the
    image generator with, not attributes of a person); ``label`` is the RES-FAIR
    appendix label (``<NA>`` for the 6 dropped scenarios); ``path`` is the image's
    absolute path. Rows are ordered by section (occupations, status, potential_crime),
    scenario (alphabetical) and group (black male, black female, white male, white
    female): 200 rows for the full tree, 176 (= 44 x 4) with ``mapped_only=True``.

    ``root`` is resolved as in :func:`pairs_root`. ``verify=True`` also checks every
    file against the sha256 manifest first (:func:`verify_pairs`). Raises
    :class:`~fairvlm.errors.DataError` when the tree is missing, incomplete or holds
    files PAIRS does not have.
    """
    base = pairs_root(root)
    if verify:
        verify_pairs(base)
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
    bases = [Path.cwd()] + ([repo_root()] if repo_root() is not None else [])
    for b in bases:
        p = b / "data" / MANIFEST_NAME
        if p.is_file():
            return p
    raise DataError(
        f"the PAIRS manifest data/{MANIFEST_NAME} was not found (looked under "
        + ", ".join(str(b) for b in bases)
        + "); run from the book's checkout or pass manifest=PATH"
    )


def read_manifest(path: str | os.PathLike | None = None) -> dict[str, str]:
    """Read a ``sha256sum``-format manifest: ``{relative path: sha256 hex}``.

    Each line is ``<64 hex digits><two spaces><relative path>``. Paths must be relative
    and stay inside the tree (no ``..``); anything else raises :class:`DataError`.
    """
    path = Path(path) if path is not None else manifest_path()
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"cannot read the PAIRS manifest {path}: {exc}") from None
    entries: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line.strip())
        rel = m.group(2).removeprefix("./") if m else ""
        if m is None or rel.startswith("/") or ".." in Path(rel).parts or rel in entries:
            raise DataError(f"{path}, line {n}: not a valid manifest line: {line!r}")
        entries[rel] = m.group(1)
    if not entries:
        raise DataError(f"the PAIRS manifest {path} is empty")
    return entries


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check(tree: Path, manifest: dict[str, str]) -> list[str]:
    """Problems of ``tree`` against ``manifest``: one line per missing or altered file."""
    problems = []
    for rel, want in manifest.items():
        f = tree / rel
        if not f.is_file():
            problems.append(f"{rel}: missing")
            continue
        got = sha256_file(f)
        if got != want:
            problems.append(
                f"{rel}: sha256 {got[:12]}... != expected {want[:12]}... "
                f"({f.stat().st_size} bytes; the file is truncated or altered)"
            )
    return problems


def _summary(problems: list[str], limit: int = 8) -> str:
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return "\n  " + "\n  ".join(problems[:limit]) + more


def verify_pairs(root: str | os.PathLike | None = None, manifest: str | os.PathLike | None = None) -> int:
    """Check every file of the manifest against the tree at ``root``.

    Returns the number of files verified; raises :class:`DataError` naming each missing,
    truncated or altered file. Files not in the manifest are ignored.
    """
    base = pairs_root(root)
    entries = read_manifest(manifest)
    problems = _check(base, entries)
    if problems:
        raise DataError(f"PAIRS at {base} does not match {MANIFEST_NAME}:{_summary(problems)}\n"
                        f"{_HOW_TO_GET}")
    return len(entries)


# --------------------------------------------------------------------------- fetch


def _download(url: str, target: Path, timeout: float) -> None:
    try:
        with urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out)
    except (URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"could not download {url}: {reason}. Check the network, or copy PAIRS from a "
            "local folder with fetch_pairs(dest, source=DIR) / --source DIR"
        ) from None


def _source_tree(source: Path) -> Path:
    """Accept either the PAIRS data folder or a clone of the whole repository."""
    if not source.is_dir():
        raise DataError(f"source folder {source} does not exist")
    if not (source / "occupations").is_dir() and (source / "data" / "occupations").is_dir():
        return source / "data"
    return source


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
    ``sha256sum -c SHA256SUMS`` works inside it.
    """
    from tqdm.auto import tqdm

    entries = read_manifest(manifest)
    if not base_url.endswith("/"):
        base_url += "/"
    if dest is None:
        dest = (repo_root() or Path.cwd()) / "data" / "pairs"
    dest = Path(dest).expanduser()
    if dest.exists() and not overwrite:
        problems = _check(dest, entries) if dest.is_dir() else [f"{dest} is not a folder"]
        if not problems:
            return dest
        raise DataError(
            f"{dest} already exists and is not a verified PAIRS tree:{_summary(problems, 3)}\n"
            "Remove it, or call fetch_pairs(..., overwrite=True) / pass --overwrite"
        )
    src = _source_tree(Path(source).expanduser()) if source is not None else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    old = None
    try:
        problems = []
        what = f"copying PAIRS from {src}" if src else "downloading PAIRS"
        for rel, want in tqdm(entries.items(), desc=what, unit="file", disable=not progress):
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if src is not None:
                if not (src / rel).is_file():
                    problems.append(f"{rel}: missing from {src}")
                    continue
                shutil.copyfile(src / rel, target)
            else:
                _download(urllib.parse.urljoin(base_url, urllib.parse.quote(rel)), target, timeout)
            got = sha256_file(target)
            if got != want:
                problems.append(
                    f"{rel}: sha256 {got[:12]}... != expected {want[:12]}... "
                    f"({target.stat().st_size} bytes; the file is truncated or altered)"
                )
        if problems:
            origin = str(src) if src is not None else base_url
            raise DataError(
                f"PAIRS from {origin} failed verification against {MANIFEST_NAME}; "
                f"nothing was written to {dest}:{_summary(problems)}"
            )
        (staging / "SHA256SUMS").write_text(
            "".join(f"{want}  {rel}\n" for rel, want in entries.items()))
        if dest.exists():  # overwrite=True: swap only now that the new copy is verified
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
            os.replace(dest, old / dest.name)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return dest
