"""Notebook regression checks: each chapter's smoke run against a small reference, with nbval.

``tests/nbval_ref/NN_slug.ipynb`` keeps, for every code cell of a chapter, its source and,
for the cells worth checking, the outputs of a smoke run (``PROFILE=smoke``). What is
checked (:func:`checked_outputs`):

- every output of the cell that builds the *Paper vs this book* table (it calls
  ``verdict_table``): the verdicts and the numbers behind them;
- every number the prose quotes: each ``glue(...)`` record, shown as ``name = value``;
- every output of a cell the chapter tags ``nbval-check-output``, none of one it tags
  ``nbval-ignore-output``.

Everything else is lax (not compared), and images never are. ``tests/nbval_sanitize.cfg``
masks what differs between two correct runs: timings, memory addresses, pandas' random
table ids, absolute paths, digits past the second decimal.

nbval compares the outputs stored in a notebook with those it gets by executing the
notebook's cells. To compare without executing a chapter a second time, :func:`run_nbval`
hands nbval a *replay* notebook: the reference's cells, tags and outputs, each cell's source
replaced by a call to :func:`replay`, which prints the outputs that cell gave in the smoke
run papermill just did (`make test` runs it). nbval then reports each differing cell with its
reference and its new output, as if it had run the chapter itself.

A change that moves a checked number fails until the reference is regenerated on purpose::

    python -m fairvlm.nbcheck refs --chapters 02          # execute at smoke, write the reference
    python -m fairvlm.nbcheck refs --from-smoke           # from the notebooks `make test` left
    python -m fairvlm.nbcheck check --chapters 02         # compare the last smoke run

(``make nbval-refs [CHAPTERS=...] [FROM_SMOKE=1]`` runs the first two.)
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from fairvlm import validate
from fairvlm.errors import DataError, FairVLMError, ParameterError, argument_parser, cli_main

#: Where the tests' smoke run writes everything (never the book's own folders).
SMOKE = Path("_build/smoke")
REFS = Path("tests/nbval_ref")
SANITIZE = Path("tests/nbval_sanitize.cfg")

CHECK_TAG, IGNORE_TAG = "nbval-check-output", "nbval-ignore-output"
GLUE_PREFIX = "application/papermill.record/"
#: the call that marks a chapter's verdict cell
VERDICT_CALL = "verdict_table("


class NbCheckError(FairVLMError):
    pass


def _read_nb(name: str, path):
    """The notebook at ``path`` (an existing ``.ipynb``), or a :class:`DataError` naming it."""
    import nbformat

    path = validate.existing_file(name, path)
    try:
        return nbformat.read(path, as_version=4)
    except Exception as exc:  # NotJSONError, a validation error, a truncated file
        raise DataError(f"{name}={str(path)!r} is not a readable notebook ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); execute the chapter again") from None


def _write_atomic(dest: Path, write) -> None:
    """``write(tmp)`` into a temporary file beside ``dest``, then rename it to ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def smoke_paths(root: Path) -> dict[str, Path]:
    """The smoke run's folders: executed notebooks, results, figures, the rendered book
    (``book/src`` its sources, ``book/_build/html`` its pages), the replay notebooks."""
    base = validate.path("root", root) / SMOKE
    return {"executed": base / "executed", "results": base / "results",
            "figures": base / "figures", "book": base / "book", "nbval": base / "nbval"}


def execute_smoke(root: Path, source: Path) -> Path:
    """Execute one chapter with ``PROFILE=smoke`` into the smoke folders; return the
    executed notebook."""
    from fairvlm import bookbuild

    validate.existing_dir("root", root)
    validate.existing_file("source", source)
    p = smoke_paths(root)
    return bookbuild.execute(root, source, {"PROFILE": "smoke"}, out_dir=p["executed"],
                             results_dir=p["results"], figures_dir=p["figures"])


def _glue_record(out) -> dict | None:
    """A ``glue`` output shown as ``name = value`` per text MIME type, or ``None``."""
    name = out.get("metadata", {}).get("scrapbook", {}).get("name")
    data = out.get("data", {})
    if name is None or not any(k.startswith(GLUE_PREFIX) for k in data):
        return None
    shown = {k[len(GLUE_PREFIX):]: f"{name} = {v}" for k, v in data.items()
             if k.startswith(GLUE_PREFIX) and not k[len(GLUE_PREFIX):].startswith("image/")}
    return {"output_type": "display_data", "metadata": {}, "data": shown}


def _without_images(out) -> dict:
    out = copy.deepcopy(dict(out))
    if "data" in out:
        out["data"] = {k: v for k, v in out["data"].items() if not k.startswith("image/")}
    out.pop("execution_count", None)
    out["output_type"] = "display_data" if out.get("output_type") == "execute_result" else out["output_type"]
    out.setdefault("metadata", {})
    return out


def checked_outputs(cell) -> list[dict] | None:
    """The outputs of one executed code cell that the regression check compares, or
    ``None`` where the cell is not checked (see the module's docstring for the rule)."""
    validate.mapping("cell", cell, empty=True)
    if not isinstance(cell.get("outputs", []), list) or not isinstance(cell.get("source", ""), str):
        raise ParameterError(f"cell={validate.show(cell)} is not valid: it must be a notebook code cell "
                             "(a dict with 'source' text and a list of 'outputs')")
    tags = set(cell.get("metadata", {}).get("tags", []))
    if IGNORE_TAG in tags:
        return None
    outputs = cell.get("outputs", [])
    if CHECK_TAG in tags or VERDICT_CALL in cell.get("source", ""):
        shown = []
        for out in outputs:
            rec = _glue_record(out)
            shown.append(rec if rec is not None else _without_images(out))
        return [o for o in shown if o.get("output_type") == "stream" or o.get("data")]
    glued = [r for r in map(_glue_record, outputs) if r is not None]
    return [r for r in glued if r["data"]] or None


def _code_cells(nb) -> list:
    return [c for c in nb.cells if c.cell_type == "code"]


def reference(executed: Path):
    """The reference notebook for one executed chapter: its code cells (sources kept, so a
    reader sees what each checked output belongs to), the checked outputs, no images."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = _read_nb("executed", executed)
    executed = Path(executed)
    cells = []
    for i, cell in enumerate(_code_cells(nb), 1):
        outs = checked_outputs(cell)
        ref = new_code_cell(cell.source, execution_count=i,
                            metadata={"tags": [CHECK_TAG]} if outs is not None else {})
        ref.outputs = [nbformat.from_dict(o) for o in outs or []]
        cells.append(ref)
    return new_notebook(cells=cells, metadata={
        "kernelspec": nb.metadata.get("kernelspec", {}),
        "fairvlm": {"chapter": executed.stem, "profile": "smoke",
                    "regenerate": f"python -m fairvlm.nbcheck refs --chapters {executed.stem}"}})


def write_reference(root: Path, executed: Path) -> Path:
    import nbformat

    root = validate.existing_dir("root", root)
    ref = reference(executed)
    dest = root / REFS / Path(executed).name
    _write_atomic(dest, lambda tmp: nbformat.write(ref, tmp))
    return dest


def replay(outputs_json: str | Path, index: int) -> None:
    """Kernel side of the check: print the outputs code cell ``index`` gave in the smoke run
    (streams to their stream, everything else as display data), for nbval to compare."""
    from IPython.display import publish_display_data

    path = validate.existing_file("outputs_json", outputs_json)
    index = validate.integer("index", index, low=0)
    try:
        cells = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"outputs_json={str(path)!r} cannot be read ({exc}); run the check again") from None
    if not isinstance(cells, list) or index >= len(cells):
        raise ParameterError(f"index={index} is not valid: {path.name} holds outputs of "
                             f"{len(cells) if isinstance(cells, list) else 0} cells")
    for out in cells[index]:
        if out["output_type"] == "stream":
            print(out["text"], end="", file=sys.stderr if out["name"] == "stderr" else sys.stdout,
                  flush=True)
        else:
            publish_display_data(out["data"], out.get("metadata", {}))


def replay_notebook(ref_path: Path, executed: Path, workdir: Path) -> Path:
    """Write ``workdir/NN_slug.ipynb`` (the reference's cells and outputs, each source a
    :func:`replay` call) and the smoke outputs it replays; return the notebook's path."""
    import nbformat

    ref = _read_nb("ref_path", ref_path)
    ran = _code_cells(_read_nb("executed", executed))
    executed, ref_path, workdir = Path(executed), Path(ref_path), validate.path("workdir", workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ParameterError(f"workdir={str(workdir)!r} is a file; give a folder")
    ref_cells = _code_cells(ref)
    if len(ran) != len(ref_cells):
        raise NbCheckError(
            f"{executed.stem} now has {len(ran)} code cells and its reference {ref_path} has "
            f"{len(ref_cells)}: the chapter changed shape, so cell-by-cell comparison is off. If "
            f"the change is intended, regenerate it: python -m fairvlm.nbcheck refs --chapters "
            f"{executed.stem}")
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / f"{executed.stem}.smoke-outputs.json"
    smoke = [checked_outputs(c) for c in ran]
    _write_atomic(data, lambda tmp: tmp.write_text(json.dumps([s or [] for s in smoke])))
    for i, (cell, new) in enumerate(zip(ref_cells, smoke)):
        checked = CHECK_TAG in cell.metadata.get("tags", []) or new is not None
        # a cell checked now but not in the reference compares with no outputs: it fails
        cell.metadata["tags"] = [CHECK_TAG] if checked else []
        cell.execution_count = i + 1
        cell.source = (f"from fairvlm.nbcheck import replay\n"
                       f"replay({data.name!r}, {i})  # {executed.stem}, nbval's Cell {i}")
    out = workdir / executed.name
    _write_atomic(out, lambda tmp: nbformat.write(ref, tmp))
    return out


def run_nbval(root: Path, executed: Path, ref_path: Path | None = None,
              workdir: Path | None = None) -> subprocess.CompletedProcess:
    """Run nbval (``--nbval-lax``, the sanitize file) on the replay of ``executed`` against
    its reference; the completed pytest process, output captured."""
    root = validate.existing_dir("root", root)
    executed = validate.existing_file("executed", executed)
    if ref_path is not None:
        ref_path = validate.path("ref_path", ref_path)
    if workdir is not None:
        workdir = validate.path("workdir", workdir)
    ref_path = ref_path or root / REFS / executed.name
    if not ref_path.is_file():
        raise NbCheckError(f"no nbval reference for {executed.stem} at {ref_path}; write one with "
                           f"python -m fairvlm.nbcheck refs --chapters {executed.stem}")
    workdir = workdir or smoke_paths(root)["nbval"]
    nb = replay_notebook(ref_path, executed, workdir)
    cmd = [sys.executable, "-m", "pytest", "-p", "nbval", "-p", "no:cacheprovider", "-q", "--color=no",
           "--nbval-lax", "--nbval-current-env", "--nbval-sanitize-with", str(root / SANITIZE),
           "--rootdir", str(workdir), "-c", os.devnull, str(nb)]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)


def main(argv=None) -> int:
    """The command line; returns its exit status (bad input: 2)."""
    return cli_main(_run, argv)


def _run(argv=None) -> int:
    from fairvlm import bookbuild

    ap = argument_parser(prog="python -m fairvlm.nbcheck", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    refs = sub.add_parser("refs", help="write tests/nbval_ref/NN_slug.ipynb from a smoke run")
    refs.add_argument("--chapters", default="all")
    refs.add_argument("--from-smoke", action="store_true",
                      help=f"take the notebooks the last smoke run left in {SMOKE}/executed "
                           "instead of executing the chapters")
    check = sub.add_parser("check", help=f"compare the smoke run in {SMOKE}/executed with the references")
    check.add_argument("--chapters", default="all")
    args = ap.parse_args(argv)
    root = bookbuild.find_root()
    chosen = bookbuild.select(bookbuild.chapter_sources(root), args.chapters)
    executed_dir = smoke_paths(root)["executed"]
    if args.command == "check" or args.from_smoke:
        missing = [s.stem for s in chosen if not (executed_dir / f"{s.stem}.ipynb").is_file()]
        if missing:
            raise NbCheckError(f"no smoke run of {', '.join(missing)} in {executed_dir}; run "
                               "`make test` first, or `python -m fairvlm.nbcheck refs` without "
                               "--from-smoke to execute them")
    failed = []
    for src in chosen:
        executed = executed_dir / f"{src.stem}.ipynb"
        if args.command == "refs":
            if not args.from_smoke:
                print(f"[nbval] executing {src.name} with PROFILE=smoke", flush=True)
                executed = execute_smoke(root, src)
            dest = write_reference(root, executed)
            n = sum(CHECK_TAG in c.metadata.get("tags", []) for c in reference(executed).cells)
            print(f"[nbval] wrote {dest.relative_to(root)} ({n} checked cells)", flush=True)
        else:
            proc = run_nbval(root, executed)
            print(f"[nbval] {src.stem}: {'ok' if proc.returncode == 0 else 'DIFFERS'}", flush=True)
            if proc.returncode != 0:
                print(proc.stdout[-8000:], flush=True)
                failed.append(src.stem)
    if failed:
        print(f"[nbval] outputs differ from the reference in: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
