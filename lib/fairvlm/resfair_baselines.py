"""Chapter 04's fitting data and its trained baselines (LoRA, DPO + KL), shipped as artifacts.

**One set of fitting rows.** :func:`chapter_splits` builds the chapter's fit / evaluation
splits from chapters 01-03's cached runs and, per split, draws the *fitting rows* once
(:func:`select_rows`): ``n_train`` training rows and ``n_val`` validation rows, from
disjoint scenarios of the fitting half. The RES-FAIR directions are fitted on the training
rows (:func:`fairvlm.lens.fit_directions` on that subset of the cached collection) and both
baselines are trained on the same rows, so the three methods see the same data. The
validation rows are only read by the baselines' stopping rule.

**Convergence rules** (:class:`PlateauStop`). The validation set is scored before the first
step and after every epoch. LoRA stops when its validation loss improved by less than
``min_rel`` (relative) over the previous evaluation, ``patience`` times in a row; DPO + KL
stops on the same plateau of its validation loss, and counts as converged only if its
validation reward margin (DPO's ``rewards/margins``) has also risen above its starting
value by at least ``min_margin``. A run that reaches ``max_epochs`` first is *not
converged*; the chapter then calls a comparison with it "not testable here".

**Artifacts.** The trained LoRA factors (unmerged, bfloat16 safetensors) ship under
``data/artifacts/04_resfair/`` with ``manifest.json``: per adapter its file's sha256 and
bytes, the build key (a hash of this module's and :mod:`fairvlm.finetune`'s source, the
fitting collection's cache key, which includes the model's weights, the chosen rows and the
training settings), whether it converged and its log history. :func:`get` verifies an
artifact before use; on a key mismatch or damage it says why in one line and retrains
(into ``fairvlm.paths.cache_dir()/resfair_baselines``, never over the shipped files).
``python -m fairvlm.resfair_baselines build-artifacts`` (``make models``) rebuilds them.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fairvlm.errors import FairVLMError

__all__ = ["TrainSettings", "SETTINGS", "METHODS", "select_rows", "chapter_splits", "PlateauStop", "build_key",
           "convergence", "CEILING_MIN_ABS", "spread_rows",
           "get", "apply_adapter", "shipped_dir", "main"]

METHODS = ("w/ LoRA", "w/ DPO+KL")
_SLUG = {"w/ LoRA": "lora", "w/ DPO+KL": "dpo_kl"}
MANIFEST = "manifest.json"
CODE_VERSION = "resfair-baselines-1"


@dataclass(frozen=True)
class TrainSettings:
    """The fitting rows and the baselines' schedule. ``lr``: the paper's 5e-5 is for 10
    epochs over every row on 7B models; with a hundred rows the adapters do not move at
    that rate within 10 epochs, so 1e-3, with the paper's 10 epochs as the ceiling and the
    stopping rule deciding when to stop (at most 2 epochs, as first shipped, left every
    embedded baseline unconverged: validation loss still falling 20-50% an epoch)."""

    n_train: int = 32
    n_val: int = 8
    batch: int = 16
    micro_batch: int = 16
    lr: float = 1e-3
    max_epochs: int = 10
    lora_r: int = 2
    beta: float = 0.1
    kl_coef: float = 0.5
    kl_measure: str = "fair_target"
    min_rel: float = 0.02
    min_margin: float = 0.1
    patience: int = 1


SETTINGS = {"embedded": TrainSettings(),
            "smoke": TrainSettings(n_train=8, n_val=4, batch=4, micro_batch=4, lr=5e-4, max_epochs=1, lora_r=1),
            "paper": TrainSettings(n_train=100000, n_val=64, batch=16, micro_batch=16, lr=5e-5, lora_r=8)}


# ---------------------------------------------------------------------------------------
# Fitting rows
# ---------------------------------------------------------------------------------------


def select_rows(rows, n_train: int, n_val: int, seed: int = 0) -> tuple[list, list]:
    """``(train, val)`` rows: the scenarios are shuffled with ``seed``; validation rows come
    from the first scenarios until ``n_val`` rows are reached, training rows from the rest
    (at most ``n_train``, spread evenly over them). No scenario is in both."""
    rows = list(rows)
    if not rows:
        raise FairVLMError("select_rows got no rows")
    scen = sorted({r.item.scenario for r in rows})
    if len(scen) < 2:
        raise FairVLMError("select_rows needs rows of at least two scenarios (training and validation)")
    rng = np.random.default_rng(seed)
    order = [scen[i] for i in rng.permutation(len(scen))]
    by = {s: [r for r in rows if r.item.scenario == s] for s in order}
    val_s, n = [], 0
    for s in order[:-1]:
        if n >= n_val:
            break
        val_s.append(s)
        n += len(by[s])
    val = [r for s in val_s for r in by[s]]
    rest = [r for s in order if s not in val_s for r in by[s]]
    rest.sort(key=lambda r: r.row_id)
    if len(rest) > n_train:
        idx = np.unique(np.linspace(0, len(rest) - 1, n_train).round().astype(int))
        rest = [rest[i] for i in idx]
    val.sort(key=lambda r: r.row_id)
    return rest, val[: max(n_val, 1)]


def spread_rows(rows: list, n: int | None) -> list:
    """At most ``n`` of ``rows``, spread over their scenarios (``row.item.scenario``): the
    first row of every scenario, then the second of every scenario, ... so a cap keeps every
    scenario (each a cluster of the chapter's bootstrap) while it can; the kept rows stay in
    their original order. ``None``: all rows."""
    if n is None or len(rows) <= n:
        return list(rows)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise FairVLMError(f"max_eval_rows must be a positive integer or None, got {n!r}")
    by: dict = {}
    for i, r in enumerate(rows):
        by.setdefault(r.item.scenario, []).append(i)
    order = [q[j] for j in range(max(map(len, by.values()))) for _, q in sorted(by.items()) if j < len(q)]
    return [rows[i] for i in sorted(order[:n])]


def chapter_splits(profile: str, *, dtype: str = "bfloat16", testbed: bool = True, both_ways: bool = False,
                   settings: TrainSettings | None = None, seed: int = 0, eval_prompts: int = 4,
                   max_eval_rows: int | None = None) -> list[dict]:
    """The chapter's splits: per entry ``model, fit, eval, dataset, fit_col, eval_col,
    train_rows, val_rows, fit_images, eval_rows, images, dirs, batch``. The directions are
    fitted on the training rows only (see the module docstring)."""
    from fairvlm import lens, resfair

    settings = settings or SETTINGS.get(profile, TrainSettings())
    spec = [s for s in lens.PROFILE_RUNS[profile] if s.dataset != lens.CONTROL and (testbed or s.dataset != "testbed")]
    runs = lens.profile_runs(profile, dtype=dtype, runs=spec, progress=False)
    splits = resfair.fit_eval_splits(runs)
    kept: dict = {}
    for sp in splits:
        key = sp["model"] if profile == "smoke" else (sp["model"], resfair.base_dataset(sp["eval"]))
        if both_ways:
            key = (sp["model"], sp["fit"])
        kept.setdefault(key, sp)
    splits = list(kept.values())
    spec_of = {(s.model, s.dataset): s for s in spec}
    rows_of = {k: lens.run_rows(spec_of[k])[:2] for k in runs}
    for sp in splits:
        sp["dataset"] = resfair.base_dataset(sp["eval"])
        fit_rows_all, sp["fit_images"] = rows_of[(sp["model"], resfair.base_dataset(sp["fit"]))]
        fit_rows = resfair.rows_for(fit_rows_all, set(sp["fit_col"].table["scenario"]))
        sp["train_rows"], sp["val_rows"] = select_rows(fit_rows, settings.n_train, settings.n_val, seed)
        ids = {r.row_id for r in sp["train_rows"]}
        sub = sp["fit_col"].subset(sp["fit_col"].table["row_id"].isin(ids).to_numpy())
        try:
            sp["dirs"], sp["dirs_rows"] = lens.fit_directions(sub), len(sub.table)
        except FairVLMError:   # too few training rows to split into thirds (smoke): every fitting row
            sp["dirs"], sp["dirs_rows"] = lens.fit_directions(sp["fit_col"]), len(sp["fit_col"].table)
        rows_, sp["images"] = rows_of[(sp["model"], sp["dataset"])]
        ev = resfair.rows_for(rows_, set(sp["eval_col"].table["scenario"]))
        sp["eval_rows"] = spread_rows([r for r in ev if r.prompt_id < eval_prompts], max_eval_rows)
        sp["batch"] = spec_of[(sp["model"], sp["dataset"])].batch_size
        sp["size"] = spec_of[(sp["model"], sp["dataset"])].size
    return splits


# ---------------------------------------------------------------------------------------
# Convergence
# ---------------------------------------------------------------------------------------


def plateau_decision(losses, margins=None, *, min_rel: float = 0.02, patience: int = 1,
                     min_margin: float = 0.1) -> tuple[bool, bool]:
    """``(stop, converged)`` after the validation evaluations so far.

    ``losses``: validation losses, the first one before training. Stop when the last
    ``patience`` evaluations each improved on their predecessor by less than ``min_rel``
    of it. ``margins`` (DPO): converged only if, at the stop, the last margin exceeds the
    first by at least ``min_margin``."""
    losses = [float(x) for x in losses]
    if len(losses) < patience + 2:       # the start plus at least one epoch beyond the first
        return False, False
    tail = losses[-(patience + 1):]
    flat = all((a - b) < min_rel * abs(a) for a, b in zip(tail[:-1], tail[1:]))
    if not flat:
        return False, False
    if margins is not None:
        m = [float(x) for x in margins]
        return True, bool(len(m) >= 2 and m[-1] - m[0] >= min_margin)
    return True, True


#: A baseline that reaches its epoch ceiling still counts as converged when its validation
#: loss moved by less than this many nats over the last epoch (and, for DPO, its margin rose):
#: near zero loss a geometric tail (0.0026 -> 0.0020 -> 0.0019) never improves by less than
#: ``min_rel`` of itself, yet the curve is flat. Read from the recorded history, after
#: training; it does not change when training stops, so it is not part of the build key.
CEILING_MIN_ABS = 0.005


def convergence(rec: dict, settings: TrainSettings) -> tuple[bool, str]:
    """``(converged, how)`` for a trained baseline's record (its ``val_loss``, ``val_margin``
    and ``converged`` as the plateau rule left it): ``"plateau rule"``, ``"flat at the
    ceiling"`` (see :data:`CEILING_MIN_ABS`) or ``"not converged"`` / ``"margin did not
    rise"``."""
    if rec.get("converged"):
        return True, "plateau rule"
    losses = [float(x) for x in rec.get("val_loss") or []]
    margins = [float(x) for x in rec.get("val_margin") or []]
    ceiling = len(losses) >= settings.max_epochs + 1
    if not ceiling or len(losses) < 3 or not all(math.isfinite(x) for x in losses[-2:]):
        return False, "not converged"
    if abs(losses[-2] - losses[-1]) >= CEILING_MIN_ABS:
        return False, "not converged"
    if rec.get("val_margin") is not None:      # DPO: the preference must also have been learnt
        if len(margins) < 2 or not (margins[-1] - margins[0] >= settings.min_margin):
            return False, "margin did not rise"
    return True, "flat at the ceiling"


def _callback(settings: TrainSettings, dpo: bool, state: dict):
    from transformers import TrainerCallback

    class PlateauStop(TrainerCallback):
        """Stops training by :func:`plateau_decision` on the validation evaluations."""

        def on_evaluate(self, args, tstate, control, metrics=None, **kw):
            metrics = metrics or {}
            state["losses"].append(float(metrics.get("eval_loss", math.nan)))
            if dpo:
                state["margins"].append(float(metrics.get("eval_rewards/margins", math.nan)))
            stop, conv = plateau_decision(state["losses"], state["margins"] if dpo else None,
                                          min_rel=settings.min_rel, patience=settings.patience,
                                          min_margin=settings.min_margin)
            if stop:
                state["converged"] = conv
                control.should_training_stop = True
            return control

    return PlateauStop()


PlateauStop = _callback   # the factory; the class is built where transformers is imported


# ---------------------------------------------------------------------------------------
# Keys, files
# ---------------------------------------------------------------------------------------


def _source_digest() -> str:
    from fairvlm import finetune

    import inspect

    h = hashlib.sha256(CODE_VERSION.encode())
    h.update(Path(finetune.__file__).read_bytes())
    for fn in (select_rows, plateau_decision, _callback, train_one, _load_base):   # what training runs
        h.update(inspect.getsource(fn).encode())
    return h.hexdigest()[:16]


def build_key(sp: dict, method: str, settings: TrainSettings, seed: int) -> str:
    """A hash of what determines one adapter (module docstring)."""
    payload = {"code": _source_digest(), "method": method, "collection": sp["fit_col"].key, "model": sp["model"],
               "train": [[r.row_id, r.text] for r in sp["train_rows"]],
               "val": [[r.row_id, r.text] for r in sp["val_rows"]], "settings": asdict(settings), "seed": seed}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def artifact_name(sp: dict, method: str, profile: str) -> str:
    return f"{profile}-{sp['model']}-fit-{sp['fit']}-{_SLUG[method]}" + _world_suffix(sp)


def shipped_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "data" / "artifacts" / "04_resfair"


def _cache_folder() -> Path:
    from fairvlm.paths import cache_dir

    return cache_dir() / "resfair_baselines"


def _read_manifest(folder: Path) -> dict:
    f = folder / MANIFEST
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as exc:
        raise FairVLMError(f"{f} is not valid JSON ({exc}); rebuild with `make models`") from exc


def _load_entry(folder: Path, name: str, key: str) -> tuple[dict | None, dict | None, str]:
    """``(state, record, why_not)`` for the artifact ``name`` in ``folder``."""
    from safetensors.torch import load_file

    from fairvlm.checksums import sha256_file

    rec = _read_manifest(folder).get(name)
    if rec is None:
        return None, None, f"no {name} in {folder}"
    if rec.get("build_key") != key:
        return None, None, f"{name} in {folder} was built from other code, rows or settings (build key differs)"
    f = folder / rec["file"]
    if not f.is_file() or f.stat().st_size != rec["bytes"] or sha256_file(f) != rec["sha256"]:
        return None, None, f"{f} is missing or damaged (size or sha256 differs from the manifest)"
    return load_file(str(f)), rec, ""


def _save_entry(folder: Path, name: str, state: dict, rec: dict) -> None:
    import torch
    from safetensors.torch import save_file

    from fairvlm.checksums import sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    f = folder / f"{name}.safetensors"
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in state.items()}, str(f))
    man = _read_manifest(folder)
    man[name] = {**rec, "file": f.name, "bytes": f.stat().st_size, "sha256": sha256_file(f)}
    (folder / MANIFEST).write_text(json.dumps(man, indent=1, sort_keys=True) + "\n")


def _load_base(sp: dict, dtype=None):
    from fairvlm import models

    kw = {"size": sp["size"]} if sp.get("size") else {}
    if dtype is not None:
        kw["dtype"] = dtype
    return models.load(sp["model"], **kw)


def train_one(sp: dict, method: str, settings: TrainSettings, seed: int = 0) -> tuple[dict, dict]:
    """Train one baseline on ``sp``'s fitting rows; ``(adapter_state, record)``."""
    import torch

    from fairvlm import finetune

    state = {"losses": [], "margins": [], "converged": False}
    dpo = method == "w/ DPO+KL"
    fn = finetune.train_dpo_kl if dpo else finetune.train_lora
    extra = {"beta": settings.beta, "kl_coef": settings.kl_coef, "kl_measure": settings.kl_measure} if dpo else {}
    lm = _load_base(sp, torch.float32)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        model_t, hist = fn(lm, sp["train_rows"], sp["fit_images"], output_dir=tmp, epochs=settings.max_epochs,
                           batch_size=settings.batch, micro_batch=settings.micro_batch, lr=settings.lr, seed=seed,
                           lora_r=settings.lora_r, mixed_precision="bf16", eval_rows=sp["val_rows"],
                           callbacks=[_callback(settings, dpo, state)], **extra)
    keep = ("step", "epoch", "loss", "loss/dpo", "loss/kl", "eval_loss", "eval_rewards/margins", "rewards/margins")
    history = [{k: h[k] for k in keep if k in h} for h in hist]
    rec = {"method": method, "model": sp["model"], "fit": sp["fit"], "converged": bool(state["converged"]),
           "val_loss": state["losses"], "val_margin": state["margins"] if dpo else None, "history": history,
           "train_s": round(time.time() - t0, 1), "settings": asdict(settings), "seed": seed,
           "n_train": len(sp["train_rows"]), "n_val": len(sp["val_rows"])}
    return model_t.info["adapter_state"], rec


def apply_adapter(sp: dict, state: dict, settings: TrainSettings, dtype=None, base=None):
    """The base model of ``sp`` with the LoRA factors ``state`` merged in, cast to ``dtype``.
    ``base``: the split's base model already loaded in float32 (it is copied, not changed),
    so a chapter loads each base once; without it the base is loaded here."""
    import copy

    import torch
    from peft import get_peft_model, set_peft_model_state_dict

    from fairvlm import finetune

    if base is not None and (base.name != sp["model"] or base.dtype != torch.float32):
        raise FairVLMError(f"base must be {sp['model']} in float32, got {base.name} in {base.dtype}")
    lm = _load_base(sp, torch.float32) if base is None else copy.deepcopy(base)
    peft_model = get_peft_model(lm.model, finetune.lora_config(settings.lora_r))
    res = set_peft_model_state_dict(peft_model, {k: v.float() for k, v in state.items()})
    if getattr(res, "unexpected_keys", None):
        raise FairVLMError(f"the adapter does not fit {sp['model']}: unexpected keys {res.unexpected_keys[:3]}")
    model = peft_model.merge_and_unload()
    model.eval()
    model.requires_grad_(True)   # as transformers loads it (see fairvlm.finetune._merged)
    if dtype is not None:
        model.to(dtype)
    from dataclasses import replace

    return replace(lm, model=model, info={**lm.info, "_fingerprint": None})


def load_valid(sp: dict, method: str, profile: str, settings: TrainSettings, *, seed: int = 0,
               folder: Path | None = None, cache: bool = True) -> tuple[dict | None, dict | None, str]:
    """One baseline's adapter when a folder holds it with the current build key and intact
    files: the shipped folder (or ``folder``) first, then (``cache=True``) the user's cache.
    Never trains. Returns ``(state, record, "shipped" | "cache")`` or ``(None, None, why)``
    with the first folder's reason."""
    name, key = artifact_name(sp, method, profile), build_key(sp, method, settings, seed)
    first = folder or shipped_dir()
    reasons = []
    for where in (first, _cache_folder()) if cache else (first,):
        state, rec, why = _load_entry(where, name, key)
        if state is not None:
            return state, rec, "shipped" if where == first else "cache"
        reasons.append(why)
    return None, None, reasons[0]


def get(sp: dict, method: str, profile: str, settings: TrainSettings, *, seed: int = 0, log=print,
        folder: Path | None = None, write: bool = False) -> tuple[dict, dict, str]:
    """``(adapter_state, record, source)`` for one baseline: the shipped artifact when its
    key and checksums hold, else the cache's, else trained now (saying why in one line).
    ``write=True`` (``build-artifacts``) always trains and writes into ``folder``."""
    import torch

    name, key = artifact_name(sp, method, profile), build_key(sp, method, settings, seed)
    if not write:
        state, rec, where = load_valid(sp, method, profile, settings, seed=seed, folder=folder)
        if state is not None:
            return state, rec, where
        log(f"training {name}: {where}")
    state, rec = train_one(sp, method, settings, seed)
    rec["build_key"] = key
    _save_entry(folder if write else _cache_folder(), name, state, rec)
    # the factors as saved (bfloat16), so that a run that trains and one that loads agree
    return {k: v.to(torch.bfloat16) for k, v in state.items()}, rec, "trained now"


def main(argv=None) -> int:
    """``python -m fairvlm.resfair_baselines build-artifacts [--profile embedded]``."""
    ap = argparse.ArgumentParser(prog="python -m fairvlm.resfair_baselines", description=__doc__.split("\n")[0])
    ap.add_argument("command", choices=["build-artifacts"])
    ap.add_argument("--profile", default="embedded", choices=sorted(SETTINGS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", type=int, nargs="*", default=None, help="split indices to build (default: all)")
    ap.add_argument("--folder", default=None, help="write here instead of data/artifacts/04_resfair")
    a = ap.parse_args(argv)
    folder = Path(a.folder) if a.folder else shipped_dir()
    import fairvlm

    fairvlm.seed_everything(a.seed)
    settings = SETTINGS[a.profile]
    for k, sp in enumerate(chapter_splits(a.profile, settings=settings, seed=a.seed)):
        if a.only is not None and k not in a.only:
            continue
        for method in METHODS:
            print(f"{artifact_name(sp, method, a.profile)}: training on {len(sp['train_rows'])} rows", flush=True)
            _, rec, _ = get(sp, method, a.profile, settings, seed=a.seed, folder=folder, write=True)
            print(f"{artifact_name(sp, method, a.profile)}: converged={rec['converged']} in {rec['train_s']} s, "
                  f"validation loss {[round(x, 4) for x in rec['val_loss']]}", flush=True)
    return 0


def _world_suffix(sp: dict) -> str:
    """``-<world>`` for a testbed adapter of a world other than the default (each world's
    adapters are trained on that world's model), else nothing."""
    if "testbed" not in sp["model"]:
        return ""
    from fairvlm.testbed.artifacts import current_world

    w = current_world()
    return "" if w == "default" else f"-{w}"


if __name__ == "__main__":
    raise SystemExit(main())
