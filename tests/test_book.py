"""Every chapter executed with PROFILE=smoke, compared with its nbval reference, then the
book built from those outputs.

The smoke run writes only under ``_build/smoke/`` (executed notebooks, results, figures,
the rendered book; see :func:`fairvlm.nbcheck.smoke_paths`), so the tests leave the book
that ``make book`` built -- ``results/``, ``figures/``, ``book/executed/`` -- as it was:
the last test checks that against a snapshot taken before the session started.
"""

from __future__ import annotations

import shutil
from html.parser import HTMLParser
from urllib.parse import urlparse

import pytest

from fairvlm import bookbuild, nbcheck

ROOT = bookbuild.find_root()
CHAPTERS = bookbuild.chapter_sources(ROOT)
SMOKE = nbcheck.smoke_paths(ROOT)
EXECUTED: list = []


@pytest.fixture(scope="module")
def fresh_smoke_folders():
    """Nothing from an earlier session counts: the smoke folders start empty (once, before
    the first chapter executes)."""
    shutil.rmtree(ROOT / nbcheck.SMOKE, ignore_errors=True)


@pytest.mark.notebook
@pytest.mark.parametrize("source", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_runs_in_smoke_profile(source, fresh_smoke_folders):
    out = nbcheck.execute_smoke(ROOT, source)
    EXECUTED.append(out)
    assert out == SMOKE["executed"] / f"{source.stem}.ipynb" and out.exists()
    assert (SMOKE["results"] / f"{source.stem}.json").exists(), \
        f"{source.name} did not save its headline results"
    # what a reader should not see: warnings or bars on stderr, PosixPath('...') reprs
    assert not bookbuild.output_problems(out), bookbuild.output_problems(out)


@pytest.mark.notebook
@pytest.mark.parametrize("source", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_matches_its_nbval_reference(source):
    executed = SMOKE["executed"] / f"{source.stem}.ipynb"
    if executed not in EXECUTED:
        pytest.fail(f"{source.stem} did not execute in this session; nothing to compare")
    ref = ROOT / nbcheck.REFS / executed.name
    assert ref.is_file(), (f"no nbval reference {ref.relative_to(ROOT)}; write it on purpose with "
                           f"`make nbval-refs CHAPTERS={source.stem} FROM_SMOKE=1`")
    proc = nbcheck.run_nbval(ROOT, executed)
    assert proc.returncode == 0, (
        f"{source.stem}'s smoke outputs differ from {ref.relative_to(ROOT)} (nbval's report below). "
        f"If the change is intended, regenerate the reference: make nbval-refs "
        f"CHAPTERS={source.stem} FROM_SMOKE=1\n" + proc.stdout[-6000:] + proc.stderr[-2000:])


@pytest.mark.notebook
def test_unknown_profile_fails_at_the_parameters_cell(tmp_path):
    with pytest.raises(bookbuild.BuildError) as info:
        bookbuild.execute(ROOT, CHAPTERS[0], {"PROFILE": "laptop"}, out_dir=tmp_path,
                          results_dir=tmp_path / "results", figures_dir=tmp_path / "figures")
    msg = str(info.value)
    assert "valid profiles are" in msg and "'smoke'" in msg and "'paper'" in msg
    assert not (tmp_path / f"{CHAPTERS[0].stem}.ipynb").exists()


class _Scripts(HTMLParser):
    """Every address a page loads a script or a stylesheet from."""

    def __init__(self):
        super().__init__()
        self.loads: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.loads.append(a["src"])
        elif tag == "link" and "stylesheet" in (a.get("rel") or "") and a.get("href"):
            self.loads.append(a["href"])


def remote_loads(page) -> list[str]:
    """The scripts and stylesheets a built page fetches from another host."""
    parser = _Scripts()
    parser.feed(page.read_text(encoding="utf-8"))
    return [u for u in parser.loads if urlparse(u).scheme or urlparse(u).netloc]


def test_remote_loads_finds_scripts_and_styles_from_other_hosts(tmp_path):
    page = tmp_path / "p.html"
    page.write_text('<html><head><script src="../_static/mathjax/tex-chtml.js"></script>'
                    '<script>var inline = 1;</script>'
                    '<script defer src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js"></script>'
                    '<script src="//unpkg.com/x.js"></script>'
                    '<link rel="stylesheet" href="https://fonts.example.org/f.css">'
                    '<link rel="stylesheet" href="_static/styles/theme.css">'
                    '<a href="https://arxiv.org/abs/2505.23798">a link is not a load</a></head></html>')
    assert remote_loads(page) == ["https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-chtml.js",
                                  "//unpkg.com/x.js", "https://fonts.example.org/f.css"]


@pytest.mark.notebook
def test_book_builds_from_smoke_outputs():
    if len(EXECUTED) != len(CHAPTERS):
        pytest.fail("some chapters failed to execute; the book is built only from a full run")
    index = bookbuild.build_html(ROOT, EXECUTED, build_dir=SMOKE["book"])
    assert index == SMOKE["book"] / "_build" / "html" / "index.html" and index.exists()
    pages = [index.parent / "book" / "executed" / f"{nb.stem}.html" for nb in EXECUTED]
    assert all(p.exists() for p in pages)
    # math offline: MathJax is served with the book, and no page fetches code from a CDN
    assert (index.parent / "_static" / "mathjax" / "tex-chtml.js").is_file()
    for page in [index, *pages]:
        assert not remote_loads(page), (page.name, remote_loads(page))
    # a page with math loads the bundled MathJax
    math_page = index.parent / "book" / "executed" / "03_residual_discrepancy.html"
    assert "_static/mathjax/tex-chtml.js" in math_page.read_text(encoding="utf-8")


@pytest.mark.notebook
def test_tests_leave_the_book_alone(book_snapshot):
    """After the smoke run and its book build, ``results/``, ``figures/`` and
    ``book/executed/`` are as they were before the session (and the smoke run's own files
    are where it says)."""
    assert EXECUTED and all(SMOKE["executed"] in p.parents for p in EXECUTED)
    before, take = book_snapshot
    after = take()
    changed = {folder: sorted(set(before[folder].items()) ^ set(after[folder].items()))[:5]
               for folder in before if before[folder] != after[folder]}
    assert not changed, f"the tests wrote into the book's own folders: {changed}"
