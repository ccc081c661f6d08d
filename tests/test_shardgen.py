"""fairvlm.shardgen: sharded generation with 2 CPU processes through accelerate, resumed exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fairvlm import shardgen
from fairvlm.errors import FairVLMError


def _job(tmp_path: Path) -> Path:
    items = [{"id": f"it{i}", "prompt": p, "image": {"testbed": [k, g, "black", 1_000_000 + i]}, "group": g}
             for i, (p, k, g) in enumerate([("Describe the image.", "lab_coat", "man"),
                                            ("What is the person doing?", "cooking", "woman"),
                                            ("Describe the person.", "airplane", "woman")])]
    job = {"model": "tiny-llava", "items": items, "seeds": [0, 1, 2], "max_new_tokens": 4,
           "shard_size": 2, "batch_size": 2}
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    return path


def _launch(job: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "-m", "fairvlm.shardgen", "run", str(job), str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def test_two_processes_interrupted_and_resumed_give_the_same_table(tmp_path):
    job = _job(tmp_path)
    n_shards = len(shardgen.shard_rows(shardgen.load_job(job)))          # 9 rows / 2 = 5 shards
    assert n_shards == 5
    full = tmp_path / "full"
    res = _launch(job, full)
    assert "[rank 1/2]" in res.stdout and "[rank 0/2]" in res.stdout         # two processes, not one
    ref = shardgen.merge(full, write=False)
    assert len(ref) == 9 and ref["row"].tolist() == list(range(9))
    assert set(ref["seed"]) == {0, 1, 2} and (ref.groupby("id").size() == 3).all()

    part = tmp_path / "part"
    _launch(job, part, "--max-shards", "1")                               # each process stops after one shard
    done = sorted(p.name for p in part.glob("shard-*.jsonl"))
    assert done == ["shard-000000.jsonl", "shard-000001.jsonl"]
    with pytest.raises(FairVLMError, match="missing"):
        shardgen.merge(part)
    # a kill in the middle of a write: a stray temp file, and a shard whose sidecar is stale
    (part / ".shard-000002.jsonl.abc.tmp").write_text('{"half": ')
    (part / "shard-000001.jsonl").write_text('{"row": 2, "text": "truncated')
    assert not shardgen.shard_done(part, 1)
    _launch(job, part)                                                    # resume: same command
    again = shardgen.merge(part)
    assert again.equals(ref)
    shardgen.merge(full)
    assert (part / "merged.jsonl").read_bytes() == (full / "merged.jsonl").read_bytes()


def test_shards_do_not_depend_on_the_number_of_processes(tmp_path):
    """One process (in-process, rank 0 of 1) writes the same shards as two would."""
    from fairvlm.models import load

    job = _job(tmp_path)
    a, b = tmp_path / "a", tmp_path / "b"
    lm = load("tiny-llava")
    shardgen.run(job, a, rank=0, world=1, lm=lm)
    shardgen.run(job, b, rank=1, world=2, lm=lm)
    shardgen.run(job, b, rank=0, world=2, lm=lm)
    assert shardgen.merge(a, write=False).equals(shardgen.merge(b, write=False))
    assert shardgen.run(job, a, rank=0, world=1, lm=lm) == []            # nothing left to do


def test_bad_jobs(tmp_path):
    with pytest.raises(FairVLMError, match="items"):
        shardgen.load_job({"model": "tiny-llava", "items": []})
    with pytest.raises(FairVLMError, match="twice"):
        shardgen.load_job({"model": "x", "items": [{"id": 1, "prompt": "a"}, {"id": 1, "prompt": "b"}]})
    with pytest.raises(FairVLMError, match="shard_size"):
        shardgen.load_job({"model": "x", "items": [{"id": 1, "prompt": "a"}], "shard_size": 0})
    with pytest.raises(FairVLMError, match="unknown job keys"):
        shardgen.load_job({"model": "x", "items": [{"id": 1, "prompt": "a"}], "shards": 3})
    job = _job(tmp_path)
    other = json.loads(job.read_text())
    other["seeds"] = [5]
    shardgen.run(other, tmp_path / "o", rank=0, world=1, max_shards=0)
    with pytest.raises(FairVLMError, match="different job"):
        shardgen.run(job, tmp_path / "o", rank=0, world=1, max_shards=0)


# ------------------------------------------------------------------ inputs changed between runs


def _small_job(tmp_path: Path, direction: Path | None = None, **extra) -> dict:
    items = [{"id": f"q{i}", "prompt": p, "image": None} for i, p in enumerate(["Describe a nurse.", "Describe a pilot."])]
    return {"model": "tiny-llava", "items": items, "seeds": [0, 1], "max_new_tokens": 2, "shard_size": 2,
            "batch_size": 2, "direction": None if direction is None else str(direction), **extra}


def _save_direction(path: Path, d: int, seed: int) -> None:
    import torch
    from safetensors.torch import save_file

    save_file({"direction": torch.randn(d, generator=torch.Generator().manual_seed(seed))}, str(path))


@pytest.fixture(scope="module")
def tiny_llava():
    from fairvlm.models import load

    return load("tiny-llava")


def test_a_changed_direction_file_is_refused_on_resume_and_on_merge(tmp_path, tiny_llava):
    lm = tiny_llava
    dpath = tmp_path / "direction.safetensors"
    _save_direction(dpath, lm.d_model, seed=1)
    job, out = _small_job(tmp_path, dpath), tmp_path / "out"
    assert shardgen.run(job, out, rank=0, world=1, max_shards=1, lm=lm) == [0]
    rows = [json.loads(line) for line in (out / "shard-000000.jsonl").read_text().splitlines()]
    fp = rows[0]["fingerprint"]
    assert len(fp) == 64 and all(r["fingerprint"] == fp for r in rows)   # stored in every row of the shard
    _save_direction(dpath, lm.d_model, seed=2)                              # same path, other bytes
    with pytest.raises(FairVLMError, match="different job"):
        shardgen.run(job, out, rank=0, world=1, lm=lm)
    _save_direction(dpath, lm.d_model, seed=1)                              # the original bytes: resumes
    assert shardgen.run(job, out, rank=0, world=1, lm=lm) == [1]
    assert len(shardgen.merge(out, write=False)) == 4
    _save_direction(dpath, lm.d_model, seed=3)
    with pytest.raises(FairVLMError, match="input of the job changed"):
        shardgen.merge(out)
    assert not (out / "merged.jsonl").exists()


def test_merge_takes_its_counts_from_the_job_not_from_job_json(tmp_path, tiny_llava):
    out = tmp_path / "out"
    shardgen.run(_small_job(tmp_path), out, rank=0, world=1, lm=tiny_llava)
    meta = json.loads((out / "job.json").read_text())
    meta["n_rows"], meta["n_shards"] = 2, 1                                 # edited: half the rows
    (out / "job.json").write_text(json.dumps(meta))
    assert len(shardgen.merge(out, write=False)) == 4
    meta["job"]["seeds"] = [0]                                              # the job itself edited
    (out / "job.json").write_text(json.dumps(meta))
    with pytest.raises(FairVLMError, match="job.json was edited"):
        shardgen.merge(out, write=False)
    (out / "job.json").write_text('{"fingerprint": "ab')                    # truncated
    with pytest.raises(FairVLMError, match="damaged"):
        shardgen.merge(out, write=False)


def test_duplicate_seeds_are_refused(tmp_path):
    for seeds in ([0, 0], [0, "0"], [1, 2, 1], [True], [0.5]):
        with pytest.raises(FairVLMError, match="seed"):
            shardgen.load_job(_small_job(tmp_path, seeds=seeds))


def test_a_failed_run_does_not_block_the_corrected_job(tmp_path, tiny_llava):
    out = tmp_path / "out"
    bad = _small_job(tmp_path, tmp_path / "no-such-direction.safetensors")
    with pytest.raises(FairVLMError, match="not found"):
        shardgen.run(bad, out, rank=0, world=1, lm=tiny_llava)
    assert not (out / "job.json").exists()
    dpath = tmp_path / "d.safetensors"
    dpath.write_bytes(b"not a safetensors file")                            # fails after job.json is written
    with pytest.raises(FairVLMError, match="not a readable safetensors"):
        shardgen.run(_small_job(tmp_path, dpath), out, rank=0, world=1, lm=tiny_llava)
    assert shardgen.run(_small_job(tmp_path), out, rank=0, world=1, lm=tiny_llava) == [0, 1]


@pytest.mark.parametrize("case", ["list", "temperature", "out_is_file", "truncated", "seeds", "max_shards"])
def test_command_line_bad_input_exits_2_with_one_line(tmp_path, case):
    job = _small_job(tmp_path)
    out = tmp_path / "out"
    extra = []
    if case == "list":
        job = job["items"]
    elif case == "temperature":
        job["temperature"] = "hot"
    elif case == "out_is_file":
        out.write_text("x")
    elif case == "seeds":
        job["seeds"] = [0, "0"]
    elif case == "max_shards":
        extra = ["--max-shards", "-1"]
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job)[: 40 if case == "truncated" else None])
    res = subprocess.run([sys.executable, "-m", "fairvlm.shardgen", "run", str(path), str(out), *extra],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.stderr
    assert not (out / "job.json").exists() if out.is_dir() else True


def test_changed_weights_under_the_same_name_are_refused_on_resume(tmp_path, tiny_llava):
    """model_digest hashes the weights themselves where no manifest names them: one edited
    parameter changes it, and a resume with those weights stops with one error."""
    import copy

    import torch

    lm = tiny_llava
    job, out = _small_job(tmp_path), tmp_path / "out"
    assert shardgen.run(job, out, rank=0, world=1, max_shards=1, lm=lm) == [0]
    d0 = shardgen.model_digest(lm)
    assert d0.startswith("weights:") and shardgen.model_digest(lm) == d0
    other = copy.copy(lm)
    other.model = copy.deepcopy(lm.model)
    with torch.no_grad():
        next(other.model.parameters()).add_(1e-3)
    assert shardgen.model_digest(other) != d0
    with pytest.raises(FairVLMError, match="other weights"):
        shardgen.run(job, out, rank=0, world=1, lm=other)
