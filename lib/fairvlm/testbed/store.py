"""Where the testbed's models live: the cache, the shipped weights, and loading them.

:func:`build` returns the cache folder of a testbed build (``fairvlm.paths.cache_dir() /
"testbed" / f"{size}-{key}"``, the key from :func:`fairvlm.testbed.train.cache_key`), making it
when missing: from the shipped deltas of its world when they were built with the current key
(:mod:`fairvlm.testbed.artifacts`), else by training (:mod:`fairvlm.testbed.train`). The folder
holds ``clip/`` and ``llava/`` (``save_pretrained`` folders), ``deltas/`` (what training
changed, the files ``make models`` ships), ``build.json`` (the training record),
``source.json`` (shipped or trained here) and a ``SHA256SUMS`` checked on every use; it is
written in a temporary folder and renamed into place, under a lock. :func:`load_hf` loads the
transformers models from it and remembers what it served (:func:`loaded_builds`) for the
results' provenance.

This module does not shape the trained weights, so it is not part of the build key: its
code can change without retraining anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from fairvlm import checksums, validate
from fairvlm.embedded import _quiet
from fairvlm.errors import FairVLMError, ParameterError, unknown
from fairvlm.testbed import artifacts, train
from fairvlm.testbed.spec import BiasSpec
from fairvlm.testbed.train import (
    CODE_VERSION,
    NAMES,
    SIZES,
    VISION,
    _check_size,
    _llava_processor,
    _source_digest,
    assemble_clip,
    assemble_llava,
    cache_key,
    clip_deltas,
    clip_image_processor,
    train_device,
)


def _check_build_args(size, seed, world=None, spec=None, spec_path=None) -> None:
    """The arguments every build entry point shares, checked before anything is read or trained
    (here, not in train.py or spec.py, which are part of the build key)."""
    if not isinstance(size, str) or size not in SIZES:
        raise unknown("testbed size", size, SIZES)
    validate.integer("seed", seed, low=0)
    if world is not None:
        artifacts.check_world(world)
    if spec is not None and not isinstance(spec, BiasSpec):
        raise ParameterError(f"spec={validate.show(spec)} is not valid: it must be a BiasSpec "
                             "(fairvlm.testbed.world_spec() or load_spec())")
    if spec_path is not None:
        validate.existing_file("spec_path", spec_path)


def testbed_dir(size: str = "full", *, seed: int = 0, spec: BiasSpec | None = None,
                world: str | None = None) -> Path:
    """The cache folder of a build (it may not exist yet); ``spec`` defaults to ``world``'s."""
    from fairvlm.paths import cache_dir

    _check_build_args(size, seed, world, spec)
    spec = spec if spec is not None else artifacts.world_spec(world)
    return cache_dir() / "testbed" / f"{size}-{cache_key(spec, size, seed)}"


def is_built(size: str = "full", *, seed: int = 0, spec: BiasSpec | None = None, world: str | None = None) -> bool:
    d = testbed_dir(size, seed=seed, spec=spec, world=world)
    return (d / "clip" / "config.json").is_file() and (d / "llava" / "config.json").is_file() \
        and (d / "build.json").is_file()


@contextlib.contextmanager
def _lock(path: Path):
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _atomic_write_dir(final: Path, write) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        write(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _atomic_write_json(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------
# Build / load
# --------------------------------------------------------------------------------------


def build(size: str = "full", *, seed: int = 0, spec_path=None, world: str | None = None, force: bool = False,
          progress: bool = True) -> Path:
    """The cache folder of the testbed models of ``size`` in ``world``, made if missing.

    ``full`` is the book's embedded default; ``smoke`` is a small, fast build for tests and
    CI. ``world`` is one of :data:`~fairvlm.testbed.artifacts.WORLDS` (default
    ``$FAIRVLM_WORLD`` or ``"default"``); ``spec_path`` points at another bias spec file
    (default: ``data/testbed_bias_spec.yaml``), read at the world's strength.

    A cached build is checked against its ``SHA256SUMS`` (a damaged one is made again). On a
    miss, the shipped artifact of the world (``data/testbed``) is installed when it was built
    with the current build key (checksums verified first); otherwise, or with ``force=True``,
    both models are trained here (about 12 minutes for ``full`` on two CPU cores).
    """
    _check_build_args(size, seed, world, None, spec_path)
    validate.flag("force", force)
    validate.flag("progress", progress)
    _check_size(size)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FairVLMError(f"seed={seed!r} must be a non-negative integer")
    world = artifacts.resolve_world(world)
    spec = artifacts.world_spec(world, spec_path)
    root = testbed_dir(size, seed=seed, spec=spec)
    key = cache_key(spec, size, seed)
    with _lock(root.parent / f".{root.name}.lock"):
        if not force and is_built(size, seed=seed, spec=spec):
            bad = checksums.problems(root)
            if not bad:
                return root
            print(f"[testbed] the cached build {root} is damaged ({'; '.join(bad[:2])}); making it again",
                  flush=True)
        shipped = artifacts.find(world, size, seed)
        if shipped is not None and not force:
            why = _why_stale(shipped, spec, key)
            if why is None:
                shipped.verify()
                _install(root, shipped)
                return root
            print(f"[testbed] the shipped {shipped.name} was built {why}; training the {size} testbed here "
                  f"instead ({'about 12 min' if size == 'full' else 'about a minute'} on 2 CPU cores; "
                  "`make models` rebuilds the shipped weights)", flush=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        t0, c0 = time.time(), time.process_time()
        torch_threads = torch.get_num_threads()
        clip, clip_log = train.train_clip(spec, size, seed, progress=progress)
        llava, tok, llava_log, llava_d = train.train_llava(spec, clip, size, seed, progress=progress)
        record = {"size": size, "seed": seed, "world": world, "strength": spec.strength,
                  "spec_digest": spec.digest(), "spec_path": str(spec.path),
                  "code_version": CODE_VERSION, "source_digest": _source_digest(), "build_key": key,
                  "bases": artifacts.base_versions(), "config": asdict(SIZES[size]),
                  "vision": VISION, "torch_threads": torch_threads, "device": str(train_device()), "seconds": time.time() - t0,
                  "cpu_seconds": time.process_time() - c0, "load_average": os.getloadavg(),
                  "clip": clip_log, "llava": llava_log}
        source = {"source": "trained here", "world": world, "build_key": key,
                  "built": time.strftime("%Y-%m-%d")}
        _write_build(root, clip, llava, tok, clip_deltas(clip), llava_d, record, source)
    return root


def _why_stale(shipped, spec: BiasSpec, key: str) -> str | None:
    """Why a shipped artifact is not the build the current code would make (``None``: it is)."""
    if shipped.build_key == key:
        return None
    if shipped.spec_digest != spec.digest():
        return "from another bias spec than the current one"
    if shipped.bases != artifacts.base_versions():
        return f"on other base model packages ({shipped.bases} against {artifacts.base_versions()})"
    return f"by other training code (build key {shipped.build_key}, the current code gives {key})"


def _write_build(root: Path, clip, llava, tok, clip_d: dict, llava_d: dict, record: dict, source: dict) -> None:
    """Write a build's cache folder at once (a temporary folder renamed into place): both
    models as ``save_pretrained`` folders, their deltas, ``build.json``, ``source.json`` and a
    ``SHA256SUMS`` checked on every later use."""
    from safetensors.torch import save_file

    meta = {"format": "pt", "world": str(record.get("world")), "build_key": str(record.get("build_key"))}

    def write(d: Path) -> None:
        with _quiet():
            clip.save_pretrained(d / "clip", safe_serialization=True)
            llava.save_pretrained(d / "llava", safe_serialization=True)
            tok.save_pretrained(d / "llava")
        (d / "deltas").mkdir()
        save_file(clip_d, str(d / "deltas" / "clip.safetensors"), metadata=meta)
        save_file(llava_d, str(d / "deltas" / "llava.safetensors"), metadata=meta)
        (d / "build.json").write_text(json.dumps(record, indent=1, sort_keys=True))
        (d / "source.json").write_text(json.dumps(source, indent=1, sort_keys=True))
        checksums.write_sums(d)

    _atomic_write_dir(root, write)


def _install(root: Path, shipped) -> None:
    """Assemble both models from a (verified) shipped artifact and the PyPI bases into ``root``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        clip_d = load_file(str(shipped.folder / "clip.safetensors"))
        llava_d = load_file(str(shipped.folder / "llava.safetensors"))
        record = json.loads((shipped.folder / "build.json").read_text())
    except (OSError, ValueError, SafetensorError) as exc:
        raise FairVLMError(f"cannot read the shipped testbed {shipped.folder} ({type(exc).__name__}: {exc}); "
                           "run `make models` to rebuild it") from None
    clip = assemble_clip(clip_d)
    llava, tok = assemble_llava(clip.vision_model.state_dict(), llava_d)
    source = {"source": "shipped", "artifact": shipped.name, "world": shipped.world, "build_key": shipped.build_key,
              "built": shipped.built, "sha256": {f: v["sha256"] for f, v in shipped.files.items()}}
    _write_build(root, clip, llava, tok, clip_d, llava_d, record, source)


#: the builds :func:`load_hf` served in this process (cache folder name -> what it was)
_LOADED: dict[str, dict] = {}


def loaded_builds() -> list[dict]:
    """What produced the testbed models loaded in this process: one record per build (world,
    size, seed, build key, whether shipped or trained here, the artifact's name, sha256
    prefixes and build date). :func:`fairvlm.results.save_results` stores it with a chapter's
    results."""
    return [dict(v) for _, v in sorted(_LOADED.items())]


def describe_build(root: Path) -> str:
    """One line naming what produced the build in ``root``."""
    root = validate.existing_dir("root", root)
    info = _source_info(root)
    if info.get("source") == "shipped":
        sha = info.get("sha256", {})
        return (f"world {info.get('world')}, shipped artifact {info.get('artifact')} (llava sha256 "
                f"{str(sha.get('llava.safetensors', ''))[:12]}, clip sha256 {str(sha.get('clip.safetensors', ''))[:12]}, "
                f"built {info.get('built')})")
    return f"world {info.get('world')}, trained on this machine on {info.get('built')} (build key {info.get('build_key')})"


def _source_info(root: Path) -> dict:
    try:
        return json.loads((root / "source.json").read_text())
    except (OSError, ValueError):
        return {}


def training_log(size: str = "full", *, seed: int = 0, spec_path=None, world: str | None = None) -> dict:
    """The ``build.json`` record of a build (making it first if missing): training curves,
    timings and settings of the run that trained it (here or, for shipped weights, when
    ``make models`` ran)."""
    _check_build_args(size, seed, world, None, spec_path)
    root = build(size, seed=seed, spec_path=spec_path, world=world, progress=True)
    try:
        return json.loads((root / "build.json").read_text())
    except (OSError, ValueError) as exc:
        raise FairVLMError(f"{root}/build.json is unreadable ({exc}); "
                           f"rebuild with build({size!r}, force=True)") from exc


def load_hf(name: str, size: str = "full", *, seed: int = 0, spec_path=None, world: str | None = None):
    """``(hf_model, processor)`` of a testbed model, building it first if it is not cached.

    ``"testbed-clip"`` -> ``(VisionTextDualEncoderModel, VisionTextDualEncoderProcessor)``;
    ``"testbed-llava"`` -> ``(LlavaForConditionalGeneration, LlavaProcessor)``. Both in eval
    mode, float32, on CPU.
    """
    from transformers import AutoTokenizer, LlavaForConditionalGeneration, VisionTextDualEncoderProcessor

    if not isinstance(name, str) or name not in NAMES:
        raise unknown("testbed model", name, NAMES)
    _check_build_args(size, seed, world, None, spec_path)
    _check_size(size)
    root = build(size, seed=seed, spec_path=spec_path, world=world)
    info = _source_info(root)
    _LOADED[root.name] = {"build": root.name, "size": size, "seed": seed, **info,
                          "describe": describe_build(root)}
    with _quiet():
        if name == "testbed-clip":
            from fairvlm.embedded import minilm_dir
            from fairvlm.testbed.dual import MeanPooledDualEncoder

            model = MeanPooledDualEncoder.from_pretrained(root / "clip", dtype=torch.float32)

            text_tok = AutoTokenizer.from_pretrained(minilm_dir())
            processor = VisionTextDualEncoderProcessor(image_processor=clip_image_processor(), tokenizer=text_tok)
        else:
            model = LlavaForConditionalGeneration.from_pretrained(root / "llava", dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(root / "llava")
            tok.padding_side = "left"
            processor = _llava_processor(tok)
    model.eval()
    return model, processor
