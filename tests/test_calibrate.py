"""fairvlm.calibrate on constructed results: what counts as a false positive, the record,
the Paper vs this book page, and the command line (without executing any chapter)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest

from fairvlm import calibrate
from fairvlm.errors import FairVLMError
from fairvlm.results import save_results
from fairvlm.verdicts import Claim, Estimate, apply_rule, decide, verdict_table

BIAS = Claim("the model leans to a group", "bias", min_effect=0.05)
DEBIAS = Claim("the method lowers the bias", "debias", direction="less", min_effect=0.05)
SAME = Claim("utility does not move", "no-change", direction="within", tol=0.02)


def _v(claim, diff):
    lo, hi = diff
    mid = (lo + hi) / 2
    return apply_rule(claim, Estimate(mid, lo, hi, 30), Estimate(0.0, -0.01, 0.01, 30), Estimate(mid, lo, hi, 30))


def _write_world(results: Path, *, planted: bool):
    """Two chapters: one with a real model and a testbed model, one all-testbed with an
    older-rule table."""
    big = (0.2, 0.3) if planted else (-0.01, 0.01)
    rows = [
        {"cell": "testbed-llava, testbed, gender", "verdict": _v(BIAS, big)},
        {"cell": "smollm2-135m-instruct, pairs, gender", "verdict": _v(BIAS, (0.2, 0.3))},   # a real model's bias
        {"cell": "testbed-llava, testbed, race", "verdict": _v(SAME, (-0.01, 0.01))},
    ]
    save_results("01_first", params={}, headline={}, provenance={"models": ["smollm2-135m-instruct", "testbed-llava"],
                                                                 "data": ["x"]},
                 tables={"verdicts": verdict_table(rows)}, out_dir=results)
    legacy = verdict_table([
        {"claim": "Table 2: the edit cuts NDKL", "verdict": decide(0.3, (0.2, 0.4), 0.0)},
        {"claim": "data: images present", "verdict": decide(0.3, (0.2, 0.4), 0.0)},
        {"claim": "Table 4: the edit lowers the skew", "verdict": _v(DEBIAS, (-0.3, -0.2) if planted else (-0.02, 0.02))},
    ])
    legacy.loc[1, "verdict"] = "partly (images absent)"
    save_results("07_last", params={}, headline={}, provenance={"models": ["testbed-clip"], "data": ["testbed"]},
                 tables={"paper_vs_book": legacy, "other": pd.DataFrame({"claim": ["x"], "value": [1]})},
                 out_dir=results)


def test_normalise_verdict():
    assert calibrate.normalise_verdict("partly (images absent)") == "partly"
    assert calibrate.normalise_verdict("not testable here: the filter is vague") == "not testable here"
    assert calibrate.normalise_verdict("Not reproduced") == "not reproduced"
    assert calibrate.normalise_verdict("reproduced") == "reproduced"
    assert calibrate.normalise_verdict("maybe") == "unknown"


def test_collect_and_count_false_positives(tmp_path):
    _write_world(tmp_path / "zero", planted=False)
    v = calibrate.collect_verdicts(tmp_path / "zero")
    assert len(v) == 6 and set(v["chapter"]) == {"01_first", "07_last"}
    real = v[v["cell"].str.startswith("smollm2")].iloc[0]
    assert not real["testbed"] and real["verdict"] == "reproduced" and real["bias_claim"]
    assert v[v["chapter"] == "07_last"]["testbed"].all()            # provenance: testbed only
    assert v.loc[v["raw"] == "partly (images absent)", "verdict"].item() == "partly"
    fp = calibrate.false_positives(v)
    # the real model's bias is no false positive; the no-change claim is none either; the two
    # older-rule "reproduced" rows on the testbed say nothing of what they claim: counted
    assert sorted(fp["claim"]) == ["Table 2: the edit cuts NDKL"]
    assert fp["bias_claim"].isna().all()
    assert "vs" in v.loc[v["cell"] == "testbed-llava, testbed, gender", "effect_vs_control"].item()


def test_summary_and_page(tmp_path):
    _write_world(tmp_path / "zero", planted=False)
    _write_world(tmp_path / "default", planted=True)
    worlds = {"strength-0": calibrate.collect_verdicts(tmp_path / "zero"),
              "default": calibrate.collect_verdicts(tmp_path / "default")}
    rec = calibrate.summarise(worlds, {"default": ["05_x"]}, profile="smoke", chapters=["01_first", "07_last"])
    assert rec["false_positives"] == 1 and rec["false_positives_unclassified"] == 1 and not rec["ok"]
    assert rec["default_counts"]["reproduced"] == 5   # testbed bias, real bias, no change, legacy NDKL, debias
    assert rec["worlds"]["strength-0"]["counts"]["not reproduced"] == 2
    assert rec["worlds"]["default"]["failed_chapters"] == ["05_x"]
    json.dumps(rec)                                            # writable as is
    page = calibrate.paper_vs_book(worlds, calibration=rec)
    assert page.startswith("# Paper vs this book")
    line = next(l for l in page.splitlines() if "testbed-llava, testbed, gender" in l)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == "01_first" and cells[-2] == "reproduced" and cells[-1] == "not reproduced"
    real = next(l for l in page.splitlines() if "smollm2" in l)
    assert real.rstrip(" |").endswith("reproduced (no testbed model)")
    assert "**1**" in page
    with pytest.raises(FairVLMError, match="default"):
        calibrate.paper_vs_book({"strength-0": worlds["strength-0"]})


def test_command_line_collect_only(tmp_path, monkeypatch):
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    work = tmp_path / "work"
    _write_world(work / "strength-0" / "results", planted=False)
    _write_world(work / "default" / "results", planted=True)
    out, page = tmp_path / "calibration.json", tmp_path / "pvb.md"
    args = ["--collect-only", "--work-dir", str(work), "--out", str(out), "--page", str(page)]
    assert calibrate.main(args) == 1                           # one false positive
    rec = json.loads(out.read_text())
    assert rec["false_positives"] == 1 and "| 07_last |" in page.read_text()
    # the record and the page say what produced them: a commit and a date
    assert rec["produced_by"]["commit"] and rec["produced_by"]["date"].endswith("UTC")
    assert f"commit `{rec['produced_by']['commit']}`" in page.read_text()
    assert set(rec["chapter_commits"]["default"]) == {"01_first", "07_last"}
    assert "01_first at `" in page.read_text()
    assert "Chapters not in this calibration run" in page.read_text()   # the book's real chapters
    # a world where nothing comes out reproduced on the testbed: green
    clean = tmp_path / "clean"
    _write_world(clean / "default" / "results", planted=True)
    v = clean / "strength-0" / "results"
    save_results("01_first", params={}, headline={}, provenance={"models": ["testbed-llava"], "data": ["x"]},
                 tables={"verdicts": verdict_table([{"cell": "testbed-llava", "verdict": _v(BIAS, (-0.01, 0.01))}])},
                 out_dir=v)
    assert calibrate.main(["--collect-only", "--work-dir", str(clean), "--out", str(out), "--page", ""]) == 0
    from fairvlm.errors import cli_main

    assert cli_main(calibrate.main, ["--collect-only", "--worlds", "flat-earth"]) == 2
    assert cli_main(calibrate.main, ["--collect-only", "--work-dir", str(tmp_path / "none")]) == 2


def test_run_world_sets_the_world_for_the_kernel(tmp_path, monkeypatch):
    from fairvlm import bookbuild

    seen = []

    def fake_execute(root, source, params, out_dir=None, heartbeat=None):
        seen.append((source.stem, os.environ.get("FAIRVLM_WORLD"), os.environ.get("FAIRVLM_RESULTS"),
                     params["PROFILE"], out_dir))
        if source.stem == "02_b":
            raise bookbuild.BuildError("cell 3 failed")
        return out_dir / f"{source.stem}.ipynb"

    monkeypatch.setattr(bookbuild, "execute", fake_execute)
    monkeypatch.delenv("FAIRVLM_WORLD", raising=False)
    results, failed = calibrate.run_world(tmp_path, "strength-0", [Path("01_a.py"), Path("02_b.py")],
                                          {"PROFILE": "smoke"}, tmp_path / "work")
    assert failed == ["02_b"]
    assert [s[1] for s in seen] == ["strength-0", "strength-0"]
    assert seen[0][2] == str((tmp_path / "work" / "strength-0" / "results").resolve()) == str(results.resolve())
    assert seen[0][3] == "smoke" and "FAIRVLM_WORLD" not in os.environ        # restored afterwards
