"""Sharded, resumable open-ended generation: ``accelerate launch -m fairvlm.shardgen``.

The paper generated 1.8M responses on 512 accelerators. This module lets a reader do the
same without babysitting: a *job* (a JSON file) names a model, the (image, prompt) items, the
sampling replicates (seeds) and, optionally, a steering direction; the grid
``items x seeds`` is cut into fixed shards of ``shard_size`` rows (shard ``k`` holds grid rows
``k*S .. k*S+S-1``); process ``r`` of ``W`` generates the shards ``k = r, r+W, ...``.

* Each shard is one JSONL file written atomically (temp file in the same folder, ``fsync``,
  ``os.replace``) followed by its ``.sha256`` sidecar (also atomic). A shard counts as done only
  when its sha256 matches the sidecar, so a run killed at any moment leaves nothing that a
  re-run trusts wrongly: re-running the same command generates exactly the missing shards.
* A shard's rows are sampled in batches whose generator is seeded from ``(job seed, shard
  index)``, so a shard's content depends only on the job, not on the number of processes or
  on which run wrote it: an interrupted-and-resumed job merges to the same table as an
  uninterrupted one.
* ``merge`` checks every shard's sha256 and that every grid row is present exactly once, and
  writes ``merged.jsonl`` atomically.

Commands::

    accelerate launch --num_processes 8 -m fairvlm.shardgen run JOB.json OUT_DIR
    accelerate launch --multi_gpu --num_processes 2 -m fairvlm.shardgen run JOB.json OUT_DIR   # also on CPU

On a machine without CUDA the second line starts two CPU processes (torchrun + gloo):
accelerate 1.x's ``--cpu`` flag starts a single process unless an MPI hostfile is given.
    python -m fairvlm.shardgen run JOB.json OUT_DIR --max-shards 3   # stop after 3 shards per process
    python -m fairvlm.shardgen merge OUT_DIR

Job keys: ``model`` (a :func:`fairvlm.models.load` name), ``items`` (list of ``{"id", "prompt",
"image"}`` with ``image`` null, ``{"path": ...}`` or ``{"testbed": [scenario, gender, race,
scene_seed]}``, plus any extra fields, copied to the output), ``seeds`` (replicate labels,
default ``[0, 1, 2]``), ``max_new_tokens`` (64), ``temperature`` (0.7), ``top_p`` (0.9),
``shard_size`` (16), ``batch_size`` (8), ``seed`` (0), ``direction`` (null or a safetensors
file holding ``direction``: ablated at every layer through hooks), ``method`` (a label).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from fairvlm import validate as V
from fairvlm.errors import FairVLMError

__all__ = ["load_job", "grid", "shard_rows", "run", "merge", "generate_texts", "sha256_file", "fingerprint", "model_digest",
           "shard_done", "main", "DEFAULTS"]

DEFAULTS = {"seeds": [0, 1, 2], "max_new_tokens": 64, "temperature": 0.7, "top_p": 0.9, "shard_size": 16,
            "batch_size": 8, "seed": 0, "direction": None, "method": "unsteered", "model_kwargs": {}}


# --------------------------------------------------------------------------------------
# Jobs and grids
# --------------------------------------------------------------------------------------


def load_job(path_or_dict) -> dict:
    """Read and check a job (a path to JSON or a dict); defaults filled in."""
    if isinstance(path_or_dict, dict):
        job = dict(path_or_dict)
    else:
        p = V.path("job", path_or_dict)
        if not p.is_file():
            raise FairVLMError(f"job file {p} not found" + (" (it is a folder)" if p.is_dir() else ""))
        try:
            job = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FairVLMError(f"job file {p} is not valid JSON (truncated or not a job?): {exc}") from None
        if not isinstance(job, dict):
            raise FairVLMError(f"job file {p} holds a {type(job).__name__}; a job is a JSON object "
                               "{\"model\": ..., \"items\": [...]}")
    if not isinstance(job.get("model"), str):
        raise FairVLMError("the job needs 'model', a fairvlm.models.load name")
    items = job.get("items")
    if not isinstance(items, list) or not items:
        raise FairVLMError("the job needs 'items', a non-empty list of {id, prompt, image}")
    ids = set()
    for i, it in enumerate(items):
        if not isinstance(it, dict) or not isinstance(it.get("prompt"), str) or "id" not in it:
            raise FairVLMError(f"item {i} needs 'id' and a string 'prompt'")
        if it["id"] in ids:
            raise FairVLMError(f"item id {it['id']!r} appears twice")
        ids.add(it["id"])
    unknown_keys = set(job) - set(DEFAULTS) - {"model", "items"}
    if unknown_keys:
        raise FairVLMError(f"unknown job keys {sorted(unknown_keys)}; known: model, items, {', '.join(DEFAULTS)}")
    out = {**DEFAULTS, **job}
    for key in ("shard_size", "batch_size", "max_new_tokens"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise FairVLMError(f"job {key}={v!r} must be a positive integer")
    if not isinstance(out["seeds"], list) or not out["seeds"]:
        raise FairVLMError("job seeds must be a non-empty list")
    for s in out["seeds"]:
        if isinstance(s, bool) or not isinstance(s, (int, str)):
            raise FairVLMError(f"job seeds={out['seeds']!r}: each seed must be an integer or a string label")
    labels = [str(s) for s in out["seeds"]]
    if len(set(labels)) != len(labels):
        raise FairVLMError(f"job seeds={out['seeds']!r} repeat a label (0 and '0' count as the same): the "
                           "replicate rows could not be told apart")
    V.number("job temperature", out["temperature"], low=0.0, low_open=True)
    V.number("job top_p", out["top_p"], low=0.0, high=1.0, low_open=True)
    V.integer("job seed", out["seed"], low=0)
    V.text("job method", out["method"])
    if out["direction"] is not None:
        V.text("job direction", out["direction"])
    if not isinstance(out["model_kwargs"], dict):
        raise FairVLMError(f"job model_kwargs={out['model_kwargs']!r} must be a JSON object")
    for i, it in enumerate(items):
        _check_image_spec(i, it.get("image"))
    return out


def _check_image_spec(i: int, spec) -> None:
    if spec is None:
        return
    if isinstance(spec, dict) and set(spec) == {"path"} and isinstance(spec["path"], str):
        return
    if (isinstance(spec, dict) and set(spec) == {"testbed"} and isinstance(spec["testbed"], list)
            and len(spec["testbed"]) == 4 and all(isinstance(v, str) for v in spec["testbed"][:3])
            and isinstance(spec["testbed"][3], int) and not isinstance(spec["testbed"][3], bool)):
        return
    raise FairVLMError(f"item {i}: image={spec!r} is not an image spec; use null, {{\"path\": \"file.png\"}} or "
                       "{\"testbed\": [scenario, gender, race, scene_seed]}")


def fingerprint(job: dict) -> str:
    """sha256 of everything a shard's rows depend on except the model's weights (see
    :func:`model_digest`): the job itself, the bytes of the direction file and of every image
    file, and the library version. A changed input changes it, also under the same path."""
    import fairvlm

    job = load_job(job)
    files = {}
    if job["direction"]:
        files[job["direction"]] = _file_digest("direction", job["direction"])
    for i, it in enumerate(job["items"]):
        spec = it.get("image")
        if isinstance(spec, dict) and "path" in spec:
            files[spec["path"]] = _file_digest(f"item {i} image", spec["path"])
    blob = {"job": job, "files": files, "fairvlm": fairvlm.__version__}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _file_digest(what: str, path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise FairVLMError(f"{what} file {p} not found")
    return sha256_file(p)


def model_digest(lm) -> str:
    """What identifies the loaded weights: the sha256 of their ``SHA256SUMS`` manifest (or of
    the weights file) where the model was loaded from a checked folder or file, else the
    sha256 of the weights themselves (every parameter and buffer: name, dtype, shape, bytes;
    a second or two for a small model)."""
    import torch

    info = getattr(V.loaded("lm", lm), "info", {}) or {}
    src = Path(str(info.get("path", ""))) if info.get("path") else None
    if src is not None and (src / "SHA256SUMS").is_file():
        return "sums:" + sha256_file(src / "SHA256SUMS")
    if src is not None and src.is_file():
        return "file:" + sha256_file(src)
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in sorted(lm.model.state_dict().items()):
            t = t.detach().cpu().contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return "weights:" + h.hexdigest()


def _row_fingerprint(fp: str, digest: str) -> str:
    return hashlib.sha256(f"{fp}|{digest}".encode()).hexdigest()


def grid(job: dict) -> list[tuple[int, int, object]]:
    """``(row_index, item_index, seed)`` in order: item-major, seeds inside."""
    job = load_job(job)
    rows = []
    for i, _ in enumerate(job["items"]):
        for s in job["seeds"]:
            rows.append((len(rows), i, s))
    return rows


def shard_rows(job: dict) -> list[list[tuple[int, int, object]]]:
    job = load_job(job)
    g, S = grid(job), job["shard_size"]
    return [g[k:k + S] for k in range(0, len(g), S)]


def sha256_file(path: Path) -> str:
    path = V.existing_file("path", path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _shard_path(out: Path, k: int) -> Path:
    return out / f"shard-{k:06d}.jsonl"


def shard_done(out: Path, k: int) -> bool:
    """A shard counts only when its file's sha256 equals its sidecar."""
    p = _shard_path(V.path("out", out), V.integer("k", k, low=0))
    side = p.with_suffix(".jsonl.sha256")
    if not (p.is_file() and side.is_file()):
        return False
    return side.read_text().split()[0:1] == [sha256_file(p)]


# --------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------


def _image(spec):
    if spec is None:
        return None
    if isinstance(spec, dict) and "path" in spec:
        from PIL import Image

        p = Path(spec["path"])
        if not p.is_file():
            raise FairVLMError(f"image {p} not found")
        with Image.open(p) as im:
            return im.convert("RGB")
    if isinstance(spec, dict) and "testbed" in spec:
        from fairvlm.testbed.world import render

        k, g, r, s = spec["testbed"]
        return render(k, g, r, int(s))
    raise FairVLMError(f"unknown image spec {spec!r}; use null, {{'path': ...}} or {{'testbed': [...]}}")


def generate_texts(lm, prompts: Sequence[str], images=None, *, seed: int = 0, max_new_tokens: int = 64,
                   temperature: float = 0.7, top_p: float = 0.9, batch_size: int = 8, steer=None) -> list[str]:
    """Sample one continuation per prompt (batches in order; the generator is seeded once with
    ``seed`` before the first batch). ``steer``: ``None`` or a callable taking the batch's slice
    of ``prompts`` and returning a context manager (e.g. ``lambda sl: steering.ablate(lm, a)``)
    entered around that batch's generation."""
    import contextlib

    import torch

    V.loaded("lm", lm)
    prompts = V.strings("prompts", prompts, blank=True)
    if images is not None:
        images = V.sequence("images", images, length=len(prompts))
    V.integer("seed", seed, low=0)
    V.integer("max_new_tokens", max_new_tokens, low=1)
    V.number("temperature", temperature, low=0.0, low_open=True)
    V.number("top_p", top_p, low=0.0, high=1.0, low_open=True)
    V.integer("batch_size", batch_size, low=1)
    if steer is not None and not callable(steer):
        raise FairVLMError(f"steer={V.show(steer)} must be None or a function slice -> context manager")
    tok = lm.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list[str] = []
    torch.manual_seed(int(seed))
    for s in range(0, len(prompts), batch_size):
        ims = None if images is None else list(images[s:s + batch_size])
        if ims is not None and all(im is None for im in ims):
            ims = None
        enc = lm.inputs(prompts[s:s + batch_size], ims)
        with torch.no_grad(), (steer(slice(s, s + batch_size)) if steer is not None else contextlib.nullcontext()):
            seq = lm.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                    top_p=top_p, top_k=None, pad_token_id=pad)
        out.extend(t.strip() for t in tok.batch_decode(seq[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def _shard_seed(job: dict, k: int) -> int:
    return int(hashlib.sha256(f"{job['seed']}|{k}".encode()).hexdigest()[:8], 16)


def _steer(lm, job):
    if not job["direction"]:
        return None
    from safetensors.torch import load_file

    from fairvlm import steering

    p = Path(job["direction"])
    if not p.is_file():
        raise FairVLMError(f"direction file {p} not found")
    try:
        tensors = load_file(str(p))
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise FairVLMError(f"job direction file {p} is not a readable safetensors file ({exc})") from None
    if "direction" not in tensors:
        raise FairVLMError(f"{p} holds no tensor named 'direction'")
    a = steering.unit(tensors["direction"], lm.d_model)
    return lambda sl: steering.ablate(lm, a)


def _state():
    """(rank, world, barrier) from accelerate when launched by it, else a single process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        from accelerate import PartialState

        # without CUDA, ask for the CPU (gloo) backend explicitly: accelerate 1.x otherwise
        # ignores the torchrun environment and every process believes it is alone
        st = PartialState(cpu=not torch.cuda.is_available())
        return st.process_index, st.num_processes, st.wait_for_everyone
    return 0, 1, lambda: None


def run(job, out_dir, *, rank: int | None = None, world: int | None = None, max_shards: int | None = None,
        lm=None, progress: bool = False) -> list[int]:
    """Generate this process's missing shards; returns the shard indices it wrote."""
    job = load_job(job)
    out = V.path("out_dir", out_dir)
    if out.exists() and not out.is_dir():
        raise FairVLMError(f"out_dir={str(out)!r} is a file; give a folder for the shards")
    if max_shards is not None:
        V.integer("max_shards", max_shards, low=0)
    V.flag("progress", progress)
    if rank is None or world is None:
        rank, world, _ = _state()
    V.integer("world", world, low=1)
    V.integer("rank", rank, low=0)
    if not 0 <= rank < world:
        raise FairVLMError(f"rank {rank} is not in 0..{world - 1}")
    fp = fingerprint(job)              # reads every input file: a missing one stops here
    new_dir = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    jpath = out / "job.json"
    old = _read_meta(out) if jpath.is_file() else None
    if old is not None and old.get("fingerprint") != fp:
        raise FairVLMError(f"{out} holds shards of a different job (the job, its direction file, an image "
                           "file or the fairvlm version changed); use a new folder or delete it")
    wrote_meta = rank == 0 and old is None
    if wrote_meta:
        _atomic_write(jpath, json.dumps({"fingerprint": fp, "n_rows": len(grid(job)),
                                         "n_shards": len(shard_rows(job)), "job": job}, indent=1).encode())
        old = {"fingerprint": fp}
    try:
        return _run_shards(job, out, fp, old, rank, world, max_shards, lm, progress)
    except BaseException:
        # a run that fails before its first shard takes back the job.json it wrote, so that
        # the corrected job is not refused as "a different job"
        if wrote_meta and not any(out.glob("shard-*.jsonl")):
            jpath.unlink(missing_ok=True)
            if new_dir and not any(out.iterdir()):
                out.rmdir()
        raise


def _run_shards(job, out, fp, old, rank, world, max_shards, lm, progress) -> list[int]:
    jpath = out / "job.json"
    shards = shard_rows(job)
    todo = [k for k in range(rank, len(shards), world) if not shard_done(out, k)]
    if max_shards is not None:
        todo = todo[:max_shards]
    if not todo:
        return []
    if lm is None:
        from fairvlm.models import load

        lm = load(job["model"], **job["model_kwargs"])
    digest = model_digest(lm)
    if old is not None and old.get("model_digest") not in (None, digest):
        raise FairVLMError(f"{out} holds shards generated with other weights of {job['model']!r} "
                           f"({old['model_digest']} vs now {digest}); use a new folder or delete it")
    if rank == 0 and old is not None and old.get("model_digest") is None and jpath.is_file():
        meta = _read_meta(out)
        meta["model_digest"] = digest
        _atomic_write(jpath, json.dumps(meta, indent=1).encode())
    row_fp = _row_fingerprint(fp, digest)
    steer = _steer(lm, job)
    written = []
    for k in todo:
        rows = shards[k]
        items = [job["items"][i] for _, i, _ in rows]
        imgs = [_image(it.get("image")) for it in items]
        texts = generate_texts(lm, [it["prompt"] for it in items], imgs, seed=_shard_seed(job, k),
                               max_new_tokens=job["max_new_tokens"], temperature=job["temperature"],
                               top_p=job["top_p"], batch_size=job["batch_size"], steer=steer)
        lines = []
        for (row, i, s), it, text in zip(rows, items, texts):
            rec = {k2: v for k2, v in it.items() if k2 != "image"}
            rec.update({"row": row, "item": i, "seed": s, "method": job["method"], "text": text,
                        "fingerprint": row_fp})
            lines.append(json.dumps(rec, sort_keys=True))
        p = _shard_path(out, k)
        _atomic_write(p, ("\n".join(lines) + "\n").encode())
        _atomic_write(p.with_suffix(".jsonl.sha256"), f"{sha256_file(p)}  {p.name}\n".encode())
        written.append(k)
        if progress:
            print(f"[rank {rank}] shard {k} written ({len(rows)} rows)", flush=True)
    return written


def merge(out_dir, *, write: bool = True):
    """Check every shard and return the merged table (a DataFrame ordered by grid row);
    ``write=True`` also writes ``merged.jsonl`` atomically."""
    import pandas as pd

    out = V.path("out_dir", out_dir)
    V.flag("write", write)
    jpath = out / "job.json"
    if not jpath.is_file():
        raise FairVLMError(f"{out} has no job.json; is it a shardgen output folder?")
    meta = _read_meta(out)
    try:
        job = load_job(meta.get("job"))
    except FairVLMError as exc:
        raise FairVLMError(f"{jpath} holds no valid job ({exc}); it was edited or damaged") from None
    fp = fingerprint(job)
    if meta.get("fingerprint") != fp:
        raise FairVLMError(f"{out}: an input of the job changed since its shards were generated (the direction "
                           "file, an image file or the fairvlm version), or job.json was edited; "
                           "generate again into a new folder")
    shards = shard_rows(job)           # the counts come from the job itself, not from job.json
    missing = [k for k in range(len(shards)) if not shard_done(out, k)]
    if missing:
        raise FairVLMError(f"{len(missing)} of {len(shards)} shards are missing or fail their sha256 "
                           f"(first: {missing[0]}); re-run the same `run` command to finish them")
    recs = []
    for k in range(len(shards)):
        for line in _shard_path(out, k).read_text().splitlines():
            if line:
                recs.append(json.loads(line))
    extra = sorted(int(p.name[6:12]) for p in out.glob("shard-*.jsonl") if p.name[6:12].isdigit()
                   and int(p.name[6:12]) >= len(shards))
    if extra:
        raise FairVLMError(f"{out} holds shard {extra[0]} beyond the job's {len(shards)} shards; it belongs to "
                           "another job: generate into a new folder")
    df = pd.DataFrame(recs)
    want = [(r, i, str(s)) for r, i, s in grid(job)]
    got = sorted(((int(r["row"]), int(r["item"]), str(r["seed"])) for r in recs), key=lambda t: t[0])
    if got != want:
        raise FairVLMError("the shards do not hold every grid row of the job exactly once")
    fps = set(df["fingerprint"]) if "fingerprint" in df else {None}
    digest = meta.get("model_digest")
    if len(fps) != 1 or (digest is not None and fps != {_row_fingerprint(fp, digest)}):
        raise FairVLMError(f"{out}: the shards were generated from different inputs or model weights "
                           f"({len(fps)} fingerprints); generate again into a new folder")
    df = df.drop(columns=["fingerprint"]).sort_values("row").reset_index(drop=True)
    if write:
        _atomic_write(out / "merged.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n"
                                                    for r in df.to_dict(orient="records")).encode())
    return df


def _read_meta(out: Path) -> dict:
    jpath = out / "job.json"
    try:
        meta = json.loads(jpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FairVLMError(f"{jpath} is damaged (not valid JSON: {exc}); delete the folder and generate again") from None
    if not isinstance(meta, dict):
        raise FairVLMError(f"{jpath} is not a shardgen job.json; delete the folder and generate again")
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fairvlm.shardgen", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="generate this process's missing shards (then merge on the main process)")
    r.add_argument("job")
    r.add_argument("out")
    r.add_argument("--max-shards", type=int, default=None, help="stop after this many shards per process")
    r.add_argument("--no-merge", action="store_true")
    m = sub.add_parser("merge", help="check every shard and write merged.jsonl")
    m.add_argument("out")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "merge":
            df = merge(args.out)
            print(f"merged {len(df)} rows into {Path(args.out) / 'merged.jsonl'}")
            return 0
        rank, world, barrier = _state()
        wrote = run(args.job, args.out, rank=rank, world=world, max_shards=args.max_shards, progress=True)
        print(f"[rank {rank}/{world}] wrote {len(wrote)} shards", flush=True)
        barrier()
        if rank == 0 and not args.no_merge and args.max_shards is None:
            df = merge(args.out)
            print(f"merged {len(df)} rows into {Path(args.out) / 'merged.jsonl'}", flush=True)
        return 0
    except FairVLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
