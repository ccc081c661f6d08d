"""Parameters, results files, figures and the book pipeline's argument handling."""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import pytest

from fairvlm import bookbuild
from fairvlm.errors import FairVLMError
from fairvlm.params import PROFILES, ParameterError, check_choice, check_params, check_range
from fairvlm.plotting import savefig, set_theme
from fairvlm.results import save_results


def test_check_params_accepts_every_profile():
    for profile in PROFILES:
        assert check_params(PROFILE=profile, SEED=3, N=2).as_dict() == {
            "PROFILE": profile, "SEED": 3, "N": 2}


def test_unknown_profile_lists_the_valid_ones():
    with pytest.raises(ParameterError) as info:
        check_params(PROFILE="laptop", SEED=0)
    msg = str(info.value)
    assert "'laptop'" in msg and all(repr(p) in msg for p in PROFILES)


@pytest.mark.parametrize("seed", [-1, 1.5, "0", True])
def test_bad_seed(seed):
    with pytest.raises(ParameterError, match="SEED"):
        check_params(PROFILE="smoke", SEED=seed)


def test_choice_and_range():
    assert check_choice("ATTR", "race", ["gender", "race"]) == "race"
    with pytest.raises(ParameterError, match="'gender', 'race'"):
        check_choice("ATTR", "age", ["gender", "race"])
    assert check_range("ALPHA", 0.6, 0, 1) == 0.6
    with pytest.raises(ParameterError, match=r"\[0, 1\]"):
        check_range("ALPHA", 1.5, 0, 1)


def test_save_results_writes_json_and_tables(tmp_outputs):
    P = check_params(PROFILE="smoke", SEED=0)
    df = pd.DataFrame({"item": [1, 2], "score": [0.5, 0.25]})
    path = save_results("99_demo", params=P, headline={"fair": 0.75},
                        provenance={"models": ["m"], "data": ["d"]}, tables={"items": df})
    record = json.loads(path.read_text())
    assert record["headline"] == {"fair": 0.75}
    assert record["params"] == {"PROFILE": "smoke", "SEED": 0}
    assert record["packages"]["torch"]
    assert pd.read_csv(path.parent / "99_demo" / "items.csv").equals(df)
    # as a cell's last value it shows nothing (no PosixPath('results/...') under the cell)
    assert path._ipython_display_() is None and isinstance(path, Path)


def test_save_results_leaves_nothing_on_failure(tmp_outputs):
    out = tmp_outputs / "results"
    with pytest.raises(FairVLMError):
        save_results("99_bad", params={}, headline={"x": 1},
                     provenance={"models": [], "data": []}, tables={"t": [1, 2]})
    assert not out.exists() or not any(out.iterdir())  # checked before anything is created
    with pytest.raises(FairVLMError, match="provenance"):
        save_results("99_bad", params={}, headline={}, provenance={"models": []})


def test_savefig_is_byte_stable(tmp_outputs):
    set_theme()
    pngs = []
    for i in range(2):
        fig, ax = plt.subplots()
        ax.plot([0, 1, 2], [1, 0, 1])
        png = savefig(fig, "99_demo_line", out_dir=tmp_outputs / f"f{i}", show=False)
        pngs.append(png)
    assert pngs[0].read_bytes() == pngs[1].read_bytes()
    assert pngs[0].with_suffix(".pdf").read_bytes() == pngs[1].with_suffix(".pdf").read_bytes()


def test_parse_params():
    assert bookbuild.parse_params('-p PROFILE paper -p SEED 3 -p ALPHA 0.5') == {
        "PROFILE": "paper", "SEED": 3, "ALPHA": 0.5}
    assert bookbuild.parse_params("") == {}
    with pytest.raises(FairVLMError, match="-p NAME VALUE"):
        bookbuild.parse_params("PROFILE=paper")


def test_select_chapters(tmp_path):
    names = ["00_data", "00_testbed", "07_clip_heads"]
    sources = [tmp_path / f"{n}.py" for n in names]
    assert bookbuild.select(sources, "all") == sources
    assert [p.stem for p in bookbuild.select(sources, "00")] == ["00_data", "00_testbed"]
    assert [p.stem for p in bookbuild.select(sources, "07,00_data")] == ["00_data", "07_clip_heads"]
    with pytest.raises(FairVLMError, match="07_clip_heads"):
        bookbuild.select(sources, "42")


def test_deepspeed_cpu_probe_warning_is_dropped_and_its_other_messages_are_kept():
    # deepspeed, imported by accelerate on every save_pretrained, prints a warning on a
    # machine without a GPU; once fairvlm is imported, that one line no longer reaches the
    # chapters' output, and deepspeed's other warnings still do
    import subprocess
    import sys

    pytest.importorskip("deepspeed")
    code = ("import fairvlm, torch, deepspeed\n"
            "from deepspeed.accelerator import get_accelerator\n"
            "from deepspeed.utils import logger\n"
            "print(get_accelerator()._name if not torch.cuda.is_available() else 'cpu')\n"
            "logger.warning('another deepspeed warning')\n")
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "cpu" in out.stdout
    assert "Setting accelerator to CPU" not in out.stdout + out.stderr
    assert "another deepspeed warning" in out.stdout + out.stderr


def test_progress_bars_are_off_in_batch_builds(monkeypatch):
    from fairvlm import progress

    monkeypatch.setenv("FAIRVLM_PROGRESS", "0")
    assert not progress.interactive()
    b = progress.bar(range(3))
    assert b.disable and not b.leave
    assert list(b) == [0, 1, 2]
    monkeypatch.setenv("FAIRVLM_PROGRESS", "1")
    assert progress.interactive() and not progress.bar(range(2)).disable


def test_display_path_never_prints_an_absolute_path(tmp_path, monkeypatch):
    from fairvlm.paths import display_path, repo_root

    root = repo_root()
    if root is not None:
        assert display_path(root / "results" / "x.json") == "results/x.json"
    monkeypatch.setenv("FAIRVLM_RESULTS", str(tmp_path / "res"))
    monkeypatch.chdir(tmp_path.parent)
    shown = display_path(tmp_path / "res" / "07.json")
    assert not shown.startswith("/")
    elsewhere = Path("/nonexistent-fairvlm-dir/deep/file.json")
    assert display_path(elsewhere) == "file.json"
