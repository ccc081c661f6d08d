"""Every chapter executed with PROFILE=smoke, then the book built from those outputs.

The executed notebooks go to ``book/executed/`` (as with ``make book``), so the last test
renders exactly what the smoke runs produced, with warnings as errors.
"""

from __future__ import annotations

import pytest

from fairvlm import bookbuild

ROOT = bookbuild.find_root()
CHAPTERS = bookbuild.chapter_sources(ROOT)
EXECUTED: list = []


@pytest.mark.notebook
@pytest.mark.parametrize("source", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_runs_in_smoke_profile(source):
    out = bookbuild.execute(ROOT, source, {"PROFILE": "smoke"})
    EXECUTED.append(out)
    assert out.exists()
    assert (ROOT / "results" / f"{source.stem}.json").exists(), \
        f"{source.name} did not save its headline results"
    # what a reader should not see: warnings or bars on stderr, PosixPath('...') reprs
    assert not bookbuild.output_problems(out), bookbuild.output_problems(out)


@pytest.mark.notebook
def test_unknown_profile_fails_at_the_parameters_cell(tmp_path):
    with pytest.raises(bookbuild.BuildError) as info:
        bookbuild.execute(ROOT, CHAPTERS[0], {"PROFILE": "laptop"}, out_dir=tmp_path)
    msg = str(info.value)
    assert "valid profiles are" in msg and "'smoke'" in msg and "'paper'" in msg
    assert not (tmp_path / f"{CHAPTERS[0].stem}.ipynb").exists()


@pytest.mark.notebook
def test_book_builds_from_smoke_outputs():
    if len(EXECUTED) != len(CHAPTERS):
        pytest.fail("some chapters failed to execute; the book is built only from a full run")
    index = bookbuild.build_html(ROOT, EXECUTED)
    assert index.exists()
    for nb in EXECUTED:
        assert (index.parent / "book" / "executed" / f"{nb.stem}.html").exists()
