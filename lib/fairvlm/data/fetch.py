"""Pinned, checksummed downloads: the machinery behind every ``fetch_*`` function.

A dataset the book can download is described by a :class:`Remote`: its name in messages,
its sha256 manifest (``data/<name>.sha256`` in the book's checkout, ``sha256sum`` format,
paths relative to the dataset's folder), the pinned base URL its files are fetched from,
and its default folder. :func:`fetch_tree` puts a verified copy in place:

- each file of the manifest is downloaded from ``base_url + path`` (or copied from a
  local ``source`` folder) into a temporary folder beside the destination;
- every file is checked against its sha256, and the error names each bad file;
- only a fully verified copy is renamed into place, so a failure leaves nothing behind;
- a destination that already holds a verified copy is returned untouched; any other
  existing destination is replaced only with ``overwrite=True``, and only once the new
  copy is verified.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from urllib.error import URLError
from urllib.request import urlopen as _urlopen

from fairvlm import validate
from fairvlm.checksums import sha256_file
from fairvlm.errors import DataError, ParameterError
from fairvlm.paths import repo_root


@dataclass(frozen=True)
class Remote:
    """One downloadable dataset, as :func:`fetch_tree` needs it."""

    title: str              #: its name in messages, e.g. "PAIRS"
    manifest_name: str      #: the manifest's file name under data/, e.g. "pairs.sha256"
    base_url: str           #: files are fetched from base_url + <path in the manifest>
    folder: str             #: default destination: data/<folder> in the book's checkout
    func: str               #: the Python function that fetches it, for messages
    clone_subdir: str = ""  #: where the files sit in a clone of the upstream repository


# --------------------------------------------------------------------------- manifests


def manifest_path(name: str, what: str = "") -> Path:
    """``data/<name>`` in the current directory, else in the book's checkout."""
    name, what = validate.text("name", name), validate.text("what", what, empty=True)
    bases = [Path.cwd()] + ([repo_root()] if repo_root() is not None else [])
    for b in bases:
        p = b / "data" / name
        if p.is_file():
            return p
    raise DataError(
        f"the {what + ' ' if what else ''}manifest data/{name} was not found (looked under "
        + ", ".join(str(b) for b in bases)
        + "); run from the book's checkout or pass manifest=PATH"
    )


def read_manifest(path: str | os.PathLike, what: str = "") -> dict[str, str]:
    """Read a ``sha256sum``-format manifest: ``{relative path: sha256 hex}``.

    Each line is ``<64 hex digits><two spaces><relative path>``. Paths must be relative
    and stay inside the tree (no ``..``); anything else raises :class:`DataError`.
    """
    path = validate.existing_file("manifest" if what else "path", path)
    what = validate.text("what", what, empty=True)
    label = f"the {what + ' ' if what else ''}manifest {path}"
    try:
        text = path.read_text()
    except OSError as exc:
        raise DataError(f"cannot read {label}: {exc}") from None
    entries: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        m = re.fullmatch(r"([0-9a-f]{64}) [ *](.+)", line.strip())
        rel = m.group(2).removeprefix("./") if m else ""
        if m is None or rel.startswith("/") or ".." in Path(rel).parts or rel in entries:
            raise DataError(f"{path}, line {n}: not a valid manifest line: {line!r}")
        entries[rel] = m.group(1)
    if not entries:
        raise DataError(f"{label} is empty")
    return entries


def _mismatch(rel: str, got: str, want: str, f: Path) -> str:
    return (f"{rel}: sha256 {got[:12]}... != expected {want[:12]}... "
            f"({f.stat().st_size} bytes; the file is truncated or altered)")


def check_tree(tree: Path, manifest: dict[str, str]) -> list[str]:
    """Problems of ``tree`` against ``manifest``: one line per missing or altered file.
    Files not in the manifest are ignored."""
    tree = validate.path("tree", tree)
    manifest = validate.mapping("manifest", manifest, empty=True)
    for rel, want in manifest.items():
        if not isinstance(rel, str) or not isinstance(want, str):
            raise ParameterError(f"manifest={validate.show(manifest)} is not valid: it must map relative paths "
                                 "(str) to sha256 hex digests (str), as read_manifest returns")
    problems = []
    for rel, want in manifest.items():
        f = tree / rel
        if not f.is_file():
            problems.append(f"{rel}: missing")
            continue
        got = sha256_file(f)
        if got != want:
            problems.append(_mismatch(rel, got, want, f))
    return problems


def summary(problems: list[str], limit: int = 8) -> str:
    """The first ``limit`` problems, one per indented line."""
    problems = validate.strings("problems", problems, empty=True, blank=True)
    limit = validate.integer("limit", limit, low=1)
    more = f"\n  ... and {len(problems) - limit} more" if len(problems) > limit else ""
    return "\n  " + "\n  ".join(problems[:limit]) + more


# --------------------------------------------------------------------------- fetch


def _download(url: str, target: Path, timeout: float, remote: Remote, urlopen: Callable) -> None:
    try:
        with urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
            shutil.copyfileobj(response, out)
    except (URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(
            f"could not download {url}: {reason}. Check the network, or copy {remote.title} "
            f"from a local folder with {remote.func}(dest, source=DIR) / --source DIR"
        ) from None


def _source_tree(source: Path, entries: dict[str, str], clone_subdir: str) -> Path:
    """The folder holding the files: ``source`` itself, or ``source/<clone_subdir>`` when
    ``source`` is a clone of the upstream repository."""
    if not source.is_dir():
        raise DataError(f"source folder {source} does not exist")
    if clone_subdir:
        tops = {Path(rel).parts[0] for rel in entries}
        inner = source / clone_subdir
        if (not any((source / t).exists() for t in tops)
                and any((inner / t).exists() for t in tops)):
            return inner
    return source


@contextlib.contextmanager
def _terminate_cleanly():
    """Turn SIGTERM into :class:`SystemExit` for the duration, so the ``finally`` that
    removes the staging folder runs (the default action kills the process on the spot and
    leaves a hidden ``.partial-`` folder behind). Only the main thread can set a handler;
    elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def fetch_tree(
    remote: Remote,
    dest: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
    *,
    base_url: str | None = None,
    manifest: str | os.PathLike | None = None,
    overwrite: bool = False,
    timeout: float = 60.0,
    progress: bool = True,
    urlopen: Callable | None = None,
) -> Path:
    """Put a verified copy of ``remote`` at ``dest`` and return ``dest``.

    ``dest`` defaults to ``data/<remote.folder>`` in the book's checkout (else the current
    directory); ``manifest`` to ``data/<remote.manifest_name>``; ``base_url`` to
    ``remote.base_url`` (a ``file://`` URL works too). With ``source`` (the dataset's
    folder, or a clone of the upstream repository) files are copied instead of downloaded.
    ``urlopen`` replaces :func:`urllib.request.urlopen` (for tests). The copy also gets a
    ``SHA256SUMS`` file, so ``sha256sum -c SHA256SUMS`` works inside it.

    Raises :class:`DataError` naming every missing, truncated or altered file, or the first
    failed download; nothing is then left at ``dest``.
    """
    from tqdm.auto import tqdm

    if not isinstance(remote, Remote):
        raise ParameterError(f"remote={validate.show(remote)} is not valid: it must be a fairvlm.data.fetch.Remote")
    if dest is not None:
        dest = validate.path("dest", dest)
    if source is not None:
        validate.path("source", source)
    if base_url is not None:
        base_url = validate.text("base_url", base_url)
    if manifest is not None:
        validate.path("manifest", manifest)
    overwrite, progress = validate.flag("overwrite", overwrite), validate.flag("progress", progress)
    timeout = validate.number("timeout", timeout, low=0.0, low_open=True)
    if urlopen is not None:
        validate.function("urlopen", urlopen)
    entries = read_manifest(manifest if manifest is not None
                            else manifest_path(remote.manifest_name, remote.title),
                            remote.title)
    manifest_label = Path(manifest).name if manifest is not None else remote.manifest_name
    base_url = remote.base_url if base_url is None else base_url
    if not base_url.endswith("/"):
        base_url += "/"
    urlopen = urlopen or _urlopen
    if dest is None:
        dest = (repo_root() or Path.cwd()) / "data" / remote.folder
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise ParameterError(f"dest={str(dest)!r} is a file; give a folder path for {remote.title}")
    if dest.exists() and not overwrite:
        problems = check_tree(dest, entries)
        if not problems:
            return dest
        raise DataError(
            f"{dest} already exists and is not a verified copy of {remote.title}:"
            f"{summary(problems, 3)}\n"
            f"Remove it, or call {remote.func}(..., overwrite=True) / pass --overwrite"
        )
    src = (_source_tree(Path(source).expanduser(), entries, remote.clone_subdir)
           if source is not None else None)
    created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    except OSError as exc:
        _remove_empty(created)
        raise DataError(f"cannot write {remote.title} to {dest}: {exc.strerror or exc} "
                        f"(at {exc.filename or dest.parent}); choose a writable folder") from None
    old = None
    try:
        with _terminate_cleanly():
            umask = os.umask(0)
            os.umask(umask)
            staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide the data from other users
            problems = []
            what = f"copying {remote.title} from {src}" if src else f"downloading {remote.title}"
            for rel, want in tqdm(entries.items(), desc=what, unit="file", disable=not progress):
                target = staging / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                if src is not None:
                    if not (src / rel).is_file():
                        problems.append(f"{rel}: missing from {src}")
                        continue
                    shutil.copyfile(src / rel, target)
                else:
                    url = urllib.parse.urljoin(base_url, urllib.parse.quote(rel))
                    _download(url, target, timeout, remote, urlopen)
                got = sha256_file(target)
                if got != want:
                    problems.append(_mismatch(rel, got, want, target))
            if problems:
                origin = str(src) if src is not None else base_url
                raise DataError(
                    f"{remote.title} from {origin} failed verification against {manifest_label}; "
                    f"nothing was written to {dest}:{summary(problems)}"
                )
            (staging / "SHA256SUMS").write_text(
                "".join(f"{want}  {rel}\n" for rel, want in entries.items()))
            if dest.exists():  # overwrite=True: swap only now that the new copy is verified
                old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
                os.replace(dest, old / dest.name)
            os.replace(staging, dest)
    except OSError as exc:  # a full disk, a folder made read-only meanwhile
        raise DataError(f"cannot write {remote.title} to {dest}: {exc.strerror or exc} "
                        f"(at {exc.filename or dest}); nothing was written there") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        if not dest.exists():
            _remove_empty(created)
    return dest


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders this call created for ``dest`` (innermost first), if empty."""
    for p in folders:
        try:
            p.rmdir()
        except OSError:
            return
