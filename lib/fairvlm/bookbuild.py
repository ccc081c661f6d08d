"""Notebook -> book pipeline: jupytext -> papermill -> Jupyter Book 1.x.

``python -m fairvlm.bookbuild [--chapters 00,07] [--params "-p PROFILE smoke"]``

1. each selected ``notebooks/NN_slug.py`` (jupytext percent format) becomes an ipynb;
2. papermill executes it, with the given parameters, from the repository root, and saves
   the executed notebook to ``book/executed/NN_slug.ipynb`` (gitignored). A failing cell
   stops the build with the notebook's name, the cell's number and its first line;
3. a table of contents with the static pages and the chapters just executed is written to
   ``_build/_toc.yml`` and Jupyter Book renders the HTML into ``_build/html`` with
   warnings as errors. The book never re-executes anything (``execute_notebooks: "off"``).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from fairvlm.errors import FairVLMError

EXECUTED = Path("book/executed")


class BuildError(FairVLMError):
    pass


def find_root(start: Path | None = None) -> Path:
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "_config.yml").is_file() and (d / "notebooks").is_dir():
            return d
    raise BuildError("run this from inside the book's repository (no _config.yml found)")


def chapter_sources(root: Path) -> list[Path]:
    return sorted(p for p in (root / "notebooks").glob("[0-9][0-9]_*.py"))


def select(sources: list[Path], chapters: str) -> list[Path]:
    """``chapters``: "all", or NN prefixes / slugs separated by commas or spaces."""
    if chapters.strip() in ("", "all"):
        return sources
    wanted = [c for c in chapters.replace(",", " ").split() if c]
    chosen = []
    for w in wanted:
        hits = [p for p in sources if p.stem == w or p.stem.startswith(w + "_")]
        if not hits:
            names = ", ".join(p.stem for p in sources)
            raise BuildError(f"no chapter matches {w!r}; chapters are: {names}")
        chosen.extend(h for h in hits if h not in chosen)
    return sorted(chosen)


def parse_params(params: str) -> dict:
    """Parse papermill-style ``-p NAME VALUE`` pairs (values as YAML literals)."""
    tokens = shlex.split(params or "")
    out: dict = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("-p", "--parameters") and i + 2 < len(tokens):
            name, raw = tokens[i + 1], tokens[i + 2]
            out[name] = yaml.safe_load(raw) if raw else raw
            i += 3
        else:
            raise BuildError(
                f"cannot read PARAMS={params!r}: write them as -p NAME VALUE, "
                'e.g. PARAMS="-p PROFILE paper -p SEED 1"'
            )
    return out


def _first_line(source: str) -> str:
    for line in source.splitlines():
        if line.strip() and not line.startswith("#"):
            return line.strip()[:120]
    return source.strip().splitlines()[0][:120] if source.strip() else "(empty cell)"


def execute(root: Path, source: Path, params: dict, out_dir: Path | None = None) -> Path:
    """Execute one chapter with papermill; return the executed notebook's path."""
    import jupytext
    import papermill as pm

    out_dir = out_dir or (root / EXECUTED)
    out_dir.mkdir(parents=True, exist_ok=True)
    nb = jupytext.read(source)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3",
                                          "language": "python"})
    with tempfile.TemporaryDirectory() as tmp:
        src_ipynb = Path(tmp) / f"{source.stem}.ipynb"
        jupytext.write(nb, src_ipynb)
        partial = out_dir / f".{source.stem}.partial.ipynb"
        final = out_dir / f"{source.stem}.ipynb"
        try:
            pm.execute_notebook(
                str(src_ipynb), str(partial), parameters=params, cwd=str(root),
                kernel_name="python3", progress_bar=False, log_output=False,
            )
        except pm.PapermillExecutionError as exc:
            failed = root / "_build" / "failed"
            failed.mkdir(parents=True, exist_ok=True)
            where = f"cell {exc.exec_count}"
            if partial.exists():
                import nbformat

                ran = nbformat.read(partial, as_version=4)
                hit = [c for c in ran.cells
                       if c.get("execution_count") == exc.exec_count and c.cell_type == "code"]
                if hit:
                    where += f" ({_first_line(hit[0].source)!r})"
                os.replace(partial, failed / final.name)
            raise BuildError(
                f"notebook {source.name} failed at {where}: {exc.ename}: {exc.evalue}\n"
                f"  the executed notebook is in {failed / final.name}"
            ) from None
        os.replace(partial, final)
    return final


def write_toc(root: Path, executed: list[Path]) -> Path:
    """The book's table of contents restricted to the chapters that were executed."""
    toc = yaml.safe_load((root / "book" / "_toc.yml").read_text())
    have = {p.stem for p in executed}

    def keep(entry) -> bool:
        f = entry.get("file", "")
        return not f.startswith(str(EXECUTED)) or Path(f).stem in have

    for part in toc.get("parts", []):
        part["chapters"] = [c for c in part.get("chapters", []) if keep(c)]
    toc["parts"] = [p for p in toc.get("parts", []) if p["chapters"]]
    out = root / "_build" / "_toc.yml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(toc, sort_keys=False))
    return out


def build_html(root: Path, executed: list[Path]) -> Path:
    toc = write_toc(root, executed)
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(root), "--toc", str(toc),
           "--config", str(root / "_config.yml"), "-W", "-n", "--keep-going"]
    proc = subprocess.run(cmd, cwd=root)
    if proc.returncode != 0:
        raise BuildError("Jupyter Book reported warnings or errors (see above)")
    return root / "_build" / "html" / "index.html"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chapters", default="all")
    ap.add_argument("--params", default="")
    ap.add_argument("--no-html", action="store_true", help="execute only")
    ap.add_argument("--html-only", action="store_true",
                    help="render the notebooks already in book/executed")
    args = ap.parse_args(argv)
    try:
        root = find_root()
        params = parse_params(args.params)
        chosen = select(chapter_sources(root), args.chapters)
        executed = []
        if args.html_only:
            executed = [root / EXECUTED / f"{s.stem}.ipynb" for s in chosen
                        if (root / EXECUTED / f"{s.stem}.ipynb").exists()]
        else:
            for src in chosen:
                t0 = time.time()
                print(f"[book] executing {src.name} {params or ''}", flush=True)
                executed.append(execute(root, src, params))
                print(f"[book]   done in {time.time() - t0:.0f} s", flush=True)
        if not args.no_html:
            index = build_html(root, executed)
            print(f"[book] the book is at {index}")
    except FairVLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
