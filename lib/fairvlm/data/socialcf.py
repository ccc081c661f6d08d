"""SocialCounterfactuals: sets of images that differ only in the people's social attributes.

SocialCounterfactuals (Howard et al., CVPR 2024; used at scale by Howard et al., NAACL
2025) is about 171k synthetic images generated in *counterfactual sets*: one prompt such
as "A picture of a {race} {gender} plumber" rendered with the same seed for every
combination of two attributes, so that within a set only those attributes change. Three
segments cross two attributes each:

=================  =====================  ==========================
segment            attributes             images per set
=================  =====================  ==========================
``race_gender``    6 races x 2 genders    12
``physical_gender`` 5 physical x 2 genders 10
``physical_race``  5 physical x 6 races   30
=================  =====================  ==========================

The images live on the Hugging Face hub (``Intel/SocialCounterfactuals``); the metadata
CSVs come from the authors' code (:data:`SCF_METADATA_URL`). One CSV row is one set:
``seed, p2p_threshold, cfg_scale, filename, rank`` and one ``caption_<i>`` column per
image (``i`` is the image's index in the full generation grid, so the physical segments
have gaps). :func:`load_socialcounterfactuals` parses every caption into its template,
attributes and occupation and checks that each set is a complete grid.

Images are optional. When a user has them (as written by the authors' ``process_data.py``:
one folder of ``{filename}_{rank}_{i}_{seed}.jpg``), pass the folder as ``images=`` or
set ``$FAIRVLM_SOCIALCF_IMAGES``; missing images give ``<NA>`` paths unless
``require_images=True``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from fairvlm.data import _roots
from fairvlm.data.fetch import Remote, fetch_tree
from fairvlm import validate
from fairvlm.errors import DataError, ParameterError, unknown

SCF_ENV = "FAIRVLM_SOCIALCF"
SCF_IMAGES_ENV = "FAIRVLM_SOCIALCF_IMAGES"
SCF_REPO = "IntelLabs/multimodal_cognitive_ai"
SCF_COMMIT = "d1f2acc39b686f56dff1fd24cecb4f28640d39ad"
SCF_METADATA_URL = (
    f"https://github.com/{SCF_REPO}/tree/{SCF_COMMIT}/Uncovering_LVLM_Bias/metadata"
)
SCF_IMAGES_HUB = "Intel/SocialCounterfactuals"
#: The metadata CSVs are fetched from ``SCF_BASE_URL + <file name>`` (MIT licence).
SCF_BASE_URL = (
    f"https://raw.githubusercontent.com/{SCF_REPO}/{SCF_COMMIT}/Uncovering_LVLM_Bias/metadata/"
)
SCF_MANIFEST_NAME = "socialcf.sha256"
#: What :func:`fairvlm.data.fetch.fetch_tree` needs to fetch the metadata.
SCF_REMOTE = Remote(title="SocialCounterfactuals metadata", manifest_name=SCF_MANIFEST_NAME,
                    base_url=SCF_BASE_URL, folder="socialcounterfactuals",
                    func="fetch_socialcf", clone_subdir="Uncovering_LVLM_Bias/metadata")

#: Attribute levels, as this module writes them (lower case).
LEVELS: dict[str, tuple[str, ...]] = {
    "race": ("white", "black", "indian", "asian", "middle eastern", "latino"),
    "gender": ("male", "female"),
    "physical": ("skinny", "young", "obese", "tattooed", "old"),
}
#: segment -> the two attributes it crosses (in caption order).
SEGMENTS: dict[str, tuple[str, str]] = {
    "race_gender": ("race", "gender"),
    "physical_gender": ("physical", "gender"),
    "physical_race": ("physical", "race"),
}
#: Caption templates ("" = a bare noun phrase such as "a skinny male carpenter").
TEMPLATES = ("a picture of", "a photo of", "an image of", "")
COLUMNS = (
    "set_id", "segment", "occupation", "race", "gender", "physical", "template", "caption",
    "caption_index", "filename", "rank", "seed", "p2p_threshold", "cfg_scale", "image",
)

_HOW_TO_GET = (
    "Fetch the metadata CSVs with `python -m fairvlm.data fetch socialcf` (downloads them "
    f"from {SCF_METADATA_URL} into data/socialcounterfactuals/ and checks every file), or "
    f"point ${SCF_ENV} at the folder that holds them."
)
_META_COLUMNS = ("seed", "p2p_threshold", "cfg_scale", "filename", "rank")
#: Sets (rows of the CSV) in each pinned metadata file: the check used with ``verify=True``
#: when the sha256 manifest ``data/socialcf.sha256`` is not at hand (a pip install).
PINNED_SETS = {"race_gender": 7936, "physical_gender": 5052, "physical_race": 836}


def _verify_pinned(path: Path, segment: str, n_sets: int) -> None:
    """``path`` must be the pinned file: its sha256 equals the manifest's (when the manifest
    is found), else at least its number of sets equals :data:`PINNED_SETS`."""
    from fairvlm.data.fetch import manifest_path, read_manifest, sha256_file

    fix = (f"Re-fetch it with `python -m fairvlm.data fetch socialcf --overwrite`, or pass "
           "verify=False to load a subset or another version of your own (then only its "
           "format is checked)")
    try:
        manifest = manifest_path(SCF_MANIFEST_NAME, "SocialCounterfactuals")
    except DataError:
        manifest = None
    if manifest is not None:
        want = read_manifest(manifest, "SocialCounterfactuals").get(path.name)
        if want is not None and sha256_file(path) != want:
            raise DataError(
                f"{path} is not the pinned SocialCounterfactuals file: its sha256 differs from "
                f"{manifest.name} ({n_sets} sets read; the pinned file has "
                f"{PINNED_SETS[segment]}), so it is truncated or altered. {fix}")
        if want is not None:
            return
    if n_sets != PINNED_SETS[segment]:
        raise DataError(
            f"{path} holds {n_sets} sets; the pinned SocialCounterfactuals file has "
            f"{PINNED_SETS[segment]}, so it is truncated or altered. {fix}")


def _check_cells(path: Path, meta: pd.DataFrame) -> None:
    """seed and rank must be non-negative integers, p2p_threshold and cfg_scale finite
    numbers (pandas reads '12.5' or 'x' in an integer column without complaint)."""
    for col in ("seed", "rank"):
        v = pd.to_numeric(meta[col], errors="coerce")
        bad = v.isna() | (v < 0) | (v != v.round())
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise DataError(f"{path.name}, data row {i + 1}: {col}={meta[col].iloc[i]!r} is not "
                            "a non-negative integer; the file is altered")
        meta[col] = v.astype(np.int64)
    for col in ("p2p_threshold", "cfg_scale"):
        v = pd.to_numeric(meta[col], errors="coerce")
        bad = ~np.isfinite(v.to_numpy(dtype=float))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path.name}, data row {i + 1}: {col}={meta[col].iloc[i]!r} is not "
                            "a finite number; the file is altered")
        meta[col] = v.astype(float)


def socialcf_root(root: str | os.PathLike | None = None, *, required: bool = True) -> Path | None:
    """Find the metadata folder: ``root``, ``$FAIRVLM_SOCIALCF``, ``data/socialcounterfactuals``,
    ``../shared/data/socialcounterfactuals`` (see :mod:`fairvlm.data._roots`)."""
    return _roots.resolve("socialcounterfactuals", root, SCF_ENV,
                          what="the SocialCounterfactuals metadata", how_to_get=_HOW_TO_GET,
                          required=required)


def fetch_socialcf(
    dest: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
    *,
    base_url: str = SCF_BASE_URL,
    manifest: str | os.PathLike | None = None,
    overwrite: bool = False,
    timeout: float = 60.0,
    progress: bool = True,
) -> Path:
    """Put a verified copy of the three metadata CSVs at ``dest`` and return ``dest``.

    Files are listed by the sha256 manifest ``data/socialcf.sha256``. Without ``source``
    each is downloaded from ``base_url + name`` (GitHub's raw files of
    ``Uncovering_LVLM_Bias/metadata/`` at the pinned commit; a ``file://`` URL works too);
    with ``source`` (a folder holding the CSVs, or a clone of the repository) each is
    copied. ``dest`` defaults to ``data/socialcounterfactuals`` in the book's checkout.
    Staged, verified and renamed into place as :func:`fairvlm.data.fetch_pairs` is: a bad
    file raises :class:`DataError` naming it and leaves nothing at ``dest``; a verified
    ``dest`` is returned untouched; ``overwrite=True`` replaces anything else once the new
    copy is verified. No images are fetched (see the module's docstring).
    """
    return fetch_tree(SCF_REMOTE, dest, source, base_url=base_url, manifest=manifest,
                      overwrite=overwrite, timeout=timeout, progress=progress)


def _caption_regex(segment: str) -> re.Pattern:
    a1, a2 = SEGMENTS[segment]

    def alt(attr):  # longest first, so "middle eastern" is not cut short
        return "|".join(re.escape(v) for v in sorted(LEVELS[attr], key=len, reverse=True))

    templates = "|".join(re.escape(t) for t in TEMPLATES if t)
    return re.compile(
        rf"^(?:(?P<template>{templates}) )?(?:a|an) (?P<a1>{alt(a1)}) (?P<a2>{alt(a2)}) "
        r"(?P<occupation>\S.*?)\s*$",
        re.IGNORECASE,
    )


def _problem(path: Path, what: str, bad: pd.DataFrame, col: str) -> DataError:
    first = bad.iloc[0]
    return DataError(
        f"{path.name}: {len(bad)} {what}; first in set {first['filename']} (rank "
        f"{first['rank']}, seed {first['seed']}): {first[col]!r}"
    )


def _load_segment(segment: str, folder: Path, images: Path | None, verify: bool = True) -> pd.DataFrame:
    path = folder / f"metadata_{segment}.csv"
    if not path.is_file():
        raise DataError(f"{path} not found. {_HOW_TO_GET}")
    try:
        meta = pd.read_csv(path, dtype={"filename": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    caps = [c for c in meta.columns if re.fullmatch(r"caption_\d+", c)]
    missing = [c for c in _META_COLUMNS if c not in meta.columns]
    if missing or not caps:
        raise DataError(f"{path} lacks the columns {missing or ['caption_<i>']}; is it a "
                        "SocialCounterfactuals metadata file?")
    if meta[list(_META_COLUMNS) + caps].isna().any().any():
        raise DataError(f"{path} has empty cells in its set or caption columns")
    if verify:
        _verify_pinned(path, segment, len(meta))
    _check_cells(path, meta)
    if meta.duplicated(["filename", "rank", "seed"]).any():
        dup = meta[meta.duplicated(["filename", "rank", "seed"])].iloc[0]
        raise DataError(f"{path.name}: the set {dup['filename']} (rank {dup['rank']}, seed "
                        f"{dup['seed']}) appears twice; the file is altered")
    n_sets, n_caps = len(meta), len(caps)
    index = np.array([int(c.split("_")[1]) for c in caps])
    long = pd.DataFrame({
        "filename": np.repeat(meta["filename"].to_numpy(), n_caps),
        "rank": np.repeat(meta["rank"].to_numpy(), n_caps),
        "seed": np.repeat(meta["seed"].to_numpy(), n_caps),
        "p2p_threshold": np.repeat(meta["p2p_threshold"].to_numpy(), n_caps),
        "cfg_scale": np.repeat(meta["cfg_scale"].to_numpy(), n_caps),
        "caption_index": np.tile(index, n_sets),
        "caption": meta[caps].to_numpy(dtype=object).ravel(),
    })
    parts = long["caption"].str.extract(_caption_regex(segment))
    if parts["a1"].isna().any():
        raise _problem(path, f"captions that do not read '[template] a/an <{SEGMENTS[segment][0]}>"
                       f" <{SEGMENTS[segment][1]}> <occupation>'",
                       long[parts["a1"].isna()], "caption")
    a1, a2 = SEGMENTS[segment]
    long["set_id"] = (long["filename"] + "_" + long["rank"].astype(str) + "_"
                      + long["seed"].astype(str))
    long["segment"] = segment
    long["occupation"] = parts["occupation"].str.lower()
    long["template"] = parts["template"].fillna("").str.lower()
    for attr in ("race", "gender", "physical"):
        long[attr] = parts["a1"].str.lower() if attr == a1 else (
            parts["a2"].str.lower() if attr == a2 else pd.NA)

    # The file name repeats the template and the occupation: they must agree.
    fn = long["filename"].str.extract(
        rf"^(?:(?P<t>a_picture_of|a_photo_of|an_image_of)_)?{segment}_(?P<slug>.+)$")
    bad = fn["slug"].isna()
    if bad.any():
        raise _problem(path, f"file names that do not read '[template_]{segment}_<occupation>'",
                       long[bad], "filename")
    bad = (fn["t"].fillna("").str.replace("_", " ") != long["template"]) | (
        fn["slug"].str.lower() != long["occupation"].str.replace(" ", "_"))
    if bad.any():
        raise _problem(path, "captions whose template or occupation differ from the set's "
                       "file name", long[bad], "caption")
    # Each set must be the full grid of its two attributes, each cell once.
    n_cells = len(LEVELS[a1]) * len(LEVELS[a2])
    n = long.groupby("set_id", sort=False).size()
    distinct = long.drop_duplicates(["set_id", a1, a2]).groupby("set_id", sort=False).size()
    incomplete = n.index[(n != n_cells) | (distinct.reindex(n.index) != n_cells)]
    if len(incomplete):
        raise DataError(
            f"{path.name}: {len(incomplete)} sets are not a complete {a1} x {a2} grid of "
            f"{n_cells} images (e.g. {incomplete[0]}); the file is truncated or altered")
    long["image"] = _image_paths(long, images)
    long = long[list(COLUMNS)]
    for col in ("set_id", "segment", "occupation", "race", "gender", "physical", "template",
                "caption", "filename", "image"):
        long[col] = long[col].astype("string")
    return long


def _image_paths(long: pd.DataFrame, images: Path | None) -> pd.Series:
    if images is None:
        return pd.Series(pd.NA, index=long.index, dtype="string")
    names = (long["filename"] + "_" + long["rank"].astype(str) + "_"
             + long["caption_index"].astype(str) + "_" + long["seed"].astype(str) + ".jpg")
    present = {p.name for p in images.iterdir()}
    return pd.Series([str(images / n) if n in present else pd.NA for n in names],
                     index=long.index, dtype="string")


def _images_folder(images, require: bool) -> Path | None:
    if images is None and os.environ.get(SCF_IMAGES_ENV):
        images = os.environ[SCF_IMAGES_ENV]
    if images is None:
        if require:
            raise DataError(
                "SocialCounterfactuals images were requested but no folder was given: pass "
                f"images=DIR or set ${SCF_IMAGES_ENV} (images: hub dataset {SCF_IMAGES_HUB}, "
                "saved as {filename}_{rank}_{i}_{seed}.jpg)")
        return None
    folder = validate.path("images", images)
    if not folder.is_dir():
        raise DataError(f"SocialCounterfactuals image folder images={str(folder)!r} does not exist")
    return folder


def load_socialcounterfactuals(
    segment: str = "race_gender",
    root: str | os.PathLike | None = None,
    *,
    images: str | os.PathLike | None = None,
    require_images: bool = False,
    verify: bool = True,
) -> pd.DataFrame:
    """Parse SocialCounterfactuals metadata into one row per image (caption).

    ``segment`` is one of :data:`SEGMENTS` or ``"all"`` (the three, concatenated).
    Columns (:data:`COLUMNS`): ``set_id`` (``{filename}_{rank}_{seed}``, unique per set),
    ``segment``, ``occupation`` (lower case, e.g. ``"police officer"``), ``race``,
    ``gender``, ``physical`` (lower case; ``<NA>`` for the attribute a segment does not
    vary), ``template`` (``"a picture of"``, ``"a photo of"``, ``"an image of"`` or ``""``),
    ``caption`` (verbatim), ``caption_index`` (the image's index ``i`` in its set's file
    name), the set's ``filename, rank, seed, p2p_threshold, cfg_scale``, and ``image``
    (the image's path, ``<NA>`` when there is no image folder or the file is absent).
    Rows keep the CSV's set order, then caption order.

    ``verify=True`` (default): each CSV must be the pinned file (its sha256 equals the one
    in ``data/socialcf.sha256``; without that manifest, its number of sets equals
    :data:`PINNED_SETS`), so a file cut short at a row boundary is not read as a smaller
    dataset. ``verify=False`` loads a subset or another version, checking only its format.

    Raises :class:`~fairvlm.errors.DataError` for a missing, truncated or malformed file (a
    caption that does not parse, a set that is not a complete attribute grid, a seed or
    rank that is not a non-negative integer), or when ``require_images`` is set and an
    image is missing.
    """
    require_images, verify = validate.flag("require_images", require_images), validate.flag("verify", verify)
    if images is not None:
        validate.path("images", images)
    if not isinstance(segment, str) or segment != "all" and segment not in SEGMENTS:
        raise unknown("SocialCounterfactuals segment", segment, [*SEGMENTS, "all"])
    folder = socialcf_root(root)
    image_dir = _images_folder(images, require_images)
    chosen = list(SEGMENTS) if segment == "all" else [segment]
    df = pd.concat([_load_segment(s, folder, image_dir, verify) for s in chosen], ignore_index=True)
    if require_images and df["image"].isna().any():
        missing = df.loc[df["image"].isna()].iloc[0]
        name = f"{missing['filename']}_{missing['rank']}_{missing['caption_index']}_{missing['seed']}.jpg"
        raise DataError(f"{int(df['image'].isna().sum())} of {len(df)} SocialCounterfactuals "
                        f"images are missing from {image_dir}, e.g. {name}")
    return df


def counterfactual_sets(df: pd.DataFrame) -> pd.DataFrame:
    """One row per counterfactual set of a :func:`load_socialcounterfactuals` frame.

    Columns ``set_id, segment, occupation, template, filename, rank, seed, n_images,
    n_images_found`` (images with a path on disk), in the frame's set order.
    """
    validate.frame("df", df, columns=("set_id", "segment", "occupation", "template", "filename", "rank", "seed",
                                      "caption", "image"))
    g = df.groupby("set_id", sort=False)
    out = g.agg(segment=("segment", "first"), occupation=("occupation", "first"),
                template=("template", "first"), filename=("filename", "first"),
                rank=("rank", "first"), seed=("seed", "first"),
                n_images=("caption", "size"), n_images_found=("image", "count"))
    return out.reset_index()


def set_statistics(df: pd.DataFrame) -> pd.DataFrame:
    """Summary per segment of a :func:`load_socialcounterfactuals` frame.

    One row per segment: ``segment, attributes`` (e.g. ``"race x gender"``), ``n_sets``,
    ``images_per_set`` (every set of a segment has the same size), ``n_images``,
    ``n_occupations``, ``sets_per_occupation_min/median/max`` and ``n_templates``.
    """
    validate.frame("df", df, columns=("set_id", "segment", "occupation", "template", "filename", "rank", "seed",
                                      "caption", "image"))
    if df["segment"].isna().any() or not set(df["segment"].dropna()) <= set(SEGMENTS):
        bad = sorted(map(str, set(df["segment"]) - set(SEGMENTS)))[:3]
        raise ParameterError(f"df['segment'] holds values that are not SocialCounterfactuals segments ({bad}); "
                             "pass a frame from load_socialcounterfactuals")
    sets = counterfactual_sets(df)
    rows = []
    for segment, s in sets.groupby("segment", sort=False):
        per_occ = s.groupby("occupation").size()
        sizes = s["n_images"].unique()
        rows.append({
            "segment": segment,
            "attributes": " x ".join(SEGMENTS[segment]),
            "n_sets": len(s),
            "images_per_set": int(sizes[0]) if len(sizes) == 1 else -1,
            "n_images": int(s["n_images"].sum()),
            "n_occupations": int(per_occ.size),
            "sets_per_occupation_min": int(per_occ.min()),
            "sets_per_occupation_median": float(per_occ.median()),
            "sets_per_occupation_max": int(per_occ.max()),
            "n_templates": int(s["template"].nunique()),
        })
    return pd.DataFrame(rows)
