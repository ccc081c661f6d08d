"""The build pipeline's small pieces, on constructed notebooks (one test starts a kernel on a
two-cell chapter)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nbformat
import pytest
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


def test_execute_sends_outputs_where_asked_over_ipc(tmp_path, capfd, monkeypatch):
    """``results_dir`` / ``figures_dir`` reach the kernel as $FAIRVLM_RESULTS / $FAIRVLM_FIGURES
    (and are restored afterwards); the kernel talks over IPC sockets outside its working
    folder, so the build log has no "running over TCP without encryption" warning."""
    monkeypatch.setenv("FAIRVLM_RESULTS", "results-before")
    monkeypatch.delenv("FAIRVLM_FIGURES", raising=False)
    src = tmp_path / "notebooks" / "01_env.py"
    src.parent.mkdir()
    src.write_text('# %% tags=["parameters"]\nPROFILE = "embedded"\n\n# %%\nimport os\n'
                   'print(os.environ["FAIRVLM_RESULTS"], os.environ["FAIRVLM_FIGURES"], PROFILE)\n'
                   'print(sorted(os.listdir(".")))\n')
    out = bookbuild.execute(tmp_path, src, {"PROFILE": "smoke"}, results_dir=tmp_path / "r",
                            figures_dir=tmp_path / "f")
    assert out == tmp_path / "book" / "executed" / "01_env.ipynb"
    text = "".join(o.get("text", "") for c in nbformat.read(out, as_version=4).cells
                   if c.cell_type == "code" for o in c.outputs)
    assert text.splitlines()[0] == f"{tmp_path / 'r'} {tmp_path / 'f'} smoke"
    assert "kernel-ipc" not in text.splitlines()[1]  # no socket files in the kernel's cwd
    assert "without encryption" not in capfd.readouterr().err
    import os

    assert os.environ["FAIRVLM_RESULTS"] == "results-before" and "FAIRVLM_FIGURES" not in os.environ
    assert bookbuild.kernel_config(tmp_path).KernelManager.transport == "ipc"


def test_book_sources_copy_the_static_pages_and_the_chapters(tmp_path):
    root = tmp_path / "repo"
    (root / "book" / "executed").mkdir(parents=True)
    (root / "notebooks").mkdir()
    (root / "_config.yml").write_text("title: t\n")
    (root / "book" / "intro.md").write_text("# intro\n")
    (root / "book" / "executed" / "00_old.ipynb").write_text("{}")  # make book's: not copied
    nb = tmp_path / "smoke" / "01_a.ipynb"
    nb.parent.mkdir()
    nb.write_text("{}")
    dest = bookbuild.book_sources(root, [nb], root / "_build" / "smoke" / "src")
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == ["_config.yml", "book/executed/01_a.ipynb", "book/intro.md"]
    for bad in (root, root / "book", tmp_path):  # the book's own sources, or above them
        with pytest.raises(bookbuild.BuildError, match="overwrite the book's own sources"):
            bookbuild.book_sources(root, [nb], bad)
    assert (root / "book" / "executed" / "00_old.ipynb").exists()
