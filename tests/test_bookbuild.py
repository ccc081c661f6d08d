"""The build pipeline's small pieces, on constructed notebooks (no kernel is started)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from fairvlm import bookbuild

ROOT = Path(__file__).resolve().parents[1]


def test_every_chapter_lists_profile_and_seed_as_parameters():
    for src in bookbuild.chapter_sources(ROOT):
        names = bookbuild.chapter_parameters(src)
        assert "PROFILE" in names and "SEED" in names, src.name


def test_parameters_are_passed_only_to_the_chapters_that_take_them(tmp_path):
    a, b = tmp_path / "01_a.py", tmp_path / "02_b.py"
    head = '# %% tags=["parameters"]\n'
    a.write_text(head + 'PROFILE = "embedded"\nSEED = 0\nALPHA = 0.5\n')
    b.write_text(head + 'PROFILE = "embedded"\nSEED: int = 0\n')
    got = bookbuild.check_known_params([a, b], {"PROFILE": "smoke", "ALPHA": 0.1})
    assert got == {a: {"PROFILE": "smoke", "ALPHA": 0.1}, b: {"PROFILE": "smoke"}}


def test_validation_cells_are_collapsed_not_removed():
    nb = new_notebook(cells=[
        new_code_cell('PROFILE = "embedded"', metadata={"tags": ["parameters"]}),
        new_code_cell("P = check_params(PROFILE=PROFILE, SEED=SEED)\ncheck_range('K', K, 1)"),
        new_code_cell("x = 1"),
        new_code_cell("P = check_params(PROFILE=PROFILE, SEED=SEED)", metadata={"tags": ["remove-input"]}),
        new_markdown_cell("check_params( in prose"),
    ])
    assert bookbuild.collapse_validation(nb) == 1
    assert [c.metadata.get("tags") for c in nb.cells] == [
        ["parameters"], ["hide-input"], None, ["remove-input"], None]
    assert "check_range" in nb.cells[1].source  # still there to copy


def test_output_problems_finds_stderr_and_path_reprs(tmp_path):
    nb = new_notebook(cells=[
        new_code_cell("ok", outputs=[new_output("stream", name="stdout", text="fine\n")]),
        new_code_cell("warn", outputs=[new_output("stream", name="stderr", text="RuntimeWarning: x\n")]),
        new_code_cell("fig", outputs=[new_output("execute_result", data={
            "text/plain": "PosixPath('figures/07_x.png')"}, execution_count=3)]),
    ])
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    problems = bookbuild.output_problems(path)
    assert len(problems) == 2
    assert problems[0].startswith("code cell 2: stderr") and "RuntimeWarning" in problems[0]
    assert problems[1] == "code cell 3: an output shows a PosixPath repr"


def test_heartbeat_names_the_running_cell(tmp_path, capsys):
    partial = tmp_path / ".01_a.partial.ipynb"
    src = tmp_path / "01_a.py"
    beat = bookbuild._Heartbeat(src, partial, 0.05)
    assert "starting" in beat._line(time.time())  # nothing written yet
    nb = new_notebook(cells=[
        new_code_cell("a = 1", metadata={"papermill": {"status": "completed"}}),
        new_markdown_cell("text"),
        new_code_cell("# train\ntb = testbed.build('full')", metadata={"papermill": {"status": "running"}}),
        new_code_cell("b = 2", metadata={"papermill": {"status": "pending"}}),
    ])
    partial.write_text(json.dumps(nb))
    line = beat._line(time.time() - 42)
    assert line == "[book]   01_a: code cell 2/3 running (\"tb = testbed.build('full')\"); 42 s so far"
    with beat:
        time.sleep(0.3)
    printed = capsys.readouterr().out.splitlines()
    assert printed and all("code cell 2/3 running" in p for p in printed)
    partial.write_text("{half a notebo")  # papermill mid-write: no crash
    assert "starting" in beat._line(time.time())
