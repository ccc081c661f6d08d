"""fairvlm.data on the real shared data: PAIRS, SocialCounterfactuals, So-B-IT."""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import re
import shutil
from pathlib import Path
from urllib.error import URLError

import pandas as pd
import pytest

import fairvlm.data as D
import fairvlm.data.__main__ as cli_mod
from fairvlm.data import _roots, fetch as fetch_mod, pairs as pairs_mod
from fairvlm.data.__main__ import main as cli
from fairvlm.errors import DataError, UnknownNameError

DROPPED = {("status", s) for s in ("brick_wall", "city", "phone", "tattoo", "white_shirt")} | {
    ("potential_crime", "money")}


@pytest.fixture(scope="session")
def pairs_dir(shared) -> Path:
    return shared / "data" / "pairs"


@pytest.fixture()
def pairs_copy(pairs_dir, tmp_path) -> Path:
    """A writable copy of the real PAIRS tree (images only)."""
    src = tmp_path / "src"
    shutil.copytree(pairs_dir, src, ignore=shutil.ignore_patterns("*.md", "SHA256SUMS"))
    return src


@pytest.fixture()
def no_defaults(tmp_path, monkeypatch):
    """Run from an empty folder with no checkout to fall back on."""
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(_roots, "repo_root", lambda: None)
    monkeypatch.delenv("FAIRVLM_PAIRS", raising=False)
    return work


def _leftovers(parent: Path, name: str) -> list[Path]:
    """Hidden staging folders left beside ``name`` (none when the parent itself was
    removed: a failed fetch removes the folders it created)."""
    if not parent.exists():
        return []
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


# ------------------------------------------------------------------ PAIRS: mapping


def test_mapping_has_44_labels_and_drops_the_six_named_scenarios():
    table = D.label_table()
    assert len(table) == 50
    assert table.groupby("section").size().to_dict() == {
        "occupations": 20, "status": 20, "potential_crime": 10}
    assert int(table["mapped"].sum()) == 44
    dropped = set(map(tuple, table.loc[~table["mapped"], ["section", "scenario"]].to_numpy()))
    assert dropped == DROPPED
    assert table["label"].isna().sum() == 6


def test_mapping_spot_checks_and_the_documented_corrections():
    assert D.pairs_label("occupations", "airplane") == "pilot"
    assert D.pairs_label("occupations", "scrubs") == "doctor"
    assert D.pairs_label("status", "smiling") == "friendly"
    assert D.pairs_label("potential_crime", "ski_mask") == "balaclava covering face and head"
    assert D.pairs_label("potential_crime", "money") is None
    # "layer" in the appendix is a typo for lawyer: the table keeps both
    assert D.pairs_label("occupations", "law_office") == "lawyer"
    row = D.label_table().query("scenario == 'law_office'").iloc[0]
    assert (row["appendix_label"], row["label"]) == ("layer", "lawyer")
    for (section, scenario), (printed, used) in D.PAIRS_LABEL_CORRECTIONS.items():
        assert D.pairs_label(section, scenario) == used != printed
    # everything not corrected is the appendix text itself
    t = D.label_table().dropna(subset=["label"])
    assert (t["label"] != t["appendix_label"]).sum() == len(D.PAIRS_LABEL_CORRECTIONS)


def test_unknown_section_or_scenario_names_the_choices():
    with pytest.raises(UnknownNameError, match="occupations, potential_crime, status"):
        D.pairs_label("jobs", "airplane")
    with pytest.raises(UnknownNameError, match="airplane"):
        D.pairs_label("occupations", "spaceship")


# ------------------------------------------------------------------ PAIRS: loading


def test_load_pairs_indexes_every_image(pairs_dir):
    df = D.load_pairs(pairs_dir)
    assert list(df.columns) == ["section", "scenario", "label", "gender", "race", "path"]
    assert len(df) == 200
    assert df.groupby(["section", "scenario"]).ngroups == 50
    assert df.groupby("section")["scenario"].nunique().to_dict() == {
        "occupations": 20, "status": 20, "potential_crime": 10}
    # each scenario: the four groups once each, in a fixed order
    groups = df.groupby(["section", "scenario"], sort=False)[["race", "gender"]].apply(
        lambda g: list(zip(g["race"], g["gender"])))
    assert all(g == [("black", "male"), ("black", "female"), ("white", "male"),
                     ("white", "female")] for g in groups)
    assert df["path"].map(lambda p: Path(p).is_file()).all()
    assert df["path"].map(lambda p: Path(p).is_absolute()).all()
    # file name and row agree (race_gender stem), incl. upstream's white_man1.png
    stems = df["path"].map(lambda p: Path(p).parent.name + "/" + Path(p).stem.rstrip("0123456789"))
    assert (stems == df["scenario"] + "/" + df["race"] + "_"
            + df["gender"].map({"male": "man", "female": "woman"})).all()
    phone = df.query("scenario == 'phone' and race == 'white' and gender == 'male'")
    assert phone["path"].iloc[0].endswith("status/phone/white_man1.png")
    air = df.query("scenario == 'airplane'")
    assert set(air["label"]) == {"pilot"}
    assert df.loc[df["scenario"] == "money", "label"].isna().all()


def test_mapped_only_keeps_44_scenarios_times_4(pairs_dir):
    df = D.load_pairs(pairs_dir, mapped_only=True)
    assert len(df) == 176
    assert df["label"].notna().all()
    assert df.groupby(["section", "scenario"]).ngroups == 44
    assert not set(map(tuple, df[["section", "scenario"]].drop_duplicates().to_numpy())) & DROPPED


def test_incomplete_tree_is_an_error_naming_the_file(pairs_copy):
    (pairs_copy / "occupations" / "taxi" / "white_woman.png").unlink()
    with pytest.raises(DataError, match="occupations/taxi/white_woman.png: missing"):
        D.load_pairs(pairs_copy)  # verified against the manifest by default
    with pytest.raises(DataError, match="occupations/taxi/white_woman.png is missing"):
        D.load_pairs(pairs_copy, verify=False)
    (pairs_copy / "status" / "elephant").mkdir()
    with pytest.raises(DataError, match="unexpected scenario status/elephant"):
        D.load_pairs(pairs_copy, verify=False)


def test_root_from_env_var_and_argument_precedence(pairs_dir, no_defaults, monkeypatch, tmp_path):
    with pytest.raises(DataError, match="fetch-pairs") as err:
        D.load_pairs()
    assert "FAIRVLM_PAIRS" in str(err.value)
    assert str(no_defaults / "data" / "pairs") in str(err.value)
    assert D.pairs_root(required=False) is None

    monkeypatch.setenv("FAIRVLM_PAIRS", str(pairs_dir))
    df = D.load_pairs()
    assert len(df) == 200 and df["path"].str.startswith(str(pairs_dir.resolve())).all()

    # the argument wins over the variable; an explicit path that is absent never falls back
    monkeypatch.setenv("FAIRVLM_PAIRS", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"FAIRVLM_PAIRS.*fetch"):
        D.load_pairs()
    assert len(D.load_pairs(pairs_dir)) == 200
    with pytest.raises(DataError, match="the path given"):
        D.load_pairs(tmp_path / "nowhere")


def test_default_data_pairs_is_found_relative_to_cwd(pairs_dir, no_defaults):
    (no_defaults / "data").mkdir()
    (no_defaults / "data" / "pairs").symlink_to(pairs_dir, target_is_directory=True)
    assert D.pairs_root() == no_defaults / "data" / "pairs"
    assert len(D.load_pairs()) == 200


def test_verify_pairs_on_the_real_tree(pairs_dir):
    assert D.verify_pairs(pairs_dir) == 200
    manifest = D.read_manifest()
    assert len(manifest) == 200
    # the manifest is the pinned tree's own checksum list
    upstream = dict(reversed(line.split("  ./")) for line in
                    (pairs_dir / "SHA256SUMS").read_text().splitlines())
    assert manifest == upstream


def test_manifest_rejects_paths_outside_the_tree(tmp_path):
    bad = tmp_path / "m.sha256"
    bad.write_text("0" * 64 + "  ../../etc/passwd\n")
    with pytest.raises(DataError, match="line 1"):
        D.read_manifest(bad)


# ------------------------------------------------------------------ PAIRS: fetching


def test_fetch_from_local_source(pairs_copy, tmp_path):
    dest = tmp_path / "out" / "pairs"
    assert D.fetch_pairs(dest, source=pairs_copy, progress=False) == dest
    assert len(D.load_pairs(dest, verify=True)) == 200
    assert len((dest / "SHA256SUMS").read_text().splitlines()) == 200
    assert not _leftovers(dest.parent, "pairs")
    # a second call finds a verified tree and leaves it alone
    stamp = (dest / "SHA256SUMS").stat().st_mtime_ns
    assert D.fetch_pairs(dest, source=tmp_path / "does-not-matter", progress=False) == dest
    assert (dest / "SHA256SUMS").stat().st_mtime_ns == stamp


def test_fetch_accepts_a_clone_of_the_repository(pairs_copy, tmp_path):
    clone = tmp_path / "PAIRS"
    clone.mkdir()
    shutil.move(pairs_copy, clone / "data")
    dest = D.fetch_pairs(tmp_path / "p", source=clone, progress=False)
    assert D.verify_pairs(dest) == 200


@pytest.mark.parametrize("damage", ["truncate", "alter", "delete"])
def test_damaged_file_fails_fetch_with_its_name_and_no_output(pairs_copy, tmp_path, damage):
    victim = pairs_copy / "potential_crime" / "running" / "black_woman.png"
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "alter":  # same size, one byte flipped
        victim.write_bytes(data[:1000] + bytes([data[1000] ^ 1]) + data[1001:])
    else:
        victim.unlink()
    dest = tmp_path / "out" / "pairs"
    with pytest.raises(DataError, match="potential_crime/running/black_woman.png") as err:
        D.fetch_pairs(dest, source=pairs_copy, progress=False)
    assert "nothing was written" in str(err.value)
    assert not dest.exists()
    assert not _leftovers(dest.parent, "pairs")


def test_download_path_over_urllib(pairs_copy, tmp_path):
    dest = D.fetch_pairs(tmp_path / "dl", base_url=pairs_copy.as_uri(), progress=False)
    assert D.verify_pairs(dest) == 200


def test_download_of_a_truncated_file_fails_and_leaves_nothing(pairs_copy, tmp_path, monkeypatch):
    real = pairs_mod.urlopen
    seen = []

    def fake(url, timeout):
        seen.append(url)
        if url.endswith("occupations/bank/white_man.png"):
            return io.BytesIO(b"\x89PNG\r\n\x1a\n truncated")
        return real(url, timeout=timeout)

    monkeypatch.setattr(pairs_mod, "urlopen", fake)
    dest = tmp_path / "dl" / "pairs"
    with pytest.raises(DataError, match="occupations/bank/white_man.png"):
        D.fetch_pairs(dest, base_url=pairs_copy.as_uri() + "/", progress=False)
    assert not dest.exists() and not _leftovers(dest.parent, "pairs")
    assert len(seen) == 200  # every file was checked, so the error lists all bad ones
    assert seen[0] == pairs_copy.as_uri() + "/occupations/airplane/black_man.png"


def test_default_url_is_pinned_and_network_errors_are_clear(tmp_path, monkeypatch):
    urls = []

    def offline(url, timeout):
        urls.append(url)
        raise URLError("no network")

    monkeypatch.setattr(pairs_mod, "urlopen", offline)
    dest = tmp_path / "pairs"
    with pytest.raises(DataError, match=r"could not download .*no network.*source"):
        D.fetch_pairs(dest, progress=False)
    assert urls == ["https://raw.githubusercontent.com/katiefraser/PAIRS/"
                    "507075ac84d244c4f98b965ba257b197d4944b04/data/occupations/airplane/black_man.png"]
    assert not dest.exists() and not _leftovers(tmp_path, "pairs")


def test_existing_dest_is_refused_unless_overwrite(pairs_copy, tmp_path):
    dest = tmp_path / "pairs"
    dest.mkdir()
    (dest / "junk.txt").write_text("x")
    with pytest.raises(DataError, match=r"(?s)already exists.*overwrite"):
        D.fetch_pairs(dest, source=pairs_copy, progress=False)
    assert (dest / "junk.txt").exists()
    D.fetch_pairs(dest, source=pairs_copy, overwrite=True, progress=False)
    assert not (dest / "junk.txt").exists() and D.verify_pairs(dest) == 200
    assert not _leftovers(tmp_path, "pairs")


def test_command_line(pairs_copy, tmp_path, capsys):
    dest = tmp_path / "cli" / "pairs"
    assert cli(["fetch-pairs", str(dest), "--source", str(pairs_copy)]) == 0
    assert "verified" in capsys.readouterr().out
    assert cli(["verify-pairs", str(dest)]) == 0
    (dest / "status" / "bus" / "black_man.png").write_bytes(b"not a png")
    assert cli(["verify-pairs", str(dest)]) == 2
    assert "status/bus/black_man.png" in capsys.readouterr().err


# ------------------------------------------------------------------ SocialCounterfactuals


@pytest.fixture(scope="module")
def scf_dir(shared) -> Path:
    return shared / "data" / "socialcounterfactuals"


@pytest.fixture(scope="module")
def race_gender(scf_dir) -> pd.DataFrame:
    return D.load_socialcounterfactuals("race_gender", scf_dir)


def test_race_gender_sets(race_gender):
    df = race_gender
    sets = D.counterfactual_sets(df)
    assert len(sets) == 7936 and (sets["n_images"] == 12).all()
    assert len(df) == 7936 * 12
    assert df["set_id"].nunique() == 7936
    # every set is the full 6 x 2 grid
    grid = df.groupby("set_id")[["race", "gender"]].apply(lambda g: len(set(zip(g.race, g.gender))))
    assert (grid == 12).all()
    assert set(df["race"]) == set(D.LEVELS["race"]) and set(df["gender"]) == {"male", "female"}
    assert df["physical"].isna().all()
    # one occupation and one template per set
    assert (df.groupby("set_id")[["occupation", "template"]].nunique() == 1).all().all()
    assert df["occupation"].nunique() == 141
    assert set(df["template"]) == {"a picture of", "a photo of", "an image of", ""}


def test_caption_parsing_spot_checks(race_gender):
    first = race_gender[race_gender["set_id"] == "a_picture_of_race_gender_plumber_0_3761796350"]
    assert len(first) == 12
    row = first[first["caption"] == "A picture of a Black female plumber"].iloc[0]
    assert (row["race"], row["gender"], row["occupation"], row["template"]) == (
        "black", "female", "plumber", "a picture of")
    assert row["caption_index"] == 3
    me = first[first["race"] == "middle eastern"]
    assert list(me["caption"]) == ["A picture of a Middle Eastern male plumber",
                                   "A picture of a Middle Eastern female plumber"]
    # capitalized and multi-word occupations are lower-cased as the file name has them
    assert "police officer" in set(race_gender["occupation"])
    assert not race_gender["occupation"].str.contains(r"[A-Z]").any()


def test_physical_segments_and_statistics(scf_dir, race_gender):
    pg = D.load_socialcounterfactuals("physical_gender", scf_dir)
    pr = D.load_socialcounterfactuals("physical_race", scf_dir)
    stats = D.set_statistics(pd.concat([race_gender, pg, pr], ignore_index=True))
    got = stats.set_index("segment")[["n_sets", "images_per_set", "n_occupations"]]
    assert got.to_dict("index") == {
        "race_gender": {"n_sets": 7936, "images_per_set": 12, "n_occupations": 141},
        "physical_gender": {"n_sets": 5052, "images_per_set": 10, "n_occupations": 136},
        "physical_race": {"n_sets": 836, "images_per_set": 30, "n_occupations": 67},
    }
    assert stats["n_images"].sum() == 170832
    assert pg["race"].isna().all() and pr["gender"].isna().all()
    assert set(pg["physical"]) == set(D.LEVELS["physical"])
    row = pr.iloc[0]
    assert (row["physical"], row["race"], row["occupation"]) == ("skinny", "white", "barber")
    assert stats.loc[stats.segment == "race_gender", "sets_per_occupation_max"].item() == (
        race_gender.drop_duplicates("set_id")["occupation"].value_counts().max())


def _small_csv(scf_dir: Path, folder: Path, n: int = 3) -> Path:
    folder.mkdir(exist_ok=True)
    df = pd.read_csv(scf_dir / "metadata_race_gender.csv", nrows=n)
    df.to_csv(folder / "metadata_race_gender.csv", index=False)
    return folder / "metadata_race_gender.csv"


def test_malformed_metadata_is_a_data_error(scf_dir, tmp_path):
    path = _small_csv(scf_dir, tmp_path / "scf")
    good = D.load_socialcounterfactuals("race_gender", path.parent, verify=False)
    assert len(good) == 36
    df = pd.read_csv(path)
    df.loc[1, "caption_4"] = "A picture of a Green male plumber"
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match=r"metadata_race_gender.csv.*Green male plumber"):
        D.load_socialcounterfactuals("race_gender", path.parent, verify=False)
    df.loc[1, "caption_4"] = df.loc[1, "caption_2"]  # a valid caption, twice in one set
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match="not a complete race x gender grid"):
        D.load_socialcounterfactuals("race_gender", path.parent, verify=False)
    df.loc[1, "caption_4"] = "A picture of an Indian male carpenter"  # not the set's occupation
    df.to_csv(path, index=False)
    with pytest.raises(DataError, match="differ from the set's file name"):
        D.load_socialcounterfactuals("race_gender", path.parent, verify=False)


def test_unknown_segment_and_missing_metadata(scf_dir, tmp_path):
    with pytest.raises(UnknownNameError, match="physical_race, race_gender"):
        D.load_socialcounterfactuals("age_gender", scf_dir)
    with pytest.raises(DataError, match="metadata_physical_race.csv not found"):
        D.load_socialcounterfactuals("physical_race", _small_csv(scf_dir, tmp_path / "s").parent)


def test_images_resolved_when_present(scf_dir, tmp_path, monkeypatch):
    root = _small_csv(scf_dir, tmp_path / "scf").parent
    no_images = D.load_socialcounterfactuals("race_gender", root, verify=False)
    assert no_images["image"].isna().all()
    images = tmp_path / "images"
    images.mkdir()
    have = ["a_picture_of_race_gender_plumber_0_0_3761796350.jpg",
            "a_picture_of_race_gender_plumber_0_11_3761796350.jpg"]
    for name in have:
        (images / name).write_bytes(b"jpg")
    df = D.load_socialcounterfactuals("race_gender", root, verify=False, images=images)
    found = df.dropna(subset=["image"])
    assert [Path(p).name for p in found["image"]] == have
    assert list(found["caption"]) == ["A picture of a White male plumber",
                                      "A picture of a Latino female plumber"]
    assert D.counterfactual_sets(df)["n_images_found"].tolist() == [2, 0, 0]
    with pytest.raises(DataError, match=r"34 of 36 .* missing.*plumber_0_1_3761796350.jpg"):
        D.load_socialcounterfactuals("race_gender", root, verify=False, images=images, require_images=True)
    monkeypatch.delenv("FAIRVLM_SOCIALCF_IMAGES", raising=False)
    with pytest.raises(DataError, match="FAIRVLM_SOCIALCF_IMAGES"):
        D.load_socialcounterfactuals("race_gender", root, verify=False, require_images=True)
    monkeypatch.setenv("FAIRVLM_SOCIALCF_IMAGES", str(images))
    assert D.load_socialcounterfactuals("race_gender", root, verify=False)["image"].notna().sum() == 2
    with pytest.raises(DataError, match="does not exist"):
        D.load_socialcounterfactuals("race_gender", root, verify=False, images=tmp_path / "none")


# ------------------------------------------------------------------ So-B-IT


def test_sobit_categories_and_alias(shared):
    path = shared / "data" / "sobit"
    df = D.load_sobit(path)
    assert list(df.columns) == ["category", "word"]
    counts = df.groupby("category", sort=False).size().to_dict()
    assert counts == {
        "appearance": 25, "behavioral": 78, "education and wealth": 24, "criminal justice": 29,
        "healthcare": 14, "portrayal in media": 24, "political": 25, "religion": 25,
        "occupation": 167, "stereotyping": 30}
    assert "behavorial" not in counts
    assert D.sobit_words("behavorial", path) == D.sobit_words("Behavioral ", path)
    assert D.sobit_words("behavioral", path)[:2] == ["welfare-dependent", "aggressive"]
    # a word may sit in two categories
    assert set(df.loc[df["word"] == "lazy", "category"]) == {"behavioral", "education and wealth"}
    assert D.sobit_categories(path)["n_words"].sum() == len(df) == 441
    with pytest.raises(UnknownNameError, match="appearance, behavioral"):
        D.sobit_words("hobbies", path)


def test_sobit_bad_files(tmp_path):
    f = tmp_path / "So-B-IT_taxonomy.json"
    f.write_text(json.dumps({"appearance": "tall"}))
    with pytest.raises(DataError, match="list of non-empty words"):
        D.load_sobit(f, verify=False)
    f.write_text(json.dumps({"behavorial": ["calm"], "behavioral": ["warm"]}))
    with pytest.raises(DataError, match="appears twice"):
        D.load_sobit(tmp_path, verify=False)
    f.write_text("{not json")
    with pytest.raises(DataError, match="cannot read"):
        D.load_sobit(f, verify=False)
    with pytest.raises(DataError, match="not found"):
        D.load_sobit(tmp_path / "missing.json")


# ------------------------------------------------------------------ fetching the others

SCF_FILES = ["metadata_race_gender.csv", "metadata_physical_gender.csv",
             "metadata_physical_race.csv"]
#: name -> (fetch function, folder in ../shared/data, manifest, its files)
OTHERS = {
    "socialcf": (D.fetch_socialcf, "socialcounterfactuals", "socialcf.sha256", SCF_FILES),
    "sobit": (D.fetch_sobit, "sobit", "sobit.sha256", ["So-B-IT_taxonomy.json"]),
}
UNREACHABLE = "file:///nonexistent-fairvlm-mirror/"


def _manifest(name: str) -> dict[str, str]:
    return fetch_mod.read_manifest(fetch_mod.manifest_path(OTHERS[name][2]))


def _bad_copy(shared: Path, name: str, tmp_path: Path) -> tuple[Path, str]:
    """A copy of the shared files with one of them altered (one byte flipped)."""
    _, folder, _, files = OTHERS[name]
    src = tmp_path / "bad-source"
    shutil.copytree(shared / "data" / folder, src)
    for f in src.iterdir():
        f.chmod(0o644)
    victim = files[-1]
    data = (src / victim).read_bytes()
    (src / victim).write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    return src, victim


@pytest.mark.parametrize("name", OTHERS)
def test_manifests_pin_exactly_the_shared_files(shared, name):
    _, folder, _, files = OTHERS[name]
    manifest = _manifest(name)
    assert sorted(manifest) == sorted(files)
    for rel, digest in manifest.items():
        assert D.sha256_file(shared / "data" / folder / rel) == digest


@pytest.mark.parametrize("name", OTHERS)
def test_fetch_from_file_url_gives_a_verified_loadable_copy(shared, name, tmp_path):
    fetch, folder, _, files = OTHERS[name]
    dest = tmp_path / "out" / folder
    assert fetch(dest, base_url=(shared / "data" / folder).as_uri(), progress=False) == dest
    # only the manifest's files (no SOURCE.md or licence from the shared folder) + SHA256SUMS
    assert sorted(p.name for p in dest.iterdir()) == sorted(files + ["SHA256SUMS"])
    assert {f: D.sha256_file(dest / f) for f in files} == _manifest(name)
    assert not _leftovers(dest.parent, folder)
    if name == "socialcf":
        assert D.set_statistics(D.load_socialcounterfactuals("physical_race", dest))[
            "n_sets"].item() == 836
    else:
        assert len(D.load_sobit(dest)) == 441


@pytest.mark.parametrize("name", OTHERS)
def test_corrupted_source_fails_naming_the_file_and_leaves_nothing(shared, name, tmp_path):
    fetch, folder, _, files = OTHERS[name]
    src, victim = _bad_copy(shared, name, tmp_path)
    dest = tmp_path / "out" / folder
    for kwargs in ({"base_url": src.as_uri()}, {"source": src}):
        with pytest.raises(DataError, match=re.escape(victim)) as err:
            fetch(dest, progress=False, **kwargs)
        assert "nothing was written" in str(err.value)
        assert all(f not in str(err.value) for f in files if f != victim)
        assert not dest.exists() and not _leftovers(dest.parent, folder)


@pytest.mark.parametrize("name", OTHERS)
def test_verified_dest_is_returned_untouched(shared, name, tmp_path):
    fetch, folder, _, files = OTHERS[name]
    dest = fetch(tmp_path / folder, source=shared / "data" / folder, progress=False)
    stamps = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    # nothing is downloaded: an unreachable URL does not matter
    assert fetch(dest, base_url=UNREACHABLE, progress=False) == dest
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == stamps
    # a damaged copy is not "verified": refused, then replaced only with overwrite
    (dest / files[0]).write_text("damaged")
    with pytest.raises(DataError, match=rf"(?s)already exists.*{re.escape(files[0])}.*overwrite"):
        fetch(dest, source=shared / "data" / folder, progress=False)
    assert (dest / files[0]).read_text() == "damaged"
    fetch(dest, source=shared / "data" / folder, overwrite=True, progress=False)
    assert D.sha256_file(dest / files[0]) == _manifest(name)[files[0]]


def test_default_urls_are_the_pinned_raw_files(tmp_path, monkeypatch):
    urls = []

    def offline(url, timeout):
        urls.append(url)
        raise URLError("no network")

    monkeypatch.setattr(fetch_mod, "_urlopen", offline)
    for fetch, folder in ((D.fetch_socialcf, "scf"), (D.fetch_sobit, "sobit")):
        with pytest.raises(DataError, match=r"could not download .*no network"):
            fetch(tmp_path / folder, progress=False)
        assert not (tmp_path / folder).exists()
    assert urls == [
        "https://raw.githubusercontent.com/IntelLabs/multimodal_cognitive_ai/"
        "d1f2acc39b686f56dff1fd24cecb4f28640d39ad/Uncovering_LVLM_Bias/metadata/"
        "metadata_race_gender.csv",
        "https://raw.githubusercontent.com/ameliagmz/Debiasing_CLIP_Neural_Interventions/"
        "cc90ab99a1191ddf9e8c5c4ec644158d4d077c2d/So-B-IT_taxonomy.json",
    ]


def test_fetch_accepts_a_clone_of_the_socialcf_repository(shared, tmp_path):
    clone = tmp_path / "multimodal_cognitive_ai"
    shutil.copytree(shared / "data" / "socialcounterfactuals",
                    clone / "Uncovering_LVLM_Bias" / "metadata")
    dest = D.fetch_socialcf(tmp_path / "scf", source=clone, progress=False)
    assert {f: D.sha256_file(dest / f) for f in SCF_FILES} == _manifest("socialcf")


# ------------------------------------------------------------------ the fetch command


@pytest.fixture()
def found_nowhere(no_defaults, monkeypatch):
    """No dataset found by the loaders (the manifests still come from the checkout)."""
    for var in ("FAIRVLM_SOCIALCF", "FAIRVLM_SOBIT"):
        monkeypatch.delenv(var, raising=False)
    return no_defaults


def test_cli_fetch_one_and_all(shared, found_nowhere, tmp_path, capsys):
    dest = tmp_path / "one"
    assert cli(["fetch", "sobit", str(dest), "--base-url",
                (shared / "data" / "sobit").as_uri()]) == 0
    assert "So-B-IT taxonomy is at" in capsys.readouterr().out
    assert len(D.load_sobit(dest)) == 441
    parent = tmp_path / "all"
    assert cli(["fetch", "all", str(parent), "--source", str(shared / "data")]) == 0
    out = capsys.readouterr().out
    assert out.count("(all files verified)") == 3
    assert D.verify_pairs(parent / "pairs") == 200
    assert D.sobit_path(parent / "sobit").parent == parent / "sobit"
    assert {f: D.sha256_file(parent / "socialcounterfactuals" / f) for f in SCF_FILES} == (
        _manifest("socialcf"))


def test_cli_if_missing_skips_what_the_loaders_find(shared, found_nowhere, tmp_path,
                                                    monkeypatch, capsys):
    data = shared / "data"
    monkeypatch.setenv("FAIRVLM_PAIRS", str(data / "pairs"))
    monkeypatch.setenv("FAIRVLM_SOCIALCF", str(data / "socialcounterfactuals"))
    monkeypatch.setenv("FAIRVLM_SOBIT", str(data / "sobit"))
    parent = tmp_path / "dest"
    assert cli(["fetch", "all", str(parent), "--if-missing", "--base-url", UNREACHABLE]) == 2
    assert cli(["fetch", "all", str(parent), "--if-missing"]) == 0
    out = capsys.readouterr().out
    for folder in ("pairs", "socialcounterfactuals", "sobit"):
        assert re.search(rf"found at {re.escape(str(data / folder))}\b.*not fetched", out)
    assert not parent.exists()
    # without the variable nothing finds So-B-IT: only it is fetched
    monkeypatch.delenv("FAIRVLM_SOBIT")
    assert cli(["fetch", "all", str(parent), "--if-missing", "--source", str(data)]) == 0
    out = capsys.readouterr().out
    assert "So-B-IT taxonomy is at" in out and out.count("not fetched") == 2
    assert sorted(p.name for p in parent.iterdir()) == ["sobit"]


def test_cli_unknown_name_lists_the_known_ones(capsys):
    assert cli(["fetch", "coco", "--best-effort"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("error: unknown dataset 'coco'; choose one of: "
                           "all, pairs, sobit, socialcf")


def test_cli_best_effort_reports_what_is_skipped(shared, found_nowhere, tmp_path, capsys,
                                                 monkeypatch):
    dest = tmp_path / "scf"
    args = ["fetch", "socialcf", str(dest), "--base-url", UNREACHABLE]
    assert cli(args) == 2
    err = capsys.readouterr().err
    assert re.search(r"^error: could not download .*metadata_race_gender.csv", err, re.M)
    assert cli(args + ["--best-effort"]) == 0
    err = capsys.readouterr().err
    warnings = re.findall(r"^warning: .*$", err, re.M)
    assert len(warnings) == 1
    assert re.fullmatch(r"warning: SocialCounterfactuals metadata not fetched \(could not "
                        r"download .*\); chapter 00 .* chapters 01-03 .*\. Fetch it later "
                        r"with: python -m fairvlm\.data fetch socialcf", warnings[0])
    assert "Traceback" not in err and not dest.exists()

    # `make data`: the found ones are skipped, the failed one is one warning line
    data = shared / "data"
    monkeypatch.setenv("FAIRVLM_PAIRS", str(data / "pairs"))
    monkeypatch.setenv("FAIRVLM_SOCIALCF", str(data / "socialcounterfactuals"))
    monkeypatch.setitem(cli_mod.DATASETS, "sobit", dataclasses.replace(
        cli_mod.DATASETS["sobit"], fetch=functools.partial(D.fetch_sobit, base_url=UNREACHABLE)))
    parent = tmp_path / "data"
    assert cli(["fetch", "all", str(parent), "--if-missing", "--best-effort"]) == 0
    captured = capsys.readouterr()
    assert captured.out.count("not fetched") == 2
    warnings = re.findall(r"^warning: .*$", captured.err, re.M)
    assert len(warnings) == 1 and warnings[0].startswith("warning: So-B-IT taxonomy not fetched")
    assert "chapter 07" in warnings[0] and "fetch sobit" in warnings[0]
    assert not (parent / "sobit").exists()
    assert cli(["fetch", "all", str(parent), "--if-missing"]) == 2
    assert "error: could not download" in capsys.readouterr().err
