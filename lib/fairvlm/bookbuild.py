"""Notebook -> book pipeline: jupytext -> papermill -> Jupyter Book 1.x.

``python -m fairvlm.bookbuild [--chapters 00,07] [--params "-p PROFILE smoke"]``

1. each selected ``notebooks/NN_slug.py`` (jupytext percent format) becomes an ipynb;
2. papermill executes it, with the given parameters, from the repository root, and saves
   the executed notebook to ``book/executed/NN_slug.ipynb`` (gitignored). A failing cell
   stops the build with the notebook's name, the cell's number and its first line;
3. a table of contents with the static pages and the chapters just executed is written to
   ``_build/_toc.yml`` and Jupyter Book renders the HTML into ``_build/html`` with
   warnings as errors. The book never re-executes anything (``execute_notebooks: "off"``).

Execution cache: a chapter is executed again only when one of its inputs changed. Its key
(:func:`chapter_inputs`) hashes the chapter's source, the parameters it gets, the ``FAIRVLM_*``
settings that change what it computes (``FAIRVLM_WORLD``, data locations, ...), the source of
every ``fairvlm`` module it imports (followed through the library's own imports), the data
manifests and bias spec under ``data/`` (the shipped testbed's manifest, with the sha256 of
every shipped weight, among them), where each dataset is found, and the versions of Python and
the tracked packages. The key is stored beside the executed notebook
(``book/executed/.NN_slug.key.json``) with the sha256 of the notebook and of every file the run
wrote into ``results/`` and ``figures/``; a chapter is reused only when the key matches and all
of those files are still there, unchanged. ``--force`` (``make book FORCE=1``) executes all.

The tests call :func:`execute` and :func:`build_html` with folders of their own
(``_build/smoke/...``), so a test run leaves the book's ``results/``, ``figures/`` and
``book/executed/`` as ``make book`` left them.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import yaml

from fairvlm import validate
from fairvlm.errors import DataError, FairVLMError, ParameterError, argument_parser, cli_main

#: Seconds between two progress lines while one chapter executes (the reader sees the
#: build is alive; the issue asks for at least one line every 30 s).
HEARTBEAT_S = 20.0

EXECUTED = Path("book/executed")
#: bump when the key's recipe changes (every cached chapter is then executed again)
CACHE_FORMAT = 1
#: ``FAIRVLM_*`` variables that move outputs or caches without changing what is computed
_ENV_NOT_INPUTS = ("FAIRVLM_RESULTS", "FAIRVLM_FIGURES", "FAIRVLM_CACHE")


class BuildError(FairVLMError):
    pass


def _paths(name: str, value, *, exist: bool = False) -> list[Path]:
    """A list of paths (not one path given as a string), each an existing file if ``exist``."""
    out = []
    for i, p in enumerate(validate.sequence(name, value, empty=True)):
        out.append(validate.existing_file(f"{name}[{i}]", p) if exist else validate.path(f"{name}[{i}]", p))
    return out


def _read_nb(name: str, path):
    """The notebook at ``path``, or a :class:`DataError` naming it (missing, truncated, not JSON)."""
    import nbformat

    path = validate.existing_file(name, path)
    try:
        return nbformat.read(path, as_version=4)
    except Exception as exc:  # NotJSONError, a validation error, a truncated file
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise DataError(f"{name}={str(path)!r} is not a readable notebook ({type(exc).__name__}: {first}); "
                        "execute the chapter again") from None


def find_root(start: Path | None = None) -> Path:
    if start is not None:
        start = validate.path("start", start)
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "_config.yml").is_file() and (d / "notebooks").is_dir():
            return d
    raise BuildError("run this from inside the book's repository (no _config.yml found)")


def chapter_sources(root: Path) -> list[Path]:
    root = validate.existing_dir("root", root)
    if not (root / "notebooks").is_dir():
        raise BuildError(f"root={str(root)!r} has no notebooks/ folder: give the book's repository")
    return sorted(p for p in (root / "notebooks").glob("[0-9][0-9]_*.py"))


def select(sources: list[Path], chapters: str) -> list[Path]:
    """``chapters``: "all", or NN prefixes / slugs separated by commas or spaces."""
    sources = _paths("sources", sources)
    chapters = validate.text("chapters", chapters, empty=True)
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
    how = 'write them as -p NAME VALUE, e.g. PARAMS="-p PROFILE paper -p SEED 1"'
    if params is not None:
        validate.text("params", params, empty=True)
    try:
        tokens = shlex.split(params or "")
    except ValueError as exc:  # "No closing quotation"
        raise BuildError(f"cannot read PARAMS={params!r}: {exc}; {how}") from None
    out: dict = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("-p", "--parameters") and i + 2 < len(tokens):
            name, raw = tokens[i + 1], tokens[i + 2]
            if not name.isidentifier():
                raise BuildError(f"cannot read PARAMS={params!r}: {name!r} is not a parameter "
                                 f"name; {how}")
            if name in out:
                raise BuildError(f"PARAMS={params!r} sets {name} twice")
            try:
                out[name] = yaml.safe_load(raw) if raw else raw
            except yaml.YAMLError as exc:
                raise BuildError(f"cannot read the value of {name} in PARAMS={params!r}: "
                                 f"{str(exc).splitlines()[0]}") from None
            i += 3
        else:
            raise BuildError(f"cannot read PARAMS={params!r}: {how}")
    return out


def chapter_parameters(source: Path) -> list[str]:
    """The names a chapter's ``parameters`` cell assigns (the parameters it accepts)."""
    import jupytext

    source = validate.existing_file("source", source)
    try:
        nb = jupytext.read(source)
    except Exception as exc:  # not text, not a notebook jupytext can read
        raise DataError(f"source={str(source)!r} cannot be read as a chapter ({type(exc).__name__}: {exc})") from None
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", []):
            try:
                tree = ast.parse(cell.source)
            except SyntaxError as exc:
                raise BuildError(f"{source.name}: the parameters cell is not valid Python ({exc})") from None
            names = []
            for node in tree.body:
                targets = node.targets if isinstance(node, ast.Assign) else (
                    [node.target] if isinstance(node, ast.AnnAssign) else [])
                names.extend(t.id for t in targets if isinstance(t, ast.Name))
            return names
    return []


def check_known_params(sources: list[Path], params: dict) -> dict[Path, dict]:
    """The parameters each chapter gets; a name that no selected chapter's parameters cell
    lists (a typo such as ``PROFIL``) raises :class:`BuildError` naming the known ones."""
    sources = _paths("sources", sources, exist=True)
    params = validate.mapping("params", params, empty=True)
    known = {src: chapter_parameters(src) for src in sources}
    every = sorted({n for names in known.values() for n in names})
    for name in params:
        if not any(name in names for names in known.values()):
            chapters = ", ".join(s.stem for s in sources)
            raise BuildError(f"unknown parameter {name!r} for chapter(s) {chapters}; their "
                             f"parameters are: {', '.join(every)}")
    return {src: {k: v for k, v in params.items() if k in known[src]} for src in sources}


def _first_line(source: str) -> str:
    for line in source.splitlines():
        if line.strip() and not line.startswith("#"):
            return line.strip()[:120]
    return source.strip().splitlines()[0][:120] if source.strip() else "(empty cell)"


def _prefer_own_kernel() -> None:
    """Make the ``python3`` kernel the one installed in this interpreter's prefix (``make
    setup`` installs it into ``.venv``), ahead of a ``python3`` kernelspec in the user's
    folder that may point at another Python with other packages."""
    own = Path(sys.prefix) / "share" / "jupyter"
    if not (own / "kernels" / "python3" / "kernel.json").is_file():
        return
    paths = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    if str(own) not in paths:
        os.environ["JUPYTER_PATH"] = os.pathsep.join([str(own), *paths])


def collapse_validation(nb) -> int:
    """Tag every code cell that validates the parameters (it calls ``check_params``)
    ``hide-input``: the rendered book shows it collapsed, one click away and copyable,
    instead of a screen of checks before the first result. Returns how many were tagged."""
    if not isinstance(getattr(nb, "cells", None), list):
        raise ParameterError(f"nb={validate.show(nb)} is not valid: it must be a notebook (nbformat or jupytext)")
    n = 0
    for cell in nb.cells:
        if cell.cell_type != "code" or "check_params(" not in cell.source:
            continue
        tags = cell.metadata.setdefault("tags", [])
        if not {"hide-input", "remove-input", "remove-cell", "parameters"} & set(tags):
            tags.append("hide-input")
            n += 1
    return n


def kernel_config(socket_dir: Path):
    """Kernel settings for papermill: on POSIX the kernel talks over IPC sockets in
    ``socket_dir`` (a private temporary folder) instead of TCP on localhost, which keeps the
    traffic off the network and the kernel's "running over TCP without encryption" warning
    out of the build log. Windows has no IPC transport and keeps TCP."""
    from traitlets.config import Config

    socket_dir = validate.path("socket_dir", socket_dir)
    config = Config()
    if os.name == "posix":
        config.KernelManager.transport = "ipc"
        # the default socket name is relative ("kernel-ipc-N" in the kernel's cwd, the
        # repository): two kernels would share it
        config.KernelManager.ip = str(Path(socket_dir) / "kernel-ipc")
    return config


@contextmanager
def _environ(**values: str | None):
    """Set (or, with ``None``, leave alone) environment variables for the duration; the
    papermill kernel starts inside and inherits them."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is not None:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(root: Path, source: Path, params: dict, out_dir: Path | None = None,
            heartbeat: float | None = None, *, results_dir: Path | None = None,
            figures_dir: Path | None = None) -> Path:
    """Execute one chapter with papermill; return the executed notebook's path.

    ``out_dir``: where the executed notebook goes (default ``book/executed``).
    ``results_dir``, ``figures_dir``: where the chapter writes its results and figures
    (``$FAIRVLM_RESULTS`` / ``$FAIRVLM_FIGURES`` for the kernel; default: whatever the
    environment says, else ``results/`` and ``figures/``).
    ``heartbeat``: print a progress line (the running cell and the time spent) every that
    many seconds; ``None`` is silent."""
    import jupytext
    import papermill as pm

    root, source = validate.existing_dir("root", root), validate.existing_file("source", source)
    params = validate.mapping("params", params, empty=True)
    for name, value in (("out_dir", out_dir), ("results_dir", results_dir), ("figures_dir", figures_dir)):
        if value is not None and validate.path(name, value).is_file():
            raise ParameterError(f"{name}={str(value)!r} is a file; give a folder")
    if heartbeat is not None:
        heartbeat = validate.number("heartbeat", heartbeat, low=0.0, low_open=True)
    out_dir = Path(out_dir) if out_dir is not None else None
    out_dir = out_dir or (root / EXECUTED)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {"FAIRVLM_RESULTS": str(Path(results_dir).resolve()) if results_dir else None,
           "FAIRVLM_FIGURES": str(Path(figures_dir).resolve()) if figures_dir else None,
           # no progress bars in executed notebooks: they would be stored half-drawn (fairvlm.progress)
           "FAIRVLM_PROGRESS": "0"}
    _prefer_own_kernel()
    nb = jupytext.read(source)
    nb.metadata.setdefault("kernelspec", {"name": "python3", "display_name": "Python 3",
                                          "language": "python"})
    collapse_validation(nb)
    with tempfile.TemporaryDirectory() as tmp:
        src_ipynb = Path(tmp) / f"{source.stem}.ipynb"
        jupytext.write(nb, src_ipynb)
        partial = out_dir / f".{source.stem}.partial.ipynb"
        final = out_dir / f"{source.stem}.ipynb"
        try:
            with _Heartbeat(source, partial, heartbeat), _environ(**env):
                pm.execute_notebook(
                    str(src_ipynb), str(partial), parameters=params, cwd=str(root),
                    kernel_name="python3", progress_bar=False, log_output=False,
                    config=kernel_config(Path(tmp)),
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


class _Heartbeat:
    """While papermill runs a chapter, print which cell runs every ``every`` seconds.

    Papermill rewrites the output notebook at each cell's start and end (and every 30 s);
    its cell metadata says which cell is running. A notebook read half-written is skipped.
    """

    def __init__(self, source: Path, partial: Path, every: float | None):
        self.source, self.partial, self.every = source, partial, every
        self._stop = threading.Event()
        self._thread = None

    def _line(self, t0: float) -> str:
        spent = f"{time.time() - t0:.0f} s"
        try:
            cells = json.loads(self.partial.read_text())["cells"]
        except (OSError, ValueError, KeyError):
            return f"[book]   {self.source.stem}: starting ({spent})"
        code = [c for c in cells if c.get("cell_type") == "code"]
        for i, c in enumerate(code, 1):
            status = c.get("metadata", {}).get("papermill", {}).get("status")
            if status == "running":
                src = "".join(c.get("source", ""))
                return (f"[book]   {self.source.stem}: code cell {i}/{len(code)} running "
                        f"({_first_line(src)!r}); {spent} so far")
        return f"[book]   {self.source.stem}: {spent} so far"

    def _run(self):
        t0 = time.time()
        while not self._stop.wait(self.every):
            print(self._line(t0), flush=True)

    def __enter__(self):
        if self.every:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False


# ---- execution cache ---------------------------------------------------------------------


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    from fairvlm.checksums import sha256_file

    return sha256_file(path)


def _fairvlm_names(tree: ast.AST, package: str) -> set[str]:
    """Every ``fairvlm...`` module name a syntax tree imports (anywhere, lazy imports
    included) or names in a string constant (``importlib.import_module("fairvlm.testbed")``);
    ``from fairvlm import x`` yields both ``fairvlm`` and ``fairvlm.x``."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:     # relative: resolve against the importing package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            names.add(mod)
            names.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("fairvlm."):
            names.add(node.value.strip())
    return {n for n in names if n == "fairvlm" or n.startswith("fairvlm.")}


def _module_file(name: str, lib: Path) -> Path | None:
    rel = name.split(".")[1:]
    base = lib.joinpath(*rel) if rel else lib
    for cand in (base.with_suffix(".py") if rel else None, base / "__init__.py"):
        if cand is not None and cand.is_file():
            return cand
    return None


def library_closure(source_text: str, lib: Path | None = None) -> dict[str, Path]:
    """The ``fairvlm`` modules a chapter's code can run (module name -> file): its own
    imports, followed through the library's imports, with every parent package's
    ``__init__``. Conservative: a module imported anywhere in a file counts."""
    source_text = validate.text("source_text", source_text, empty=True)
    if lib is None:
        import fairvlm

        lib = Path(fairvlm.__file__).resolve().parent
    lib = validate.existing_dir("lib", lib)
    try:
        tree = ast.parse(source_text)
    except SyntaxError:
        tree = ast.parse("import fairvlm")     # unparsable: depend on the package at least
    todo = sorted(_fairvlm_names(tree, "fairvlm") | {"fairvlm"})
    seen: dict[str, Path] = {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _module_file(name, lib)
        if path is None:        # an attribute (``from fairvlm.x import func``), not a module
            continue
        seen[name] = path
        parts = name.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        todo.extend(_fairvlm_names(ast.parse(path.read_text()), package) - set(seen))
    return dict(sorted(seen.items()))


def _data_inputs(root: Path) -> dict[str, str]:
    """sha256 of the data manifests, word lists and bias spec under ``data/`` (the shipped
    testbed's manifest lists the sha256 of every shipped weight) and of every file under
    ``data/artifacts/`` (the chapters' shipped adapters and SAEs)."""
    data = root / "data"
    files = [p for p in sorted(data.glob("*")) if p.is_file() and p.suffix in (".yaml", ".yml", ".sha256", ".json")]
    manifest = data / "testbed" / "manifest.json"
    if manifest.is_file():
        files.append(manifest)
    # the chapters' shipped artifacts (trained adapters, SAEs): every file, so a rebuilt or
    # replaced artifact executes the chapters that load it again
    files += sorted(p for p in (data / "artifacts").rglob("*") if p.is_file())
    return {p.relative_to(root).as_posix(): _sha256_file(p) for p in files}


def _dataset_roots() -> dict[str, str | None]:
    """Where each dataset's default folder is found now (``$FAIRVLM_*`` choices are in the
    key's ``env``; the content is pinned by the manifests under ``data/``)."""
    from fairvlm.data import _roots

    out: dict[str, str | None] = {}
    for name in ("pairs", "socialcounterfactuals", "sobit"):
        found = [p for p in _roots.candidates(name) if p.is_dir()]
        out[name] = str(found[0].resolve()) if found else None
    return out


def chapter_inputs(root: Path, source: Path, params: dict, lib: Path | None = None) -> dict:
    """Everything a chapter's executed notebook depends on, as digests (see the module
    docstring); :func:`chapter_key` hashes it."""
    from fairvlm.results import package_versions

    root, source = validate.existing_dir("root", root), validate.existing_file("source", source)
    params = validate.mapping("params", params, empty=True)
    if lib is not None:
        validate.existing_dir("lib", lib)
    text = source.read_text()
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith("FAIRVLM_") and k not in _ENV_NOT_INPUTS}
    return {
        "format": CACHE_FORMAT,
        "chapter": source.name,
        "source": _sha256_bytes(text.encode()),
        "params": json.dumps(params, sort_keys=True, default=str),
        "env": env,
        "library": {name: _sha256_file(path) for name, path in library_closure(text, lib).items()},
        "data": _data_inputs(root),
        "datasets": _dataset_roots(),
        "python": sys.version.split()[0],
        "packages": package_versions(),
    }


def chapter_key(inputs: dict) -> str:
    validate.mapping("inputs", inputs)
    try:
        text = json.dumps(inputs, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"inputs={validate.show(inputs)} is not valid: it must be what chapter_inputs "
                             f"returns (JSON-serialisable; {exc})") from None
    return _sha256_bytes(text.encode())[:20]


def _out_dirs(root: Path) -> tuple[Path, Path]:
    from fairvlm.paths import figures_dir, results_dir

    res, fig = results_dir(), figures_dir()
    return (res if res.is_absolute() else root / res), (fig if fig.is_absolute() else root / fig)


def chapter_outputs(root: Path, stem: str) -> list[Path]:
    """The files a chapter wrote: ``results/<stem>.json``, ``results/<stem>/**`` and
    ``figures/<stem>_*`` (the names :func:`fairvlm.results.save_results` and
    :func:`fairvlm.plotting.savefig` give)."""
    root = validate.path("root", root)
    stem = validate.text("stem", stem)
    res, fig = _out_dirs(root)
    out = [res / f"{stem}.json"] if (res / f"{stem}.json").is_file() else []
    if (res / stem).is_dir():
        out += sorted(p for p in (res / stem).rglob("*") if p.is_file())
    if fig.is_dir():
        out += sorted(p for p in fig.glob(f"{stem}_*") if p.is_file() and not p.name.startswith("."))
    return out


def _key_file(out_dir: Path, stem: str) -> Path:
    return out_dir / f".{stem}.key.json"


def record_key(root: Path, executed: Path, inputs: dict) -> Path:
    """Store ``inputs``' key beside ``executed`` with the sha256 of the notebook and of every
    output file (written atomically)."""
    root, executed = validate.existing_dir("root", root), validate.existing_file("executed", executed)
    validate.mapping("inputs", inputs)
    stem = executed.stem
    outputs = {}
    for p in chapter_outputs(root, stem):
        try:
            rel = p.relative_to(root).as_posix()
        except ValueError:
            rel = str(p)
        outputs[rel] = _sha256_file(p)
    record = {"key": chapter_key(inputs), "executed_at": time.strftime("%Y-%m-%d %H:%M:%S"),
              "notebook": _sha256_file(executed), "outputs": outputs, "inputs": inputs}
    path = _key_file(executed.parent, stem)
    fd, tmp = tempfile.mkstemp(prefix=f".{stem}.key.", dir=executed.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)
    return path


def cached_run(root: Path, source: Path, inputs: dict, out_dir: Path | None = None) -> tuple[Path | None, str]:
    """``(executed notebook, why)`` if the chapter's last run can be reused, else ``(None,
    why not)``: the key must match and the notebook and every output it recorded must be
    there with the recorded sha256."""
    root, source = validate.existing_dir("root", root), validate.path("source", source)
    validate.mapping("inputs", inputs)
    out_dir = validate.path("out_dir", out_dir) if out_dir is not None else (root / EXECUTED)
    nb, kf = out_dir / f"{source.stem}.ipynb", _key_file(out_dir, source.stem)
    if not nb.is_file() or not kf.is_file():
        return None, "never executed here"
    try:
        rec = json.loads(kf.read_text())
        key, want_nb, outputs = rec["key"], rec["notebook"], dict(rec["outputs"])
    except (OSError, ValueError, KeyError, TypeError):
        return None, "its cache record is unreadable"
    if key != chapter_key(inputs):
        old = rec.get("inputs", {})
        changed = [k for k in inputs if old.get(k) != inputs[k]]
        if "library" in changed:
            mods = sorted(set(inputs["library"]) ^ set(old.get("library", {}))
                          | {m for m in inputs["library"] if old.get("library", {}).get(m) != inputs["library"][m]})
            changed[changed.index("library")] = "library (" + ", ".join(mods[:4]) + (" ..." if len(mods) > 4 else "") + ")"
        return None, "changed: " + (", ".join(changed) if changed else "its inputs")
    if _sha256_file(nb) != want_nb:
        return None, "its executed notebook was edited"
    for rel, sha in outputs.items():
        p = Path(rel) if Path(rel).is_absolute() else root / rel
        if not p.is_file() or _sha256_file(p) != sha:
            return None, f"its output {rel} is missing or changed"
    return nb, f"unchanged since {rec.get('executed_at', '?')} (key {key[:12]})"


def output_problems(executed: Path) -> list[str]:
    """What a reader should not see in an executed chapter: stderr output (warnings,
    progress bars) and object reprs such as ``PosixPath('figures/...')``."""
    nb = _read_nb("executed", executed)
    problems = []
    n = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        n += 1
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                problems.append(f"code cell {n}: stderr output {out.get('text', '')[:160]!r}")
            elif "PosixPath(" in json.dumps(out.get("data", out.get("text", ""))):
                problems.append(f"code cell {n}: an output shows a PosixPath repr")
    return problems


def write_toc(root: Path, executed: list[Path], out: Path | None = None) -> Path:
    """The book's table of contents restricted to the chapters that were executed, written
    to ``out`` (default ``_build/_toc.yml``)."""
    root = validate.existing_dir("root", root)
    executed = _paths("executed", executed)
    if out is not None and validate.path("out", out).is_dir():
        raise ParameterError(f"out={str(out)!r} is a folder; give a file path for the table of contents")
    src_toc = root / "book" / "_toc.yml"
    try:
        toc = yaml.safe_load(src_toc.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read the table of contents {src_toc}: {exc}") from None
    if not isinstance(toc, dict):
        raise DataError(f"{src_toc} is not a Jupyter Book table of contents (a mapping with 'parts')")
    have = {p.stem for p in executed}

    def keep(entry) -> bool:
        f = entry.get("file", "")
        return not f.startswith(str(EXECUTED)) or Path(f).stem in have

    for part in toc.get("parts", []):
        part["chapters"] = [c for c in part.get("chapters", []) if keep(c)]
    toc["parts"] = [p for p in toc.get("parts", []) if p["chapters"]]
    out = Path(out) if out is not None else root / "_build" / "_toc.yml"
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(yaml.safe_dump(toc, sort_keys=False))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def book_sources(root: Path, executed: list[Path], dest: Path) -> Path:
    """A copy of the book's sources in ``dest`` (emptied first): ``_config.yml``, the static
    pages under ``book/`` and the given executed notebooks in ``book/executed/``, so a book
    can be rendered from notebooks that live elsewhere (Sphinx skips any source under a
    ``_build`` folder, where the tests keep theirs). Returns ``dest``."""
    import shutil

    root = validate.existing_dir("root", root)
    executed = _paths("executed", executed, exist=True)
    dest = validate.path("dest", dest)
    top, dest = root.resolve(), dest.resolve()
    inside = dest == top or top in dest.parents
    if dest in top.parents or (inside and top / "_build" not in dest.parents):
        raise BuildError(f"{dest} would overwrite the book's own sources; give a folder outside "
                         f"the repository or under {top / '_build'}")
    if dest.exists() and not dest.is_dir():
        raise ParameterError(f"dest={str(dest)!r} is a file; give a folder")
    foreign = sorted(p.name for p in dest.iterdir() if p.name not in _SOURCE_NAMES) if dest.is_dir() else []
    if foreign:
        raise BuildError(f"dest={str(dest)!r} holds {foreign[0]!r}, which book_sources did not write; it is not "
                         "replaced: give a new or empty folder")
    for name in ("book", "_config.yml"):
        if not (root / name).exists():
            raise DataError(f"root={str(root)!r} has no {name}: give the book's repository")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        shutil.copytree(root / "book", staging / "book",
                        ignore=shutil.ignore_patterns(EXECUTED.name, ".*"))
        shutil.copy2(root / "_config.yml", staging / "_config.yml")
        (staging / EXECUTED).mkdir(parents=True, exist_ok=True)
        for nb in executed:
            shutil.copy2(nb, staging / EXECUTED / nb.name)
        if dest.exists():  # a previous book_sources copy (checked above): replaced whole
            shutil.rmtree(dest)
        os.replace(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


#: What :func:`book_sources` (and :func:`build_html`'s table of contents) put in its folder.
_SOURCE_NAMES = ("book", "_config.yml", "_toc.yml")


def build_html(root: Path, executed: list[Path], build_dir: Path | None = None) -> Path:
    """Render the executed notebooks with Jupyter Book, warnings as errors; return the
    ``index.html``.

    Default: the book itself, sources from ``root``, HTML in ``_build/html``. With
    ``build_dir``, a separate book: its sources are copied to ``build_dir/src`` (see
    :func:`book_sources`) and its HTML goes to ``build_dir/_build/html``; nothing of the
    book's own build is touched."""
    root = validate.existing_dir("root", root)
    executed = _paths("executed", executed, exist=True)
    if build_dir is not None and validate.path("build_dir", build_dir).is_file():
        raise ParameterError(f"build_dir={str(build_dir)!r} is a file; give a folder")
    if build_dir is None:
        src, toc, out = root, write_toc(root, executed), root
    else:
        build_dir = Path(build_dir).resolve()
        src = book_sources(root, executed, build_dir / "src")
        toc = write_toc(root, executed, out=src / "_toc.yml")
        out = build_dir
    cmd = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()", "build", str(src),
           "--toc", str(toc), "--config", str(src / "_config.yml"), "--path-output", str(out),
           "-W", "-n", "--keep-going"]
    proc = subprocess.run(cmd, cwd=root)
    if proc.returncode != 0:
        raise BuildError("Jupyter Book reported warnings or errors (see above)")
    return out / "_build" / "html" / "index.html"


def main(argv=None) -> int:
    """The command line; returns its exit status (bad input: 2, via :func:`fairvlm.errors.cli_main`)."""
    return cli_main(_run, argv)


def _run(argv=None) -> int:
    ap = argument_parser(prog="python -m fairvlm.bookbuild", description=__doc__.splitlines()[0])
    ap.add_argument("--chapters", default="all")
    ap.add_argument("--params", default="")
    ap.add_argument("--no-html", action="store_true", help="execute only")
    ap.add_argument("--html-only", action="store_true",
                    help="render the notebooks already in book/executed")
    ap.add_argument("--force", action="store_true",
                    help="execute every chosen chapter, even those whose inputs did not change")
    args = ap.parse_args(argv)
    if args.force and args.html_only:
        raise BuildError("--force and --html-only contradict each other (--html-only executes nothing); "
                         "give one of them")
    if args.no_html and args.html_only:
        raise BuildError("--no-html and --html-only contradict each other (the first only "
                         "executes, the second only renders); give one of them")
    if args.html_only and args.params.strip():
        raise BuildError(f"--params {args.params!r} has no effect with --html-only, which "
                         "renders the notebooks already executed; drop one of them")
    root = find_root()
    params = parse_params(args.params)
    if "PROFILE" in params:  # refused here, not after a chapter has started
        from fairvlm.params import PROFILES

        validate.choice("PROFILE (in --params)", params["PROFILE"], PROFILES)
    chosen = select(chapter_sources(root), args.chapters)
    executed = []
    if args.html_only:
        executed = [root / EXECUTED / f"{s.stem}.ipynb" for s in chosen
                    if (root / EXECUTED / f"{s.stem}.ipynb").exists()]
        if not executed:
            raise BuildError(f"--html-only: no executed chapter in {root / EXECUTED}; run "
                             "`make book` (or drop --html-only) first")
    else:
        per_chapter = check_known_params(chosen, params)
        ran = 0
        for src in chosen:
            t0 = time.time()
            mine = per_chapter[src]
            dropped = sorted(set(params) - set(mine))
            inputs = chapter_inputs(root, src, mine)
            reuse, why = (None, "--force") if args.force else cached_run(root, src, inputs)
            if reuse is not None:
                print(f"[book] reusing {src.name}: {why}", flush=True)
                executed.append(reuse)
                continue
            print(f"[book] executing {src.name} {mine or ''}({why})"
                  + (f" (not a parameter here: {', '.join(dropped)})" if dropped else ""),
                  flush=True)
            out = execute(root, src, mine, heartbeat=HEARTBEAT_S)
            record_key(root, out, inputs)
            ran += 1
            executed.append(out)
            print(f"[book]   done in {time.time() - t0:.0f} s", flush=True)
            for problem in output_problems(out):
                print(f"[book]   warning: {src.stem}: {problem}", flush=True)
        print(f"[book] {ran} of {len(chosen)} chapter(s) executed, {len(chosen) - ran} reused", flush=True)
    if not args.no_html:
        index = build_html(root, executed)
        print(f"[book] the book is at {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
