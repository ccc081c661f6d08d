"""The nbval regression check on constructed notebooks: which outputs it keeps, and that nbval
passes a faithful smoke run and fails one that moved a checked number."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from fairvlm import nbcheck

ROOT = Path(__file__).resolve().parents[1]


def glue_out(name, text):
    return new_output("display_data", data={nbcheck.GLUE_PREFIX + "text/plain": text,
                                            nbcheck.GLUE_PREFIX + "image/png": "iVBOR"},
                      metadata={"scrapbook": {"name": name, "mime_prefix": nbcheck.GLUE_PREFIX}})


def chapter(n_reproduced="3", runtime="41", table="claim  verdict\nA      reproduced", extra=0):
    """A small executed chapter: a plain cell, a verdict cell, a glue cell."""
    cells = [
        new_markdown_cell("# A chapter"),
        new_code_cell("x = load()", execution_count=1, outputs=[
            new_output("stream", name="stdout", text="loaded 12 rows in 3.2 s\n")]),
        new_code_cell("vt = verdict_table(rows)\ndisplay(vt)", execution_count=2, outputs=[
            new_output("display_data", data={"text/plain": table, "image/png": "iVBOR"}),
            new_output("execute_result", data={"text/plain": "<Styler at 0x7f00aa>"},
                       execution_count=2)]),
        new_code_cell('glue("n_reproduced", n)\nglue("runtime", t)', execution_count=3, outputs=[
            glue_out("n_reproduced", f"'{n_reproduced}'"), glue_out("runtime", f"'{runtime}'"),
            new_output("display_data", data={"text/html": "<p>timing table</p>"})]),
    ] + [new_code_cell("pass", execution_count=4 + i) for i in range(extra)]
    return new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "language": "python",
                                                              "display_name": "Python 3"}})


def write(nb, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_checked_outputs_keep_verdicts_and_glued_numbers_only():
    nb = chapter()
    plain, verdict, glued = nb.cells[1:]
    assert nbcheck.checked_outputs(plain) is None
    got = nbcheck.checked_outputs(verdict)
    assert [o["data"] for o in got] == [{"text/plain": "claim  verdict\nA      reproduced"},
                                        {"text/plain": "<Styler at 0x7f00aa>"}]
    got = nbcheck.checked_outputs(glued)  # the timing table beside the glue is not compared
    assert [o["data"] for o in got] == [{"text/plain": "n_reproduced = '3'"},
                                        {"text/plain": "runtime = '41'"}]
    glued.metadata["tags"] = [nbcheck.IGNORE_TAG]
    assert nbcheck.checked_outputs(glued) is None
    plain.metadata["tags"] = [nbcheck.CHECK_TAG]
    assert nbcheck.checked_outputs(plain)[0]["text"] == "loaded 12 rows in 3.2 s\n"


def test_reference_is_small_and_marks_the_checked_cells(tmp_path):
    ref = nbcheck.reference(write(chapter(), tmp_path / "01_a.ipynb"))
    assert [c.cell_type for c in ref.cells] == ["code"] * 3
    assert [c.metadata.get("tags", []) for c in ref.cells] == [[], [nbcheck.CHECK_TAG], [nbcheck.CHECK_TAG]]
    assert ref.cells[0].outputs == [] and ref.cells[0].execution_count == 1
    assert "image/png" not in nbformat.writes(ref)
    nbformat.validate(ref)


def test_nbval_passes_a_faithful_run_and_fails_a_moved_number(tmp_path):
    ref = write(nbcheck.reference(write(chapter(), tmp_path / "ref_src" / "01_a.ipynb")),
                tmp_path / "refs" / "01_a.ipynb")
    # timings, addresses and the lax cells may change
    same = write(chapter(runtime="97"), tmp_path / "same" / "01_a.ipynb")
    proc = nbcheck.run_nbval(ROOT, same, ref, tmp_path / "work1")
    assert proc.returncode == 0, proc.stdout
    # a glued number and a verdict moved: both cells fail, the plain cell passes
    moved = write(chapter(n_reproduced="2", table="claim  verdict\nA      partly"),
                  tmp_path / "moved" / "01_a.ipynb")
    proc = nbcheck.run_nbval(ROOT, moved, ref, tmp_path / "work2")
    assert proc.returncode == 1
    assert "2 failed, 1 passed" in proc.stdout
    assert "n_reproduced = '2'" in proc.stdout and "A      partly" in proc.stdout


def test_a_chapter_that_changed_shape_asks_for_a_new_reference(tmp_path):
    ref = write(nbcheck.reference(write(chapter(), tmp_path / "a" / "01_a.ipynb")),
                tmp_path / "refs" / "01_a.ipynb")
    grown = write(chapter(extra=1), tmp_path / "b" / "01_a.ipynb")
    with pytest.raises(nbcheck.NbCheckError, match="4 code cells and its reference .* has 3"):
        nbcheck.replay_notebook(ref, grown, tmp_path / "work")
    with pytest.raises(nbcheck.NbCheckError, match="no nbval reference"):
        nbcheck.run_nbval(ROOT, grown, tmp_path / "refs" / "missing.ipynb")


def test_refs_command_rejects_a_missing_smoke_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(nbcheck, "SMOKE", tmp_path / "nothing-here")
    assert nbcheck.main(["refs", "--chapters", "02", "--from-smoke"]) == 2
    err = capsys.readouterr().err
    assert "no smoke run of 02_layer_fluctuation" in err and "make test" in err
    assert nbcheck.main(["check", "--chapters", "99"]) == 2
    assert "no chapter matches '99'" in capsys.readouterr().err
