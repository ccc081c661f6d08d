"""The book's execution cache (fairvlm.bookbuild): a chapter is executed again only when an input
changed. On a small book made in a temporary folder: two tiny chapters and a tiny library."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest

from fairvlm import bookbuild

ROOT = Path(__file__).resolve().parents[1]

CHAPTER = textwrap.dedent('''\
    # %% tags=["parameters"]
    PROFILE = "embedded"
    SEED = 0
    # %%
    import json, os
    from pathlib import Path
    {imports}
    out = Path(os.environ.get("FAIRVLM_RESULTS", "results"))
    out.mkdir(exist_ok=True)
    (out / "{stem}.json").write_text(json.dumps({{"profile": PROFILE, "seed": SEED}}))
    print("{stem} ran")
    ''')


@pytest.fixture()
def book(tmp_path, monkeypatch):
    """A book root (``_config.yml``, ``notebooks/``, ``data/``) and a library ``lib/fairvlm`` where
    ``01_a`` imports ``fairvlm.alpha`` (which imports ``fairvlm.gamma`` lazily) and ``02_b``
    imports ``fairvlm.beta``."""
    (tmp_path / "_config.yml").write_text("title: t\n")
    nbs = tmp_path / "notebooks"
    nbs.mkdir()
    (nbs / "01_a.py").write_text(CHAPTER.format(stem="01_a", imports="from fairvlm import alpha  # noqa"))
    (nbs / "02_b.py").write_text(CHAPTER.format(stem="02_b", imports="import fairvlm.beta  # noqa"))
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "spec.yaml").write_text("strength: 1\n")
    lib = tmp_path / "lib" / "fairvlm"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("")
    (lib / "alpha.py").write_text("def f():\n    from fairvlm import gamma\n    return gamma.X\n")
    (lib / "beta.py").write_text("Y = 2\n")
    (lib / "gamma.py").write_text("X = 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FAIRVLM_RESULTS", str(tmp_path / "results"))
    monkeypatch.delenv("FAIRVLM_WORLD", raising=False)
    return tmp_path, lib


def plan(root: Path, lib: Path, params=None) -> dict[str, str | None]:
    """chapter -> None (reused) or why it would be executed."""
    out = {}
    for src in bookbuild.chapter_sources(root):
        inputs = bookbuild.chapter_inputs(root, src, params or {}, lib=lib)
        nb, why = bookbuild.cached_run(root, src, inputs)
        out[src.stem] = None if nb is not None else why
    return out


def fake_execute(root: Path, lib: Path, params=None) -> None:
    """What a run leaves: an executed notebook, the chapter's results file, the key record."""
    exe = root / bookbuild.EXECUTED
    exe.mkdir(parents=True, exist_ok=True)
    for src in bookbuild.chapter_sources(root):
        nb = exe / f"{src.stem}.ipynb"
        nb.write_text(json.dumps({"cells": [], "source": src.read_text()}))
        (root / "results").mkdir(exist_ok=True)
        (root / "results" / f"{src.stem}.json").write_text("{}")
        bookbuild.record_key(root, nb, bookbuild.chapter_inputs(root, src, params or {}, lib=lib))


def test_the_closure_follows_lazy_imports_and_parent_packages(book):
    root, lib = book
    got = bookbuild.library_closure((root / "notebooks" / "01_a.py").read_text(), lib)
    assert set(got) == {"fairvlm", "fairvlm.alpha", "fairvlm.gamma"}
    got = bookbuild.library_closure((root / "notebooks" / "02_b.py").read_text(), lib)
    assert set(got) == {"fairvlm", "fairvlm.beta"}


def test_the_real_chapters_depend_on_the_modules_they_use():
    src = (ROOT / "notebooks" / "00_data.py").read_text()
    mods = bookbuild.library_closure(src)
    assert "fairvlm.data.pairs" in mods and "fairvlm.lens" not in mods
    mods = bookbuild.library_closure((ROOT / "notebooks" / "07_clip_heads.py").read_text())
    # models imports the testbed through importlib with a string constant: still followed
    assert "fairvlm.clip_heads" in mods and "fairvlm.testbed.train" in mods


def test_nothing_changed_means_nothing_runs(book):
    root, lib = book
    assert all(plan(root, lib).values())          # nothing executed yet
    fake_execute(root, lib)
    assert plan(root, lib) == {"01_a": None, "02_b": None}


def test_editing_one_chapter_reruns_that_chapter_only(book):
    root, lib = book
    fake_execute(root, lib)
    src = root / "notebooks" / "02_b.py"
    src.write_text(src.read_text() + "\n# a new cell\nx = 1\n")
    got = plan(root, lib)
    assert got["01_a"] is None and "source" in got["02_b"]


def test_editing_a_library_module_reruns_every_chapter_that_imports_it(book):
    root, lib = book
    fake_execute(root, lib)
    (lib / "gamma.py").write_text("X = 3\n")      # imported by alpha, lazily
    got = plan(root, lib)
    assert "fairvlm.gamma" in got["01_a"] and got["02_b"] is None
    fake_execute(root, lib)
    (lib / "__init__.py").write_text("VERSION = 2\n")      # every chapter imports the package
    assert all(plan(root, lib).values())


def test_a_changed_parameter_or_world_is_not_served_from_the_cache(book, monkeypatch):
    root, lib = book
    fake_execute(root, lib, {"PROFILE": "smoke"})
    assert plan(root, lib, {"PROFILE": "smoke"}) == {"01_a": None, "02_b": None}
    assert all("params" in why for why in plan(root, lib, {"PROFILE": "embedded"}).values())
    monkeypatch.setenv("FAIRVLM_WORLD", "strength-0")
    assert all("env" in why for why in plan(root, lib, {"PROFILE": "smoke"}).values())
    monkeypatch.delenv("FAIRVLM_WORLD")
    # where results are written is not an input
    monkeypatch.setenv("FAIRVLM_CACHE", str(root / "elsewhere"))
    assert plan(root, lib, {"PROFILE": "smoke"}) == {"01_a": None, "02_b": None}


def test_a_changed_data_manifest_reruns_every_chapter(book):
    root, lib = book
    fake_execute(root, lib)
    (root / "data" / "spec.yaml").write_text("strength: 0\n")
    assert all("data" in why for why in plan(root, lib).values())


def test_a_rebuilt_shipped_artifact_reruns_the_chapters(book):
    root, lib = book
    art = root / "data" / "artifacts" / "06_x" / "sae_weights.safetensors"
    art.parent.mkdir(parents=True)
    art.write_bytes(b"weights v1")
    fake_execute(root, lib)
    assert set(plan(root, lib).values()) == {None}
    art.write_bytes(b"weights v2")                 # retrained: the chapters must run again
    assert all("data" in why for why in plan(root, lib).values())


def test_missing_or_edited_outputs_are_not_trusted(book):
    root, lib = book
    fake_execute(root, lib)
    (root / "results" / "01_a.json").unlink()
    (root / bookbuild.EXECUTED / "02_b.ipynb").write_text("{}")
    got = plan(root, lib)
    assert "results/01_a.json" in got["01_a"] and "edited" in got["02_b"]
    fake_execute(root, lib)
    (root / bookbuild.EXECUTED / ".01_a.key.json").write_text("{broken")
    assert "unreadable" in plan(root, lib)["01_a"]


@pytest.mark.notebook
def test_a_second_build_with_nothing_changed_executes_no_chapter(book, monkeypatch, capsys):
    """End to end through the command line, with papermill executing the tiny chapters."""
    root, lib = book
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(lib.parent), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setattr(bookbuild, "chapter_inputs",
                        lambda r, s, p, lib_=lib, f=bookbuild.chapter_inputs: f(r, s, p, lib=lib_))
    assert bookbuild.main(["--no-html"]) == 0
    first = capsys.readouterr().out
    assert "2 of 2 chapter(s) executed" in first
    assert json.loads((root / "results" / "01_a.json").read_text()) == {"profile": "embedded", "seed": 0}

    def refuse(*a, **k):
        raise AssertionError("a chapter was executed although nothing changed")

    monkeypatch.setattr(bookbuild, "execute", refuse)
    assert bookbuild.main(["--no-html"]) == 0
    second = capsys.readouterr().out
    assert "0 of 2 chapter(s) executed, 2 reused" in second and "reusing 01_a.py: unchanged" in second
    monkeypatch.undo()


def test_force_and_html_only_contradict(book):
    assert bookbuild.main(["--force", "--html-only"]) == 2
