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

from fairvlm.errors import FairVLMError

__all__ = ["load_job", "grid", "shard_rows", "run", "merge", "generate_texts", "sha256_file", "DEFAULTS"]

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
        p = Path(path_or_dict)
        if not p.is_file():
            raise FairVLMError(f"job file {p} not found")
        try:
            job = json.loads(p.read_text())
        except json.JSONDecodeError as exc:
            raise FairVLMError(f"job file {p} is not valid JSON: {exc}") from exc
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
    if not (0 < float(out["temperature"])) or not (0 < float(out["top_p"]) <= 1):
        raise FairVLMError("job temperature must be > 0 and top_p in (0, 1]")
    return out


def fingerprint(job: dict) -> str:
    return hashlib.sha256(json.dumps(job, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def grid(job: dict) -> list[tuple[int, int, object]]:
    """``(row_index, item_index, seed)`` in order: item-major, seeds inside."""
    rows = []
    for i, _ in enumerate(job["items"]):
        for s in job["seeds"]:
            rows.append((len(rows), i, s))
    return rows


def shard_rows(job: dict) -> list[list[tuple[int, int, object]]]:
    g, S = grid(job), job["shard_size"]
    return [g[k:k + S] for k in range(0, len(g), S)]


def sha256_file(path: Path) -> str:
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
    p = _shard_path(out, k)
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

    prompts = list(prompts)
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
    tensors = load_file(str(p))
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
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if rank is None or world is None:
        rank, world, _ = _state()
    if not 0 <= rank < world:
        raise FairVLMError(f"rank {rank} is not in 0..{world - 1}")
    fp = fingerprint(job)
    jpath = out / "job.json"
    if jpath.is_file():
        old = json.loads(jpath.read_text())
        if old.get("fingerprint") != fp:
            raise FairVLMError(f"{out} holds shards of a different job; use a new folder or delete it")
    elif rank == 0:
        _atomic_write(jpath, json.dumps({"fingerprint": fp, "n_rows": len(grid(job)),
                                         "n_shards": len(shard_rows(job)), "job": job}, indent=1).encode())
    shards = shard_rows(job)
    todo = [k for k in range(rank, len(shards), world) if not shard_done(out, k)]
    if max_shards is not None:
        todo = todo[:max_shards]
    if not todo:
        return []
    if lm is None:
        from fairvlm.models import load

        lm = load(job["model"], **job["model_kwargs"])
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
            rec.update({"row": row, "item": i, "seed": s, "method": job["method"], "text": text})
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

    out = Path(out_dir)
    jpath = out / "job.json"
    if not jpath.is_file():
        raise FairVLMError(f"{out} has no job.json; is it a shardgen output folder?")
    meta = json.loads(jpath.read_text())
    missing = [k for k in range(meta["n_shards"]) if not shard_done(out, k)]
    if missing:
        raise FairVLMError(f"{len(missing)} of {meta['n_shards']} shards are missing or fail their sha256 "
                           f"(first: {missing[0]}); re-run the same `run` command to finish them")
    recs = []
    for k in range(meta["n_shards"]):
        recs.extend(json.loads(line) for line in _shard_path(out, k).read_text().splitlines() if line)
    df = pd.DataFrame(recs).sort_values("row").reset_index(drop=True)
    if df["row"].tolist() != list(range(meta["n_rows"])):
        raise FairVLMError("the shards do not hold every grid row exactly once")
    if write:
        _atomic_write(out / "merged.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n"
                                                    for r in df.to_dict(orient="records")).encode())
    return df


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
