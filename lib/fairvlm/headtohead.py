"""Every method head to head on the testbed, across the shipped worlds (chapter 08).

No paper compares its method with the others on one model and one ground truth. The testbed
plants a bias of known size, so one set of measures can be read for every method:

**planted bias removed** (:func:`removed`)
    Let ``u_k`` be the planted signed skew of scenario ``k`` as the spec file writes it
    (``p_man - 1/2`` at strength 1; a world of strength ``s`` plants ``s u_k``), ``b_k`` the
    unedited model's behaviour on it (on testbed-clip: among the scenario's own gallery
    images, the share of (man, woman) pairs its query ranks man first, :func:`pair_shares`)
    and ``a_k`` the edited model's. Both are read against the mean of the
    *balanced controls* (scenarios planted at 1/4 per group), so a shift that moves every
    scenario alike removes nothing. The skew the model *expresses* along the planted pattern
    is ``E(x) = sum_k u_k (x_k - xbar_bal) / sum_k u_k^2`` (1: the model shows the written
    skew in full); a method removes ``E(b) - E(a)`` of it (:func:`removed_units` gives the
    per-scenario terms whose mean this is, the units a verdict resamples), and the **share
    removed** is ``(E(b) - E(a)) / E(b)``: 0.5 for a method that halves every scenario's skew,
    0 for one that shifts every scenario by the same amount. The share is undefined (NaN)
    where the model expresses no planted skew to remove (``E(b)``'s interval reaches 0), as on
    the strength-0 world. Read on the planted-skewed scenarios and on the
    counter-stereotypical ones separately (:func:`scenario_classes`).
**collateral** (:func:`collateral`)
    How far the balanced controls move (mean ``|a_k - b_k|`` over them) and how far the other
    attribute moves (mean ``|a_k - b_k|`` of the race behaviour over every scenario, for a
    gender edit).
**utility kept** (:func:`utility_kept`)
    The edited model's utility over the unedited one's (text-to-image hit@5 per caption,
    zero-shot scenario accuracy per image), with a paired bootstrap interval.
**cost** (:func:`time_per_1000`)
    Extra seconds per 1,000 inputs against the unedited model, timed interleaved in the same
    process.

Worlds: :func:`resolve_world` turns a world name or a strength into one of
:data:`fairvlm.testbed.WORLDS` (one clear error otherwise); :func:`sweep_worlds` reads the
chapter's ``WORLDS`` parameter (empty: ``$FAIRVLM_WORLD`` alone when set, as the
calibration run sets it, else every shipped world); :func:`in_world` runs a block on one
world. :func:`clip_world_run` runs the chapter-07 methods on one world's testbed-clip, and
DEBIASLENS (chapter 06; I, T, I+T) where that world has chapter 06's SAEs
(:func:`debiaslens_saes`, which never trains); :func:`method_measures` reads every measure of
one method on one world.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from fairvlm.errors import FairVLMError, unknown
from fairvlm.params import ParameterError

#: the protocol's words for a "removes the planted bias" row, as the ranking table prints them
RANK_WORDS = {"reproduced": "removes the planted bias beyond its control",
              "not reproduced": "does not remove it beyond its control",
              "inconclusive": "inconclusive",
              "not testable here": "not testable here"}


# ---------------------------------------------------------------------------------------
# Worlds
# ---------------------------------------------------------------------------------------


def world_strengths() -> dict[str, float]:
    """``{world: strength}`` of the shipped worlds (``default`` at the spec file's own strength)."""
    from fairvlm.testbed.artifacts import WORLDS
    from fairvlm.testbed.spec import load_spec

    return {w: (float(s) if s is not None else float(load_spec().strength)) for w, s in WORLDS.items()}


def resolve_world(world) -> str:
    """A world name of :data:`fairvlm.testbed.WORLDS`, from a name (``"strength-0.5"``) or a
    planted strength (``0.5``, ``"0.5"``, ``1``); anything else is one
    :class:`~fairvlm.errors.FairVLMError` listing the worlds and their strengths."""
    from fairvlm.testbed.artifacts import WORLDS

    if isinstance(world, str) and world.strip() in WORLDS:
        return world.strip()
    strengths = world_strengths()
    if not isinstance(world, bool):
        try:
            s = float(world)
        except (TypeError, ValueError):
            s = None
        if s is not None and math.isfinite(s):
            for w, ws in strengths.items():
                if abs(ws - s) < 1e-9:
                    return w
    raise unknown("testbed world or strength", world,
                  [f"{w} (strength {s:g})" for w, s in strengths.items()])


def sweep_worlds(spec: str = "") -> list[str]:
    """The worlds a run sweeps: ``spec`` (comma-separated names or strengths), or when empty
    ``$FAIRVLM_WORLD`` alone if it is set (the calibration run sets it), else every shipped
    world in increasing strength."""
    from fairvlm.testbed.artifacts import WORLD_ENV, current_world

    if not isinstance(spec, str):
        raise ParameterError(f"WORLDS={spec!r} must be a string of world names or strengths, comma-separated")
    if spec.strip():
        out = [resolve_world(p) for p in spec.split(",") if p.strip()]
    elif os.environ.get(WORLD_ENV, "").strip():
        out = [current_world()]
    else:
        s = world_strengths()
        out = sorted(s, key=lambda w: s[w])
    if len(set(out)) != len(out):
        raise ParameterError(f"WORLDS={spec!r} names a world twice")
    return out


@contextlib.contextmanager
def in_world(world: str):
    """Run a block with ``$FAIRVLM_WORLD`` set to ``world`` (every testbed load and
    ``world_spec()`` inside reads it); the previous value is restored afterwards."""
    from fairvlm.testbed.artifacts import WORLD_ENV

    world = resolve_world(world)
    old = os.environ.get(WORLD_ENV)
    os.environ[WORLD_ENV] = world
    try:
        yield world
    finally:
        if old is None:
            os.environ.pop(WORLD_ENV, None)
        else:
            os.environ[WORLD_ENV] = old


def scenario_classes(attribute: str = "gender") -> pd.DataFrame:
    """One row per scenario: ``scenario``, ``u`` (the written signed skew of ``attribute``,
    strength 1: ``p_man - 1/2`` or ``p_black - 1/2``), ``u_other`` (the other attribute's) and
    ``cls``: ``balanced`` (every group at 1/4: the controls), ``counter`` (marked
    counter-stereotypical in the spec), ``planted`` (skewed on ``attribute``) or ``other``
    (skewed on the other attribute only)."""
    from fairvlm.testbed.spec import load_spec

    if attribute not in ("gender", "race"):
        raise unknown("attribute", attribute, ("gender", "race"))
    t = load_spec(strength=1.0).share_table()
    col, other = ("gender_skew", "race_skew") if attribute == "gender" else ("race_skew", "gender_skew")
    groups = ["black_man", "black_woman", "white_man", "white_woman"]
    bal = np.isclose(t[groups].to_numpy(float), 0.25).all(axis=1)
    counter = t["note"].astype(str).str.contains("counter", case=False).to_numpy()
    u = t[col].to_numpy(float)
    cls = np.where(bal, "balanced", np.where(counter, "counter", np.where(np.abs(u) > 1e-9, "planted", "other")))
    return pd.DataFrame({"scenario": t["scenario"], "u": u, "u_other": t[other].to_numpy(float), "cls": cls})


# ---------------------------------------------------------------------------------------
# The measures
# ---------------------------------------------------------------------------------------


def _arr(name: str, x, n: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=float)
    if a.ndim != 1 or (n is not None and a.size != n):
        raise ParameterError(f"{name} must be a 1-D array" + (f" of {n} values" if n is not None else "")
                             + f", got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ParameterError(f"{name} holds NaN or inf")
    return a


def _mask(name: str, m, n: int) -> np.ndarray:
    a = np.asarray(m, dtype=bool)
    if a.shape != (n,):
        raise ParameterError(f"{name} must be a boolean mask of {n} values, got shape {a.shape}")
    return a


def expressed(u, x, *, balanced, subset) -> float:
    """The skew ``x`` expresses along the planted pattern ``u`` on ``subset``, read against the
    mean of ``x`` on the ``balanced`` controls (0 when there are none): ``sum u (x - xbar_bal)
    / sum u^2``."""
    u = _arr("u", u)
    x, bal, sub = _arr("x", x, u.size), _mask("balanced", balanced, u.size), _mask("subset", subset, u.size)
    den = float((u[sub] ** 2).sum())
    if den <= 0:
        raise ParameterError("the subset holds no scenario with a planted skew (sum of u^2 is 0)")
    ref = float(x[bal].mean()) if bal.any() else 0.0
    return float((u[sub] * (x[sub] - ref)).sum() / den)


def removed_units(u, before, after, *, balanced, subset) -> np.ndarray:
    """Per-scenario terms (one per scenario of ``subset``) whose mean is the planted skew
    removed, ``E(before) - E(after)`` (:func:`expressed`): ``u_k (d_k - dbar_bal) / mean(u^2)``
    with ``d = before - after``. The balanced mean is held fixed (not resampled)."""
    u = _arr("u", u)
    b, a = _arr("before", before, u.size), _arr("after", after, u.size)
    bal, sub = _mask("balanced", balanced, u.size), _mask("subset", subset, u.size)
    d = b - a
    ref = float(d[bal].mean()) if bal.any() else 0.0
    msq = float((u[sub] ** 2).mean()) if sub.any() else 0.0
    if msq <= 0:
        raise ParameterError("the subset holds no scenario with a planted skew (sum of u^2 is 0)")
    return u[sub] * (d[sub] - ref) / msq


def _boot_idx(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def removed(u, before, after, *, balanced, subset, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """The planted-bias-removed measure on ``subset`` (module docstring), with percentile
    intervals from resampling the subset's scenarios and the balanced controls:

    ``expressed_before`` / ``expressed_after`` (:func:`expressed`), ``removed_abs`` (their
    difference, in units of the written skew) and ``removed`` (the share of the expressed
    skew removed: NaN, with its interval, when ``expressed_before``'s interval reaches 0 or
    below, i.e. the model shows no planted skew to remove), each with ``*_lo`` / ``*_hi``;
    ``n`` the scenarios in the subset."""
    u = _arr("u", u)
    b, a = _arr("before", before, u.size), _arr("after", after, u.size)
    bal, sub = _mask("balanced", balanced, u.size), _mask("subset", subset, u.size)
    eb, ea = expressed(u, b, balanced=bal, subset=sub), expressed(u, a, balanced=bal, subset=sub)
    si, bi = np.flatnonzero(sub), np.flatnonzero(bal)
    S, B = _boot_idx(si.size, n_boot, seed), _boot_idx(max(bi.size, 1), n_boot, seed + 1)
    us, bs_, as_ = u[si][S], b[si][S], a[si][S]
    rb = b[bi][B].mean(axis=1, keepdims=True) if bi.size else 0.0
    ra = a[bi][B].mean(axis=1, keepdims=True) if bi.size else 0.0
    den = (us ** 2).sum(axis=1)
    ok = den > 0
    eb_s = ((us * (bs_ - rb)).sum(axis=1) / np.where(ok, den, 1.0))[ok]
    ea_s = ((us * (as_ - ra)).sum(axis=1) / np.where(ok, den, 1.0))[ok]
    q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)

    def iv(x):
        return tuple(float(v) for v in np.percentile(x, q)) if x.size else (float("nan"), float("nan"))

    out = {"n": int(si.size), "expressed_before": eb, "expressed_after": ea, "removed_abs": eb - ea}
    out["expressed_before_lo"], out["expressed_before_hi"] = iv(eb_s)
    out["expressed_after_lo"], out["expressed_after_hi"] = iv(ea_s)
    out["removed_abs_lo"], out["removed_abs_hi"] = iv(eb_s - ea_s)
    if si.size and out["expressed_before_lo"] > 0 and eb > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            share = (eb_s - ea_s) / eb_s
        share = share[np.isfinite(share)]
        out["removed"] = (eb - ea) / eb
        out["removed_lo"], out["removed_hi"] = iv(share)
    else:
        out["removed"] = out["removed_lo"] = out["removed_hi"] = float("nan")
    return out


def collateral(before, after, *, balanced, other_before=None, other_after=None, n_boot: int = 1000,
               seed: int = 0, level: float = 0.95) -> dict:
    """How far what should stay put moves: ``balanced`` = mean ``|after - before|`` over the
    balanced controls; ``other`` = the same over every scenario of the other attribute's
    behaviour (when given). Percentile intervals over scenarios."""
    b = _arr("before", before)
    a, bal = _arr("after", after, b.size), _mask("balanced", balanced, b.size)
    q = (100 * (1 - level) / 2, 100 * (1 + level) / 2)

    def mean_iv(x, s):
        if x.size == 0:
            return float("nan"), float("nan"), float("nan")
        boots = x[_boot_idx(x.size, n_boot, s)].mean(axis=1)
        lo, hi = np.percentile(boots, q)
        return float(x.mean()), float(lo), float(hi)

    out = {}
    out["balanced"], out["balanced_lo"], out["balanced_hi"] = mean_iv(np.abs(a - b)[bal], seed)
    out["n_balanced"] = int(bal.sum())
    if other_before is not None:
        ob = _arr("other_before", other_before)
        oa = _arr("other_after", other_after, ob.size)
        out["other"], out["other_lo"], out["other_hi"] = mean_iv(np.abs(oa - ob), seed + 1)
    return out


def utility_kept(before, after, *, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """``mean(after) / mean(before)`` of per-unit utility (hits, correct answers), with a
    paired percentile bootstrap interval; ``n`` units."""
    b = _arr("before", before)
    a = _arr("after", after, b.size)
    if b.size == 0 or b.mean() <= 0:
        raise ParameterError("utility before the edit must be positive on a non-empty set of units")
    idx = _boot_idx(b.size, n_boot, seed)
    mb, ma = b[idx].mean(axis=1), a[idx].mean(axis=1)
    r = ma[mb > 0] / mb[mb > 0]
    lo, hi = np.percentile(r, (100 * (1 - level) / 2, 100 * (1 + level) / 2))
    return {"kept": float(a.mean() / b.mean()), "kept_lo": float(lo), "kept_hi": float(hi), "n": int(b.size)}


def time_per_1000(plain: Callable[[], object], method: Callable[[], object], n_inputs: int, *,
                  repeats: int = 5, seed: int = 0) -> dict:
    """Extra seconds per 1,000 inputs of ``method`` over ``plain`` (each processes
    ``n_inputs`` inputs), from :func:`fairvlm.timing.time_ab` (the one timer the book uses:
    plain, method and plain again, interleaved ``repeats`` times in this process):
    ``extra_s_per_1000`` (median difference) with a bootstrap interval over repeats
    (``extra_lo``, ``extra_hi``), ``noise_s_per_1000`` (plain again minus plain, the A/A
    column, with ``noise_lo``, ``noise_hi``), ``plain_s_per_1000``, and the ratio readings
    of the same measurement (``ratio``, ``interval``, ``noise``, ``noise_interval``,
    ``valid``)."""
    from fairvlm.timing import time_ab

    if isinstance(n_inputs, bool) or not isinstance(n_inputs, (int, np.integer)) or n_inputs < 1:
        raise ParameterError(f"n_inputs={n_inputs!r} must be a positive count")
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 3:
        raise ParameterError(f"repeats={repeats!r} must be at least 3")
    t = time_ab(plain, method, repeats=int(repeats), n_inputs=int(n_inputs), seed=seed)
    t.pop("times")
    return t


# ---------------------------------------------------------------------------------------
# Chapter 07's methods on one world
# ---------------------------------------------------------------------------------------

#: the CLIP methods of chapter 07 compared here, and the matched control of each
CLIP_METHODS = {
    "prototype replacement (experts)": "male prototype on random non-expert heads, at the strength whose probe-set "
                                       "mAP drop matches the expert edit's",
    "zero ablation (experts)": "random non-expert heads damped toward zero, at the strength whose probe-set mAP "
                               "drop matches the expert edit's",
    "CLIP-clip": "as many random embedding dimensions dropped",
    "biased prompts": "projection built from random directions",
}


#: DEBIASLENS (chapter 06) on the image side, the text side and both, with chapter 06's defaults;
#: only where its SAEs exist; each against as many random latents of matched firing rate
SAE_METHOD = "DEBIASLENS-I"
SAE_CONTROL = "as many random latents of matched firing rate switched off"
SAE_METHODS = {"DEBIASLENS-I": SAE_CONTROL, "DEBIASLENS-T": SAE_CONTROL, "DEBIASLENS-I+T": SAE_CONTROL}
SAE_SETTINGS = {"probe_threshold": 0.5, "neurons_per_group": 2, "other_cap": 0.25, "gamma": "zero", "alpha": 0.6}


def debiaslens_saes(world: str, *, size: str = "full", seed: int = 0) -> tuple[dict | None, str]:
    """Chapter 06's SAEs (embedded recipe) for ``world``'s testbed when the book ships them
    with the current build key (``data/artifacts/06_debiaslens``): ``(saes, where)``;
    otherwise ``(None, why)``. Never trains: training them takes minutes, more than this
    chapter's budget, so a world without them goes without DEBIASLENS. SAEs a reader trained
    into the cache (chapter 06 run on another world) are not used, so the chapter's tables
    do not depend on what else this machine has run."""
    from fairvlm import debiaslens as DL

    world = resolve_world(world)
    saes, _, why = DL.load_valid_saes("testbed-clip", "testbed-llava", profile="embedded", world=world, seed=seed,
                                      size=size, cache=False)
    if saes is not None:
        return saes, f"chapter 06's SAEs ({why.split(' (')[-1].rstrip(')')})"
    if world != "default":
        return None, "chapter 06 ships its SAEs for the default world only; training them here would take minutes"
    return None, (f"no SAEs of chapter 06 with the current build key ({why}); "
                  "`python -m fairvlm.debiaslens build-artifacts` rebuilds them; training them here would take minutes")


def pair_shares(q_emb, img_emb, meta: pd.DataFrame, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per scenario query (``keys[i]`` is query ``i``'s scenario): among the gallery images of
    that scenario, the share of (man, woman) pairs in which the query ranks the man higher,
    and of (Black, White) pairs in which it ranks the Black person higher (ties count half).
    0.5 is no preference; on a balanced gallery it is the Mann-Whitney AUC of the ranking."""
    sim = (q_emb @ img_emb.T).numpy()
    scen = meta["scenario"].to_numpy()
    out = {"gender": [], "race": []}
    for i, key in enumerate(keys):
        idx = np.flatnonzero(scen == key)
        s = sim[i, idx]
        for attr, pos in (("gender", "male"), ("race", "black")):
            is_a = meta[attr].to_numpy()[idx] == pos
            a, b = s[is_a], s[~is_a]
            if a.size == 0 or b.size == 0:
                raise FairVLMError(f"scenario {key!r} has no {pos} or no other image in the gallery")
            d = a[:, None] - b[None, :]
            out[attr].append(float((d > 0).mean() + 0.5 * (d == 0).mean()))
    return np.asarray(out["gender"]), np.asarray(out["race"])


def _hits(cap_emb, img_emb, relevant: np.ndarray, k: int = 5) -> np.ndarray:
    sim = (cap_emb @ img_emb.T).numpy()
    order = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(relevant, order, axis=1).any(axis=1).astype(float)


def _zs_correct(img_emb, prompt_emb, labels: np.ndarray) -> np.ndarray:
    return ((img_emb @ prompt_emb.T).numpy().argmax(axis=1) == labels).astype(float)


def clip_world_run(world: str, *, size: str = "full", probe_scenes: int, gallery_scenes: int, n_random: int = 3,
                   n_captions: int = 0, keep: float = 0.78, lam: float = 1000.0, seed: int = 0, timing_images: int = 0,
                   timing_repeats: int = 5, with_debiaslens: bool = True, text_stride: int = 1) -> dict:
    """The chapter-07 methods (male prototype and zero ablation on the gender expert heads,
    CLIP-clip, biased prompts) with the settings chapter 07 uses, each beside its matched
    control (:data:`CLIP_METHODS`), on ``world``'s testbed-clip; and DEBIASLENS on the image
    side, the text side and both (:data:`SAE_METHODS`; chapter 06's defaults,
    :data:`SAE_SETTINGS`, against matched random latents) where
    chapter 06's SAEs exist for the world (:func:`debiaslens_saes`; ``with_debiaslens``;
    ``text_stride`` > 1 probes the text neurons on every n-th of chapter 06's group sentences).

    Experts: a fresh linear probe per head of the last layer on the probe set
    (:func:`fairvlm.probes.probe_heads`), the top quarter by AP
    (:func:`fairvlm.probes.default_k`). Behaviour per scenario query: :func:`pair_shares`
    (``male``: the share of the scenario's (man, woman) image pairs ranked man first;
    ``black``: the same for race). ``n_captions`` (0: all) evenly spaced held-out
    captions score Recall@5 (one per gallery image otherwise). Returns ``{"world", "per_scenario"`` (one row per
    condition and scenario query: ``male``, ``black``, ``pairs``), ``"hits"``
    (condition -> per-caption t2i hit@5), ``"zs"`` (condition -> per-image zero-shot
    correctness), ``"methods"`` (those run), ``"debiaslens"`` (where its SAEs came from, or why it was left out),
    ``"experts"`` (1-based), ``"random_sets"``, ``"timing"`` (method -> 
    :func:`time_per_1000`, when ``timing_images`` > 0), ``"n_gallery"``, ``"n_probe"``,
    ``"description"``, ``"seconds"``}``."""
    import torch

    from fairvlm import clip_heads as ch
    from fairvlm import probes, retrieval
    from fairvlm.models import load

    t0 = time.perf_counter()
    with in_world(world) as w, torch.no_grad():
        lm = load("testbed-clip", size=size, world=w)
        model = lm.model
        data = retrieval.testbed_audit_data(lm, probe_scenes, gallery_scenes, seed=seed)
        last = len(ch.encoder_layers(model)) - 1
        n_heads = ch.attention_shape(model)[0]
        head_out = ch.head_outputs(model, data.probe_pixels, layers=[last], batch_size=64)
        contrib = ch.project_heads(model, last, head_out[last])
        res = probes.probe_heads(contrib, data.probe_meta["gender"], config=probes.ProbeConfig(seed=seed),
                                 positive="female", layer=last, groups=data.probe_sets)
        G = probes.select_experts(res.table, "top_k", k=probes.default_k(n_heads))
        rand = probes.random_heads(res.table, G, n_draws=n_random, seed=seed)
        proto = ch.head_prototypes(contrib, data.probe_meta["gender"], layer=last)
        variants = [{"variant": "none", "family": "baseline", "edits": []},
                    {"variant": "prototype replacement (experts)", "family": "head", "edits":
                     [ch.prototype_replacement(proto, "male", G)]},
                    {"variant": "zero ablation (experts)", "family": "head", "edits": [ch.zero_ablation(G, layer=last)]}]
        # each random-head control as harmless as its expert edit (chapter 07's control): the strongest
        # edit of the random heads whose drop of probe-set retrieval mAP does not exceed the expert edit's
        suite = data.scenario_suites[0]
        probe_q = retrieval.embed_texts(lm, list(suite["queries"]["prompt"]))
        probe_rel = np.stack([data.probe_meta[suite["key_col"]].astype(str).to_numpy() == str(k)
                              for k in suite["queries"]["key"]])
        cache = ch.cls_cache(model, data.probe_pixels)
        map0 = ch.retrieval_map(ch.embed_from_cache(model, cache), probe_q, probe_rel)
        matched = []
        for method, full, make in (
                ("prototype replacement (experts)", ch.prototype_replacement(proto, "male", G),
                 lambda hs: (lambda st: ch.prototype_replacement(proto, "male", hs, strength=st))),
                ("zero ablation (experts)", ch.zero_ablation(G, layer=last),
                 lambda hs: (lambda st: ch.damping(hs, 1.0 - st, layer=last)))):
            target = max(0.0, map0 - ch.retrieval_map(ch.embed_from_cache(model, cache, [full]), probe_q, probe_rel))
            for i, hs in enumerate(rand):
                m = ch.match_utility(model, cache, None, None, hs, target, queries=probe_q, relevant=probe_rel,
                                     make=make(hs))
                matched.append({"method": method, "control": i, "heads": ch.heads_1based(hs), **m})
                variants.append({"variant": f"{method}|control{i}", "family": "head", "edits": [make(hs)(m["strength"])]})
        gal = data.galleries["testbed"]
        meta, pixels = gal["meta"], gal["pixels"]
        img = {name: e["testbed"] for name, e in
               ch.embed_variants(model, {"testbed": pixels}, variants, layer=last).items()}
        queries = data.scenario_suites[0]["queries"]
        keys = list(queries["key"])
        rs, zs = data.recall_suite, data.zeroshot_suite
        q_emb = retrieval.embed_texts(lm, list(queries["prompt"]))
        ci = np.arange(len(rs["captions"]))
        if n_captions and n_captions < ci.size:
            ci = np.unique(np.linspace(0, ci.size - 1, n_captions).round().astype(int))
        relevant = rs["relevant"][ci]
        cap_emb = retrieval.embed_texts(lm, [rs["captions"][i] for i in ci])
        zs_emb = retrieval.embed_texts(lm, list(zs["prompts"]))
        labels = np.array([zs["classes"].index(c) for c in meta["scenario"]])
        # the two embedding-level baselines, fitted on the probe set / on text, as chapter 07 fits them
        fitted = retrieval.fit_baselines(lm, data.probe_pixels, data.probe_meta["gender"], list(queries["role"]),
                                         keep=keep, lam=lam, seed=seed)
        dim, m = fitted["dim"], fitted["clip_m"]
        rng = np.random.default_rng(seed)
        texts = {v: (q_emb, cap_emb, zs_emb) for v in img}
        img["CLIP-clip"] = retrieval.keep_dims(img["none"], fitted["clip_dims"])
        texts["CLIP-clip"] = tuple(retrieval.keep_dims(t, fitted["clip_dims"]) for t in (q_emb, cap_emb, zs_emb))
        img["biased prompts"] = img["none"]
        texts["biased prompts"] = tuple(retrieval.project_texts(t, fitted["projection"]) for t in (q_emb, cap_emb, zs_emb))
        roles = list(queries["role"])
        for i in range(n_random):
            dims = np.sort(rng.choice(dim, size=m, replace=False))
            img[f"CLIP-clip|control{i}"] = retrieval.keep_dims(img["none"], dims)
            texts[f"CLIP-clip|control{i}"] = tuple(retrieval.keep_dims(t, dims) for t in (q_emb, cap_emb, zs_emb))
            g = torch.Generator().manual_seed(seed * 1000 + i)
            spur = torch.nn.functional.normalize(torch.randn(4, dim, generator=g), dim=-1)
            pa = torch.nn.functional.normalize(torch.randn(len(roles), dim, generator=g), dim=-1)
            pb = torch.nn.functional.normalize(torch.randn(len(roles), dim, generator=g), dim=-1)
            proj = retrieval.biased_prompts_projection(spur, pa, pb, lam=lam)
            img[f"biased prompts|control{i}"] = img["none"]
            texts[f"biased prompts|control{i}"] = tuple(retrieval.project_texts(t, proj) for t in (q_emb, cap_emb, zs_emb))
        # DEBIASLENS-I (chapter 06's settings) where the world has its SAEs; never trained here
        methods = list(CLIP_METHODS)
        saes, sae_note = debiaslens_saes(w, size=size, seed=seed) if with_debiaslens else (None, "not asked")
        sae_edit, sae_text_lat = None, None
        if saes is not None:
            from fairvlm import debiaslens as DL
            from fairvlm import sae as S

            st = SAE_SETTINGS
            probe_cls, gal_cls = DL.last_layer_cls(lm, data.probe_pixels), DL.last_layer_cls(lm, pixels)
            codes = saes["image"].encode(probe_cls)
            g_lab, r_lab = data.probe_meta["gender"], data.probe_meta["race"]
            table = DL.specific_neurons(S.social_neurons(codes, g_lab, threshold=st["probe_threshold"]), codes, r_lab,
                                        cap=st["other_cap"])
            lat, grp = DL.pick_specific(table, DL.ATTR_GROUPS["gender"], st["neurons_per_group"], codes=codes,
                                        other_labels=r_lab, cap=st["other_cap"])
            if lat:
                def sae_edit(h, L=tuple(lat)):
                    return S.control(saes["image"], h, list(L), 0.0, st["alpha"])

                img[SAE_METHOD] = DL.embed_from_last_layer(lm, gal_cls, sae_edit)
                texts[SAE_METHOD] = (q_emb, cap_emb, zs_emb)
                draws = DL.matched_random_latents(DL.firing_rates(codes), lat, table["latent"].astype(int).tolist(),
                                                  n_draws=n_random, seed=seed)
                for i, d in enumerate(draws):
                    img[f"{SAE_METHOD}|control{i}"] = DL.embed_from_last_layer(
                        lm, gal_cls, lambda h, L=tuple(d): S.control(saes["image"], h, list(L), 0.0, st["alpha"]))
                    texts[f"{SAE_METHOD}|control{i}"] = (q_emb, cap_emb, zs_emb)
                methods.append(SAE_METHOD)
                sae_note += f"; {len(lat)} image gender neurons (latents {', '.join(map(str, lat))})"
            else:
                sae_note += f"; no image gender neuron passed the threshold {st['probe_threshold']}"
            # the text side (DEBIASLENS-T) and both (I+T), from the text tower's cached last-layer states
            if "text" in saes and DL.supports_text_shortcut(lm):
                (tp, tl), (op, ol) = ([x[::text_stride] for x in DL.group_texts(a)] for a in ("gender", "race"))
                tcodes = S.collect_text_acts(lm, tp, site=DL.TXT_SITE, tokens="max", sae=saes["text"])
                ocodes = S.collect_text_acts(lm, op, site=DL.TXT_SITE, tokens="max", sae=saes["text"])
                ttable = DL.specific_neurons(S.social_neurons(tcodes, tl, threshold=st["probe_threshold"]), ocodes, ol,
                                             cap=st["other_cap"])
                tlat, _ = DL.pick_specific(ttable, DL.ATTR_GROUPS["gender"], st["neurons_per_group"], codes=ocodes,
                                           other_labels=ol, cap=st["other_cap"])
                if tlat:
                    all_t = list(queries["prompt"]) + [rs["captions"][i] for i in ci] + list(zs["prompts"])
                    uniq = list(dict.fromkeys(all_t))
                    pos = {t: i for i, t in enumerate(uniq)}
                    ix = np.asarray([pos[t] for t in all_t])
                    nq, nc = len(queries), len(ci)
                    states = DL.last_layer_text(lm, uniq)

                    def text_embs(lat_t):
                        e = DL.embed_text_from_last_layer(
                            lm, states, lambda h, L=tuple(lat_t): S.control(saes["text"], h, list(L), 0.0, st["alpha"]))
                        e = e[ix]
                        return e[:nq], e[nq:nq + nc], e[nq + nc:]

                    t_edit, sae_text_lat = text_embs(tlat), list(tlat)
                    img["DEBIASLENS-T"], texts["DEBIASLENS-T"] = img["none"], t_edit
                    tdraws = DL.matched_random_latents(DL.firing_rates(tcodes), tlat,
                                                       ttable["latent"].astype(int).tolist(), n_draws=n_random,
                                                       seed=seed)
                    t_ctl = [text_embs(d) for d in tdraws]
                    for i, te in enumerate(t_ctl):
                        img[f"DEBIASLENS-T|control{i}"], texts[f"DEBIASLENS-T|control{i}"] = img["none"], te
                    methods.append("DEBIASLENS-T")
                    if SAE_METHOD in img:
                        img["DEBIASLENS-I+T"], texts["DEBIASLENS-I+T"] = img[SAE_METHOD], t_edit
                        for i, te in enumerate(t_ctl):
                            img[f"DEBIASLENS-I+T|control{i}"] = img[f"{SAE_METHOD}|control{i}"]
                            texts[f"DEBIASLENS-I+T|control{i}"] = te
                        methods.append("DEBIASLENS-I+T")
                    sae_note += f"; {len(tlat)} text gender neurons (latents {', '.join(map(str, tlat))})"
                else:
                    sae_note += f"; no text gender neuron passed the threshold {st['probe_threshold']}"
        rows, hits, zsc = [], {}, {}
        for name, e in img.items():
            qe, ce, ze = texts[name]
            male, black = pair_shares(qe, e, meta, keys)
            method, _, ctl = name.partition("|")
            rows.append(pd.DataFrame({"world": w, "condition": name, "method": method,
                                      "role": "control" if ctl else ("unedited" if method == "none" else "method"),
                                      "draw": int(ctl[7:]) if ctl else -1, "scenario": keys, "male": male,
                                      "black": black, "pairs": 4 * gallery_scenes ** 2}))
            hits[name], zsc[name] = _hits(ce, e, relevant), _zs_correct(e, ze, labels)
        timing = {}
        if timing_images:
            px = pixels[:timing_images]
            n = int(px.shape[0])
            plain = lambda: retrieval.embed_images(lm, px)  # noqa: E731
            for name in ("prototype replacement (experts)", "zero ablation (experts)"):
                edits = next(v["edits"] for v in variants if v["variant"] == name)
                timing[name] = time_per_1000(plain, lambda ed=edits: retrieval.embed_images(lm, px, edits=ed), n,
                                             repeats=timing_repeats, seed=seed)
            timing["CLIP-clip"] = time_per_1000(
                plain, lambda: retrieval.keep_dims(retrieval.embed_images(lm, px), fitted["clip_dims"]), n,
                repeats=timing_repeats, seed=seed)
            if sae_edit is not None:
                from fairvlm import debiaslens as DL

                timing[SAE_METHOD] = time_per_1000(
                    lambda: DL.embed_from_last_layer(lm, DL.last_layer_cls(lm, px)),
                    lambda: DL.embed_from_last_layer(lm, DL.last_layer_cls(lm, px), sae_edit), n,
                    repeats=timing_repeats, seed=seed)
            qs = list(queries["prompt"])
            if sae_text_lat:
                from fairvlm import debiaslens as DL
                from fairvlm import sae as S

                def t_edit_fn(h, L=tuple(sae_text_lat)):
                    return S.control(saes["text"], h, list(L), 0.0, SAE_SETTINGS["alpha"])

                timing["DEBIASLENS-T"] = time_per_1000(
                    lambda: DL.embed_text_from_last_layer(lm, DL.last_layer_text(lm, qs)),
                    lambda: DL.embed_text_from_last_layer(lm, DL.last_layer_text(lm, qs), t_edit_fn), len(qs),
                    repeats=timing_repeats, seed=seed)
            timing["biased prompts"] = time_per_1000(
                lambda: retrieval.embed_texts(lm, qs),
                lambda: retrieval.project_texts(retrieval.embed_texts(lm, qs), fitted["projection"]), len(qs),
                repeats=timing_repeats, seed=seed)
    return {"world": w, "methods": methods, "debiaslens": sae_note,
            "per_scenario": pd.concat(rows, ignore_index=True), "hits": hits, "zs": zsc,
            "experts": ch.heads_1based(G), "random_sets": [ch.heads_1based(h) for h in rand],
            "control_strengths": pd.DataFrame(matched), "timing": timing,
            "n_gallery": int(len(meta)), "n_probe": int(len(data.probe_meta)), "n_captions": int(ci.size),
            "description": data.description, "seconds": time.perf_counter() - t0}


def method_measures(run: Mapping, method: str, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Every measure of one method on one world's :func:`clip_world_run`: per-scenario
    behaviour before / after / control (control = the mean over the control draws), the
    removed measure on the planted-skewed and the counter-stereotypical scenarios, collateral,
    utility kept, and the per-scenario removed units of the method and of its control (for
    the verdict)."""
    cls = scenario_classes("gender")
    ps = run["per_scenario"]

    def series(cond_mask, col):
        s = ps[cond_mask].groupby("scenario")[col].mean()
        return s.reindex(cls["scenario"]).to_numpy(float)

    base = ps["condition"] == "none"
    meth = ps["condition"] == method
    ctl = (ps["method"] == method) & (ps["role"] == "control")
    if not meth.any() or not ctl.any():
        raise FairVLMError(f"no rows for method {method!r} (or its control) in the {run['world']} run; "
                           f"methods there: {', '.join(run.get('methods', CLIP_METHODS))}")
    b, a, c = (series(m, "male") for m in (base, meth, ctl))
    ob, oa = series(base, "black"), series(meth, "black")
    u, bal = cls["u"].to_numpy(), (cls["cls"] == "balanced").to_numpy()
    planted, counter = (cls["cls"] == "planted").to_numpy(), (cls["cls"] == "counter").to_numpy()
    out = {"world": run["world"], "method": method}
    for name, sub in (("planted", planted), ("counter", counter)):
        r = removed(u, b, a, balanced=bal, subset=sub, n_boot=n_boot, seed=seed)
        rc = removed(u, b, c, balanced=bal, subset=sub, n_boot=n_boot, seed=seed)
        out[name] = r
        out[f"{name}_control"] = rc
    out["units"] = removed_units(u, b, a, balanced=bal, subset=planted)
    out["control_units"] = removed_units(u, b, c, balanced=bal, subset=planted)
    out["collateral"] = collateral(b, a, balanced=bal, other_before=ob, other_after=oa, n_boot=n_boot, seed=seed)
    out["balanced_before"], out["balanced_after"] = b[bal], a[bal]
    out["recall"] = utility_kept(run["hits"]["none"], run["hits"][method], n_boot=n_boot, seed=seed)
    out["zero_shot"] = utility_kept(run["zs"]["none"], run["zs"][method], n_boot=n_boot, seed=seed)
    return out


# ---------------------------------------------------------------------------------------
# The testbed-llava methods (chapters 04 and 05) on the default world
# ---------------------------------------------------------------------------------------

#: the testbed-llava methods compared here, and the matched control of each
LLAVA_METHODS = {
    "RES-FAIR post-hoc": "the same update with random unit directions at the same layers",
    "steering (dataset direction)": "ablation of a random unit direction",
    "w/ LoRA": "the adapter's factors replaced by random ones of the same norm per tensor",
    "w/ DPO+KL": "the adapter's factors replaced by random ones of the same norm per tensor",
    "temperature scaling": "no scaling (t = 1)",
}


def llava_scenarios(eval_scenarios=None, *, n_planted: int = 6, n_balanced: int = 4) -> list[str]:
    """A small fixed evaluation set of scenarios for the testbed-llava methods: the
    ``n_planted`` planted-skewed scenarios of largest written gender skew (alternating the
    sign), every counter-stereotypical one and ``n_balanced`` balanced controls, all from
    ``eval_scenarios`` (chapter 04's evaluation half) when given."""
    cls = scenario_classes("gender")
    if eval_scenarios is not None:
        cls = cls[cls["scenario"].isin(set(eval_scenarios))]
    pl = cls[cls["cls"] == "planted"].assign(a=lambda d: d["u"].abs()).sort_values(["a", "scenario"], ascending=[False, True])
    pos, neg = list(pl.loc[pl["u"] > 0, "scenario"]), list(pl.loc[pl["u"] < 0, "scenario"])
    picked = []
    while len(picked) < n_planted and (pos or neg):
        for side in (pos, neg):
            if side and len(picked) < n_planted:
                picked.append(side.pop(0))
    bal = sorted(cls.loc[cls["cls"] == "balanced", "scenario"])[:n_balanced]
    out = picked + list(cls.loc[cls["cls"] == "counter", "scenario"]) + bal
    if not bal or not picked:
        raise FairVLMError("the evaluation half holds no planted-skewed or no balanced scenario")
    return out


def _option_ids(tok):
    from fairvlm.testbed import captions as C

    def first(word):
        forms = {word, word.lower(), word.capitalize(), " " + word, " " + word.lower(), " " + word.capitalize()}
        return sorted({tok(f, add_special_tokens=False)["input_ids"][0] for f in forms})

    (_, _, oa), (_, _, ob) = C.MCQ_GROUPS["gender"]
    return first(oa), first(ob)


def llava_prompts(keys: Sequence[str], *, scene_seed: int = 0, template: int = 0) -> list[tuple]:
    """The gender "who is more likely" prompts of :func:`fairvlm.testbed.measure.who_lean`,
    one scene per scenario, both image orders, the options in their first order:
    ``(scenario, image_order, prompt, [image, image])``."""
    from fairvlm.testbed import captions as C
    from fairvlm.testbed.train import llava_prompt
    from fairvlm.testbed.world import render

    (_, na, oa), (_, nb, ob) = C.MCQ_GROUPS["gender"]
    out = []
    for k in keys:
        pred = C.scenario_predicates(k)[-1]
        ims = [render(k, "man", "white", scene_seed), render(k, "woman", "white", scene_seed)]
        q = C.MCQ_TEMPLATES[template].format(a=na, b=nb, pred=pred)
        text = llava_prompt(f"{C.MCQ_LEADS[2]}{q} Options: {oa}, {ob}, {C.MCQ_FAIR}. Answer with one option only.",
                            system=C.MCQ_SYSTEM, n_images=2)
        for order, pair in ((0, ims), (1, ims[::-1])):
            out.append((k, order, text, pair))
    return out


def llava_option_logits(lm, prompts: Sequence[tuple], *, batch_size: int = 4) -> pd.DataFrame:
    """Next-token logits of the two gender options after each prompt of :func:`llava_prompts`
    (no generation): per prompt ``scenario``, ``order``, ``za`` / ``zb`` (the logits of the
    first tokens of the man / woman option's surface forms, as lists)."""
    import torch

    tok = lm.processor.tokenizer
    ia, ib = _option_ids(tok)
    rows = []
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i:i + batch_size]
            enc = lm.processor(images=[im for *_, pair in chunk for im in pair], text=[c[2] for c in chunk],
                               return_tensors="pt", padding=True).to(lm.model.device)
            logits = lm.model(**enc).logits.float()
            if getattr(tok, "padding_side", "right") == "left":
                last = torch.full((len(chunk),), logits.shape[1] - 1)
            else:
                last = enc["attention_mask"].sum(1) - 1
            z = logits[torch.arange(len(chunk)), last]
            for c, zz in zip(chunk, z):
                rows.append({"scenario": c[0], "order": c[1], "za": zz[ia].tolist(), "zb": zz[ib].tolist()})
    return pd.DataFrame(rows)


def llava_behaviour(logits: pd.DataFrame, *, temperature: float = 1.0) -> pd.DataFrame:
    """Per scenario, from :func:`llava_option_logits` at ``temperature``: ``lean`` (the mean
    over prompts of ``log p(man) - log p(woman)``, each the log of the summed probability of
    its surface forms, as :func:`fairvlm.testbed.measure.who_lean` reads it) and ``answer``
    (the share of prompts whose top option of the two is the man's, ties half: the argmax
    answer, which no temperature changes)."""
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ParameterError(f"temperature={temperature!r} must be a positive number")

    def lse(z):
        z = np.asarray(z, float) / temperature
        return float(z.max() + np.log(np.exp(z - z.max()).sum()))

    d = logits.assign(lean=[lse(a) - lse(b) for a, b in zip(logits["za"], logits["zb"])],
                      answer=[1.0 if max(a) > max(b) else (0.5 if max(a) == max(b) else 0.0)
                              for a, b in zip(logits["za"], logits["zb"])])
    return d.groupby("scenario", sort=False)[["lean", "answer"]].mean().reset_index()


def _random_adapter(state: Mapping, seed: int) -> dict:
    """LoRA factors of the same shapes and the same Frobenius norm per tensor, drawn at random."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state.items():
        r = torch.randn(v.shape, generator=g)
        out[k] = (r * (v.float().norm() / r.norm().clamp_min(1e-12))).to(v.dtype)
    return out


def adapter_state(sp: dict, method: str, *, profile: str = "embedded", seed: int = 0) -> tuple[dict | None, str]:
    """Chapter 04's shipped (or cached) adapter of ``method`` for split ``sp`` when its build key
    and checksums hold: ``(state, where)``; otherwise ``(None, why)``. Never trains."""
    from fairvlm import resfair_baselines as RB

    settings = RB.SETTINGS.get(profile, RB.TrainSettings())
    name, key = RB.artifact_name(sp, method, profile), RB.build_key(sp, method, settings, seed)
    state, _, where = RB.load_valid(sp, method, profile, settings, seed=seed)
    if state is not None:
        return state, f"{where} ({name}, build key {key[:12]})"
    return None, f"not compared: {where} (training it here would take minutes)"


def llava_run(*, seed: int = 0, n_planted: int = 6, n_balanced: int = 4, steer_layer: float = 0.5, n_fit: int = 8,
              temperature: float = 2.0, with_adapters: bool = True, batch_size: int = 4) -> dict:
    """The testbed-llava methods on the ``default`` world, each beside its matched control
    (:data:`LLAVA_METHODS`), read on a small fixed scenario set (:func:`llava_scenarios`, from
    chapter 04's evaluation half) by the option logits of the gender "who is more likely"
    question (:func:`llava_behaviour`):

    - RES-FAIR post-hoc (:func:`fairvlm.resfair.posthoc`, lambda 0.2 / 0.2) with chapter 04's
      directions for the testbed split (:func:`fairvlm.resfair_baselines.chapter_splits`,
      embedded); control: random unit directions at the same layers;
    - steering: ablation (:func:`fairvlm.steering.ablate`) of chapter 05's dataset direction
      for gender (bias question minus the mean of the two benign questions on ``n_fit``
      training-split images), at layer ``steer_layer`` of the depth and the last position
      (chapter 05 selects the layer on held-out inputs; that step is skipped here for time);
      control: a random unit direction;
    - LoRA and DPO+KL: chapter 04's adapters where their build key holds
      (:func:`adapter_state`, never trained here); control: random factors of matched norm;
    - temperature scaling at ``temperature``, applied to the stored option logits; control:
      ``t = 1``.

    Returns ``{"world", "methods", "notes", "per_scenario"`` (rows as
    :func:`clip_world_run`'s, with ``male`` = the lean and ``answer``), ``"scenarios"``,
    ``"seconds"``, ``"timing"}`` (seconds per condition)."""
    import dataclasses

    import torch

    from fairvlm import models, resfair, steering
    from fairvlm import resfair_baselines as RB
    from fairvlm import steering_eval as SE
    from fairvlm.testbed import SCENARIO_KEYS, world as W

    t0 = time.perf_counter()
    notes, per, timing = {}, {}, {}
    with in_world("default"):
        sp = next(s for s in RB.chapter_splits("embedded", seed=seed, eval_prompts=2, max_eval_rows=8)
                  if s["model"] == "testbed-llava")
        keys = llava_scenarios(set(sp["eval_col"].table["scenario"]), n_planted=n_planted, n_balanced=n_balanced)
        prompts = llava_prompts(keys, scene_seed=seed)
        lm = models.load("testbed-llava", size=sp["size"], world="default")

        def score(name, model=None):
            t = time.perf_counter()
            per[name] = llava_option_logits(model or lm, prompts, batch_size=batch_size)
            timing[name] = time.perf_counter() - t

        score("none")
        # RES-FAIR post-hoc and its control
        dirs = sp["dirs"]
        with resfair.posthoc(lm, dirs, lambda1=resfair.DEFAULT_LAMBDA, lambda2=resfair.DEFAULT_LAMBDA):
            score("RES-FAIR post-hoc")
        g = np.random.default_rng(seed)

        def rand_unit(d):
            v = g.standard_normal(d).astype(np.float32)
            return v / np.linalg.norm(v)

        d = int(np.asarray(dirs.bias[dirs.layers[0]]).shape[0])
        rdirs = dataclasses.replace(dirs, bias={l: rand_unit(d) for l in dirs.layers},
                                    fair={l: rand_unit(d) for l in dirs.layers}, streams={})
        with resfair.posthoc(lm, rdirs, lambda1=resfair.DEFAULT_LAMBDA, lambda2=resfair.DEFAULT_LAMBDA):
            score("RES-FAIR post-hoc|control0")
        notes["RES-FAIR post-hoc"] = (f"chapter 04's directions for the testbed split (fit on {sp['fit']}, "
                                      f"{sp['dirs_rows']} rows, layers {dirs.layers[0]}..{dirs.layers[-1]})")
        # steering: chapter 05's dataset direction for gender at a fixed layer
        rng = np.random.default_rng(seed)
        fit_keys = [k for k in SCENARIO_KEYS if k in set(sp["fit_col"].table["scenario"])]
        fit_keys = rng.choice(fit_keys, size=n_fit, replace=True).tolist()
        fit_imgs = [W.render(k, *W.parse_variant(W.VARIANTS[i % 4]), int(s))
                    for i, (k, s) in enumerate(zip(fit_keys, rng.integers(0, 1_000_000, n_fit)))]
        layer = int(round(steer_layer * (lm.n_layers - 1)))
        mb = steering.mean_activations(lm, [SE.BIAS_PROMPTS["gender"]] * n_fit, fit_imgs, layers=[layer],
                                       positions=[-1], batch_size=batch_size)
        mn = sum(steering.mean_activations(lm, [p] * n_fit, fit_imgs, layers=[layer], positions=[-1],
                                           batch_size=batch_size) for p in SE.BENIGN_PROMPTS) / 2
        a = steering.unit(mb[0, 0] - mn[0, 0])
        with steering.ablate(lm, a):
            score("steering (dataset direction)")
        with steering.ablate(lm, steering.random_direction(lm.d_model, seed=seed)):
            score("steering (dataset direction)|control0")
        notes["steering (dataset direction)"] = (f"dataset direction at layer {layer} of {lm.n_layers}, last position, "
                                                 f"fitted on {n_fit} training-split images; no layer selection")
        # chapter 04's adapters, where their build key holds
        for method in RB.METHODS:
            state, where = adapter_state(sp, method, seed=seed) if with_adapters else (None, "not asked")
            notes[method] = where
            if state is None:
                continue
            settings = RB.SETTINGS.get("embedded", RB.TrainSettings())
            score(method, RB.apply_adapter(sp, state, settings, torch.float32))
            score(f"{method}|control0", RB.apply_adapter(sp, _random_adapter(state, seed), settings, torch.float32))
    notes["temperature scaling"] = f"t = {temperature:g} on the option logits; control t = 1"
    rows = []
    names = list(per) + ["temperature scaling", "temperature scaling|control0"]
    for name in names:
        if name.startswith("temperature scaling"):
            beh = llava_behaviour(per["none"], temperature=1.0 if "|" in name else temperature)
        else:
            beh = llava_behaviour(per[name])
        method, _, ctl = name.partition("|")
        rows.append(pd.DataFrame({"world": "default", "condition": name, "method": method,
                                  "role": "control" if ctl else ("unedited" if method == "none" else "method"),
                                  "draw": int(ctl[7:]) if ctl else -1, "scenario": beh["scenario"],
                                  "male": beh["lean"].to_numpy(), "answer": beh["answer"].to_numpy(),
                                  "prompts": 2}))
    methods = [m for m in LLAVA_METHODS if m in {n.partition("|")[0] for n in names}]
    return {"world": "default", "methods": methods, "notes": notes, "per_scenario": pd.concat(rows, ignore_index=True),
            "scenarios": keys, "timing": timing, "n_prompts": len(prompts), "seconds": time.perf_counter() - t0}


def llava_measures(run: Mapping, method: str, *, column: str = "male", n_boot: int = 1000, seed: int = 0) -> dict:
    """The removed measure (planted-skewed and counter-stereotypical scenarios of the run's set)
    and the balanced collateral of one testbed-llava method of :func:`llava_run`, read on
    ``column`` (``male``: the option lean; ``answer``: the argmax answer share), with the
    per-scenario removed units of the method and of its control (for the verdict)."""
    cls = scenario_classes("gender").set_index("scenario").loc[run["scenarios"]].reset_index()
    ps = run["per_scenario"]

    def series(m):
        return ps[m].groupby("scenario")[column].mean().reindex(cls["scenario"]).to_numpy(float)

    meth, ctl = ps["condition"] == method, (ps["method"] == method) & (ps["role"] == "control")
    if not meth.any() or not ctl.any():
        raise FairVLMError(f"no rows for method {method!r} (or its control) in the testbed-llava run; "
                           f"methods there: {', '.join(run['methods'])}")
    b, a, c = series(ps["condition"] == "none"), series(meth), series(ctl)
    u, bal = cls["u"].to_numpy(), (cls["cls"] == "balanced").to_numpy()
    planted, counter = (cls["cls"] == "planted").to_numpy(), (cls["cls"] == "counter").to_numpy()
    out = {"world": run["world"], "method": method, "column": column}
    for name, sub in (("planted", planted), ("counter", counter)):
        if sub.any():
            out[name] = removed(u, b, a, balanced=bal, subset=sub, n_boot=n_boot, seed=seed)
            out[f"{name}_control"] = removed(u, b, c, balanced=bal, subset=sub, n_boot=n_boot, seed=seed)
    out["units"] = removed_units(u, b, a, balanced=bal, subset=planted)
    out["control_units"] = removed_units(u, b, c, balanced=bal, subset=planted)
    out["collateral"] = collateral(b, a, balanced=bal, n_boot=n_boot, seed=seed)
    out["balanced_before"], out["balanced_after"] = b[bal], a[bal]
    return out
