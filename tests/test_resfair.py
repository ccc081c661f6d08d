"""RES-FAIR (fairvlm.resfair), the confidence measures (fairvlm.confidence) and the trained
baselines (fairvlm.finetune)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fairvlm import confidence, hooks, lens, mcq, models, resfair
from fairvlm.errors import FairVLMError

ROOT = Path(__file__).resolve().parents[1]


def _dirs(d, layers, ub, uf, model="tiny-llava"):
    return lens.Directions({l: ub for l in layers}, {l: uf for l in layers},
                           {l: f"mlp_out.{l}" for l in layers}, {l: f"attn_out.{l}" for l in layers}, {},
                           {"model": model})


@pytest.fixture(scope="module")
def tiny():
    return models.load("tiny-llava")


# ---------------------------------------------------------------------------- the update


def test_update_formula_hand_computed():
    d = 8
    e = torch.eye(d)
    ub, uf = e[0], (e[0] + e[1]) / math.sqrt(2)
    v = torch.tensor([[2.0, 1.0, 3.0, 0, 0, 0, 0, 0]])
    # v' = v - 0.5 * 2 * e0 = (1, 1, 3, ...); v'.uf = 2/sqrt2; v_new = v' + 0.5 * (2/sqrt2) * uf = v' + 0.5*(1,1,0..)
    out = resfair.update(v, ub, uf, 0.5, 0.5)
    assert torch.allclose(out, torch.tensor([[1.5, 1.5, 3.0, 0, 0, 0, 0, 0]]))


@pytest.mark.parametrize("lam", [0.0, 0.2, 0.7, 1.0])
def test_unit_direction_removes_lambda1_of_its_component(lam):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, 16, generator=g, dtype=torch.float64)
    u = torch.randn(16, generator=g, dtype=torch.float64)
    u /= u.norm()
    out = resfair.update(x, u, u, lam, 0.0)
    assert torch.allclose(out @ u, (1 - lam) * (x @ u))
    # the part orthogonal to u is untouched
    perp = lambda y: y - (y @ u)[..., None] * u  # noqa: E731
    assert torch.allclose(perp(out), perp(x))
    # lambda2 amplifies the fair component by (1 + lambda2)
    amp = resfair.update(x, u, u, 0.0, lam)
    assert torch.allclose(amp @ u, (1 + lam) * (x @ u))


def test_zero_lambdas_are_the_identity_bitwise_in_generation(tiny):
    rng = np.random.default_rng(0)
    u = rng.normal(size=tiny.d_model).astype(np.float32)
    u /= np.linalg.norm(u)
    dirs = _dirs(tiny.d_model, [0, 1], u, u)
    x = torch.randn(2, 3, tiny.d_model)
    fn = resfair.edits(dirs, lambda1=0.0, lambda2=0.0)["resid_post.0"]
    assert fn(x) is x or torch.equal(fn(x), x)
    enc = tiny.inputs(["Between men and women, who is more likely to be a pilot?"])
    kw = dict(max_new_tokens=5, do_sample=False, return_dict_in_generate=True, output_logits=True,
              pad_token_id=tiny.tokenizer.pad_token_id)
    with torch.no_grad():
        base = tiny.model.generate(**enc, **kw)
        with resfair.posthoc(tiny, dirs, lambda1=0.0, lambda2=0.0):
            same = tiny.model.generate(**enc, **kw)
        with resfair.posthoc(tiny, dirs, lambda1=0.9, lambda2=0.5):
            moved = tiny.model.generate(**enc, **kw)
    assert torch.equal(base.sequences, same.sequences)
    assert all(torch.equal(a, b) for a, b in zip(base.logits, same.logits))
    # the edit acts at every generation step, not only the prefill
    assert not torch.allclose(base.logits[-1], moved.logits[-1], atol=1e-4)
    # and the hooks are gone afterwards
    with torch.no_grad():
        again = tiny.model.generate(**enc, **kw)
    assert all(torch.equal(a, b) for a, b in zip(base.logits, again.logits))


def test_edit_reaches_the_stream_it_names(tiny):
    """What resid_post.l carries inside posthoc() is the update of what it carries without."""
    rng = np.random.default_rng(1)
    ub = rng.normal(size=tiny.d_model).astype(np.float32)
    ub /= np.linalg.norm(ub)
    uf = rng.normal(size=tiny.d_model).astype(np.float32)
    uf /= np.linalg.norm(uf)
    L = tiny.n_layers - 1
    dirs = _dirs(tiny.d_model, [L], ub, uf)
    enc = tiny.inputs(["Who is more likely to be a chef: men or women?"])
    with torch.no_grad(), hooks.capture(tiny, [f"resid_post.{L}"]) as before:
        tiny.model(**enc)
    with torch.no_grad(), resfair.posthoc(tiny, dirs, lambda1=0.3, lambda2=0.1), \
            hooks.capture(tiny, [f"resid_post.{L}"]) as after:
        tiny.model(**enc)
    want = resfair.update(before[f"resid_post.{L}"], torch.from_numpy(ub), torch.from_numpy(uf), 0.3, 0.1)
    assert torch.allclose(after[f"resid_post.{L}"], want, atol=1e-5)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf"), "0.2", None, True])
def test_bad_lambdas(bad, tiny):
    u = np.eye(tiny.d_model, dtype=np.float32)[0]
    with pytest.raises(FairVLMError, match="lambda1"):
        resfair.edits(_dirs(tiny.d_model, [0], u, u), lambda1=bad, lambda2=0.2)
    with pytest.raises(FairVLMError, match="lambda2"):
        resfair.check_lambdas(0.2, bad)


def test_directions_of_another_width_or_model(tiny):
    u = np.eye(tiny.d_model + 8, dtype=np.float32)[0]
    with pytest.raises(FairVLMError, match="width"):
        with resfair.posthoc(tiny, _dirs(tiny.d_model + 8, [0], u, u)):
            pass
    v = np.eye(tiny.d_model, dtype=np.float32)[0]
    with pytest.raises(FairVLMError, match="fitted on"):
        with resfair.posthoc(tiny, _dirs(tiny.d_model, [0], v, v, model="tiny-qwen2-vl")):
            pass
    with pytest.raises(FairVLMError, match="layer"):
        with resfair.posthoc(tiny, _dirs(tiny.d_model, [tiny.n_layers + 3], v, v)):
            pass
    with pytest.raises(FairVLMError, match="unit vector"):
        resfair.edits(_dirs(tiny.d_model, [0], 2 * v, v))


def test_unknown_dataset_name():
    with pytest.raises(FairVLMError, match="unknown dataset 'coco'"):
        resfair.check_dataset("coco")
    assert resfair.check_dataset("testbed-even") == "testbed-even"


def _fake_collection(dataset, scenarios, model="m"):
    rows = []
    for s in scenarios:
        for a in mcq.ATTRIBUTES:
            for p in range(2):
                rows.append({"row_id": f"{dataset}:{s}:{a}:text|p{p}", "item_id": f"{dataset}:{s}:{a}:text",
                             "model": model, "dataset": dataset, "scenario": s, "label": s, "attribute": a,
                             "variant": "text", "prompt_id": p})
    t = pd.DataFrame(rows)
    return lens.Collection(t, None, None, model, 2)


def test_directions_are_never_evaluated_on_their_fitting_items():
    runs = {("m", "pairs"): _fake_collection("pairs", ["pilot", "chef", "nurse"]),
            ("m", "scf"): _fake_collection("scf", ["plumber", "tailor", "judge"]),
            ("t", "testbed"): _fake_collection("testbed", [f"s{i}" for i in range(6)], model="t")}
    splits = resfair.fit_eval_splits(runs)
    assert {(p["model"], p["fit"], p["eval"]) for p in splits} == {
        ("m", "pairs", "scf"), ("m", "scf", "pairs"), ("t", "testbed-even", "testbed-odd"),
        ("t", "testbed-odd", "testbed-even")}
    for p in splits:
        fit, ev = p["fit_col"].table, p["eval_col"].table
        assert not set(fit["scenario"]) & set(ev["scenario"])
        assert not set(fit["item_id"]) & set(ev["item_id"])
    # a pair that shares a scenario is refused
    with pytest.raises(FairVLMError, match="share"):
        resfair.check_disjoint(runs[("m", "pairs")].table, _fake_collection("scf", ["chef"]).table)
    with pytest.raises(FairVLMError, match="unknown dataset"):
        resfair.fit_eval_splits({("m", "coco"): _fake_collection("coco", ["a", "b"])})


def test_answer_perplexity_matches_a_direct_forward(tiny):
    rows = mcq.make_rows(mcq.build_items(mcq.pairs_labels().head(2), "pairs", variants=("text",)), 1)[:2]
    answers = ["Both", "men and women"]
    ppl = resfair.answer_perplexity(tiny, rows, answers)
    tok = tiny.tokenizer
    for r, a, got in zip(rows, answers, ppl):
        enc = tiny.inputs([r.text], system=r.system)
        ids = tok(a, add_special_tokens=False)["input_ids"]
        full = torch.cat([enc["input_ids"], torch.tensor([ids])], dim=1)
        with torch.no_grad():
            lp = torch.log_softmax(tiny.model(input_ids=full).logits[0].float(), -1)
        n = enc["input_ids"].shape[1]
        nll = -np.mean([lp[n - 1 + i, t].item() for i, t in enumerate(ids)])
        assert got == pytest.approx(math.exp(nll), rel=1e-4)
    assert np.isnan(resfair.answer_perplexity(tiny, rows[:1], [""])[0])


# ---------------------------------------------------------------------------- confidence


def test_confidence_measures_hand_computed():
    lp = np.log([[0.2, 0.2, 0.6]])
    assert confidence.fair_target_kl(lp)[0] == pytest.approx(-math.log(0.6))
    # options are renormalised: only ratios matter
    assert confidence.fair_target_kl(np.log([[0.1, 0.1, 0.3]]))[0] == pytest.approx(-math.log(0.6))
    # eps > 0: target (0.05, 0.05, 0.9) against (0.2, 0.2, 0.6)
    want = 2 * 0.05 * math.log(0.05 / 0.2) + 0.9 * math.log(0.9 / 0.6)
    assert confidence.fair_target_kl(lp, eps=0.1)[0] == pytest.approx(want)
    # book skew: p = (0.3, 0.1) -> q = (0.75, 0.25)
    assert confidence.skew(np.log([[0.3, 0.1, 0.6]]))[0] == pytest.approx(0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    # temperature 2 on the skew: log-odds ln 3 / 2 -> q = sqrt3/(1+sqrt3)
    q = math.sqrt(3) / (1 + math.sqrt(3))
    want = q * math.log(2 * q) + (1 - q) * math.log(2 * (1 - q))
    assert confidence.skew(np.log([[0.3, 0.1, 0.6]]), t=2.0)[0] == pytest.approx(want)
    # counterfactual: P = (.5, .25, .25), Q = (.25, .5, .25) -> 0.5 ln 2 - 0.25 ln 2 = 0.25 ln 2 each way
    P, Q = np.log([[0.5, 0.25, 0.25]]), np.log([[0.25, 0.5, 0.25]])
    assert confidence.counterfactual_kl(P, Q)[0] == pytest.approx(0.25 * math.log(2))
    assert confidence.counterfactual_kl(P, P)[0] == pytest.approx(0.0, abs=1e-12)
    # temperature of the three-way choice
    assert np.allclose(confidence.three_way(np.log([[0.5, 0.25, 0.25]]), t=0.5), [[4 / 6, 1 / 6, 1 / 6]])


def test_skew_sweep_always_prefers_the_largest_temperature_and_fair_target_can_be_interior():
    # 7 rows lean to the fair option (0.1, 0.1, 0.8), 3 to a group (0.6, 0.2, 0.2)
    lp = np.log(np.array([[0.1, 0.1, 0.8]] * 7 + [[0.6, 0.2, 0.2]] * 3))
    t = pd.DataFrame({"lp_a": lp[:, 0], "lp_b": lp[:, 1], "lp_fair": lp[:, 2]})
    sw = confidence.temperature_sweep(t, measures=("skew", "fair_target"))
    s = sw[sw.measure == "skew"].sort_values("t")["value"].to_numpy()
    assert np.all(np.diff(s) < 0)
    assert confidence.best_temperature(sw, "skew")[0] == 2.0
    tf, vf = confidence.best_temperature(sw, "fair_target")
    assert vf == pytest.approx(sw[sw.measure == "fair_target"]["value"].min())
    # the NLL of the fair option: 0.7 ln(1 + 2 * 8^(-1/t)) + 0.3 ln(1 + 3^(1/t) + 1), smallest at t = 0.8
    assert tf == 0.8
    grid = np.linspace(0.1, 2.0, 1901)
    f = [0.7 * math.log(1 + 2 * 8 ** (-1 / t)) + 0.3 * math.log(3 ** (1 / t) + 2) for t in grid]
    assert abs(grid[int(np.argmin(f))] - 0.8) < 0.05     # the continuous minimum lies within the grid step
    assert vf == pytest.approx(0.7 * math.log(1 + 2 * 8 ** -1.25) + 0.3 * math.log(3 ** 1.25 + 2))


def test_best_temperature_picks_the_minimum():
    sw = pd.DataFrame({"t": [0.5, 1.0, 1.5, 2.0], "measure": "fair_target", "value": [0.4, 0.2, 0.3, 0.2], "n": 1})
    assert confidence.best_temperature(sw) == (1.0, 0.2)   # ties: the smaller t
    with pytest.raises(FairVLMError, match="unknown confidence measure"):
        confidence.best_temperature(sw, "ece")
    for bad in (0, -1.0, float("nan"), "1"):
        with pytest.raises(FairVLMError, match="temperature"):
            confidence.three_way(np.zeros((1, 3)), t=bad)
    with pytest.raises(FairVLMError, match="shape"):
        confidence.fair_target_kl(np.zeros((2, 2)))


def test_counterfactual_pairs_match_rows():
    base = {"model": "m", "dataset": "testbed", "scenario": "airplane", "attribute": "gender", "prompt_id": 0}
    t = pd.DataFrame([{**base, "variant": "image_a", "lp_a": math.log(0.5), "lp_b": math.log(0.25), "lp_fair": math.log(0.25)},
                      {**base, "variant": "image_b", "lp_a": math.log(0.25), "lp_b": math.log(0.5), "lp_fair": math.log(0.25)},
                      {**base, "variant": "text", "lp_a": 0.0, "lp_b": -1.0, "lp_fair": -2.0}])
    keys, la, lb = confidence.counterfactual_pairs(t)
    assert len(keys) == 1
    assert confidence.row_measures(t)["counterfactual"][0] == pytest.approx(0.25 * math.log(2))


# ---------------------------------------------------------------------------- baselines

pytest.importorskip("trl")


def _trainer_rows(n=4):
    rows = mcq.make_rows(mcq.build_items(mcq.pairs_labels().head(1), "testbed"), 1)
    return rows[:n], mcq.testbed_image_source(size=32)


def _batch(trainer):
    batch = next(iter(trainer.get_train_dataloader()))
    return trainer._prepare_inputs(batch)


def test_dpo_kl_at_zero_equals_dpo_and_reference_kl_is_zero_at_step_zero(tmp_path):
    from trl import DPOTrainer

    from fairvlm import finetune

    rows, src = _trainer_rows()
    losses = {}
    for name, cls, extra in (("dpo", DPOTrainer, {}), ("kl0", finetune.DPOKLTrainer, {"kl_coef": 0.0}),
                             ("ref", finetune.DPOKLTrainer, {"kl_coef": 0.5, "kl_measure": "reference"}),
                             ("fair", finetune.DPOKLTrainer, {"kl_coef": 0.5, "kl_measure": "fair_target"})):
        lm = models.load("tiny-llava")
        cfg_cls = finetune.DPOKLConfig if cls is finetune.DPOKLTrainer else __import__("trl").DPOConfig
        args = cfg_cls(output_dir=str(tmp_path / name), per_device_train_batch_size=4, report_to="none",
                       remove_unused_columns=False, use_cpu=True, max_length=None, seed=0, **extra)
        torch.manual_seed(0)
        tr = cls(model=lm.model, args=args, processing_class=lm.processor, peft_config=finetune.lora_config(),
                 train_dataset=finetune._dataset(finetune.preference_records(lm, rows, src, seed=0)))
        tr.model.train()
        inputs = _batch(tr)
        with torch.no_grad():
            losses[name] = tr.compute_loss(tr.model, inputs)
        if name == "fair":
            # the added KL is -ln p_fair of the three-option distribution at the answer position,
            # the same number fairvlm.confidence gives from the model's own logits
            lp3, attrs = tr._answer_logits(tr.model, inputs)
            B = len(rows)
            want = confidence.fair_target_kl(lp3[:B].detach().numpy())
            assert tr._metrics["train"]["loss/kl"][-1] == pytest.approx(
                float(finetune.confidence_kl(lp3, "fair_target").mean()), rel=1e-5)
            assert np.allclose(finetune.confidence_kl(lp3[:B], "fair_target").detach().numpy(), want, atol=1e-5)
            assert attrs == [r.item.attribute for r in rows]
            kl_fair = tr._metrics["train"]["loss/kl"][-1]
        if name == "ref":
            assert tr._metrics["train"]["loss/kl"][-1] == pytest.approx(0.0, abs=1e-6)
    assert torch.equal(losses["kl0"], losses["dpo"])
    assert losses["ref"].item() == pytest.approx(losses["dpo"].item(), abs=1e-6)
    assert losses["fair"].item() == pytest.approx(losses["dpo"].item() + 0.5 * kl_fair, rel=1e-5)


def _lora_dpo_trainer(tmp_path, kl_coef):
    """A DPO + KL trainer with a LoRA adapter on tiny-llava, one prepared batch and the adapter's
    parameters; LoRA B is set nonzero so that the A matrices get gradient too."""
    from fairvlm import finetune

    rows, src = _trainer_rows()
    lm = models.load("tiny-llava")
    args = finetune.DPOKLConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to="none",
                                remove_unused_columns=False, use_cpu=True, max_length=None, seed=0, kl_coef=kl_coef)
    torch.manual_seed(0)
    tr = finetune.DPOKLTrainer(model=lm.model, args=args, processing_class=lm.processor,
                               peft_config=finetune.lora_config(),
                               train_dataset=finetune._dataset(finetune.preference_records(lm, rows, src, seed=0)))
    tr.model.train()
    inputs = _batch(tr)
    params = [p for p in tr.model.parameters() if p.requires_grad]
    with torch.no_grad():
        for n, p in tr.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return tr, inputs, params


def test_dpo_kl_gradient_read_off_the_dpo_pass_equals_a_separate_pass(tmp_path):
    # the KL term reuses the DPO step's policy pass; its gradient on the adapter must be the
    # one a separate forward pass through the model gives
    from fairvlm import finetune

    tr, inputs, params = _lora_dpo_trainer(tmp_path, kl_coef=1.0)

    def grads(loss):
        tr.model.zero_grad()
        loss.backward()
        return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in params]

    g_total = grads(tr.compute_loss(tr.model, inputs))
    tr.args.kl_coef = 0.0
    g_dpo = grads(tr.compute_loss(tr.model, inputs))
    lp3, _ = tr._answer_logits(tr.model, inputs)
    g_sep = grads(finetune.confidence_kl(lp3, "fair_target").mean())
    g_kl = [a - b for a, b in zip(g_total, g_dpo)]
    assert max(float(g.abs().max()) for g in g_sep) > 1e-6            # the KL moves the adapter
    for a, b in zip(g_kl, g_sep):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-3)


def test_cpu_training_kernels_score_only_completions_and_keep_loss_and_gradient(tmp_path, monkeypatch):
    """Inside ``cpu_training_kernels`` trl's fused LM head scores only the labelled positions on
    a CPU (fewer rows through the head) and the DPO + KL loss and its gradient are unchanged;
    trl's switch is restored afterwards."""
    import trl.trainer.utils as trl_utils

    from fairvlm import finetune

    scored = []
    real = trl_utils._ChunkedLogProbFunction

    class Counting:
        @staticmethod
        def apply(hidden, *args):
            scored.append(hidden.shape[0])
            return real.apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Counting)
    tr, inputs, params = _lora_dpo_trainer(tmp_path, kl_coef=0.5)
    original = trl_utils._use_triton
    out = {}
    for on in (False, True):
        scored.clear()
        tr.model.zero_grad()
        with finetune.cpu_training_kernels(on):
            loss = tr.compute_loss(tr.model, inputs)
        loss.backward()
        out[on] = (loss.detach(), [p.grad.detach().clone() for p in params], list(scored))
    assert trl_utils._use_triton is original
    labelled = int(inputs["completion_mask"][:, 1:].sum())
    assert out[False][2] == [inputs["input_ids"].numel() - inputs["input_ids"].shape[0]] * 2   # every position
    assert out[True][2] == [labelled] * 2 and labelled < out[False][2][0]                   # policy and reference
    assert torch.allclose(out[True][0], out[False][0], rtol=1e-6, atol=1e-7)
    assert max(float(g.abs().max()) for g in out[False][1]) > 1e-6
    for a, b in zip(out[True][1], out[False][1]):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["lora", "dpo_kl"])
def test_trained_model_comes_back_as_a_loaded_one(method, tmp_path):
    """After training, the merged model has the loaded model's ``use_cache`` flags and its
    weights require gradients as transformers loads them (peft leaves them frozen; a frozen
    bfloat16 LM head is a very slow path in ``generate`` on CPU), and it still answers."""
    from fairvlm import finetune

    rows, src = _trainer_rows()
    lm = models.load("tiny-llava")
    before = [flag for _, flag in finetune._cache_flags(lm.model)]
    assert all(p.requires_grad for p in lm.model.parameters())
    fn = finetune.train_lora if method == "lora" else finetune.train_dpo_kl
    out, hist = fn(lm, rows, src, output_dir=tmp_path, epochs=1, batch_size=4, max_steps=1, seed=0)
    assert [h for h in hist if "loss" in h]
    assert [flag for _, flag in finetune._cache_flags(out.model)] == before
    assert all(p.requires_grad for p in out.model.parameters())
    out.model.to(torch.bfloat16)
    t = mcq.evaluate(out, rows, images=src, max_new_tokens=3, progress=False)
    assert len(t) == len(rows) and t["answer"].map(type).eq(str).all()


def test_dpo_kl_config_rejects_bad_knobs(tmp_path):
    from fairvlm import finetune

    with pytest.raises(FairVLMError, match="kl_coef"):
        finetune.DPOKLConfig(output_dir=str(tmp_path), kl_coef=-1.0, report_to="none", use_cpu=True)
    with pytest.raises(FairVLMError, match="kl_measure"):
        finetune.DPOKLConfig(output_dir=str(tmp_path), kl_measure="ece", report_to="none", use_cpu=True)


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl"])
@pytest.mark.parametrize("method", ["dpo_kl", "lora"])
def test_trainer_entry_point_end_to_end(name, method, tmp_path):
    """``python -m fairvlm.finetune`` (what accelerate launches) trains and saves on CPU."""
    from fairvlm import finetune

    out = tmp_path / "run"
    rc = finetune.main(["--model", name, "--dataset", "testbed", "--method", method, "--n_labels", "1",
                        "--n_prompts", "1", "--output_dir", str(out), "--max_steps", "1",
                        "--per_device_train_batch_size", "2", "--use_cpu", "true", "--report_to", "none"])
    assert rc == 0
    assert list(out.glob("*.safetensors")), "no safetensors written"
    assert not list(out.glob("*.bin"))


def test_trainer_entry_point_bad_input(tmp_path, capsys):
    from fairvlm import finetune

    assert finetune.main(["--model", "tiny-llava", "--dataset", "coco", "--output_dir", str(tmp_path),
                          "--use_cpu", "true", "--report_to", "none"]) == 2
    assert "unknown dataset" in capsys.readouterr().err


def _finetune_cli(*args: str, cwd=None):
    """``python -m fairvlm.finetune`` as the README runs it, on a machine without a GPU."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fairvlm.finetune", *args], capture_output=True, text=True,
                          env=env, timeout=600, cwd=cwd)


def test_finetune_command_runs_on_cpu_without_extra_flags(tmp_path):
    """No ``--use_cpu``, no ``--bf16 false``: trl's bf16 default must not stop it on a CPU."""
    from fairvlm import checksums

    out = tmp_path / "run"
    res = _finetune_cli("--model", "tiny-llava", "--dataset", "testbed", "--method", "lora", "--n_labels", "1",
                        "--n_prompts", "1", "--output_dir", str(out), "--max_steps", "1",
                        "--per_device_train_batch_size", "2", "--report_to", "none")
    assert res.returncode == 0, res.stderr[-3000:]
    assert list(out.glob("*.safetensors")) and checksums.problems(out) == []   # saved with its manifest
    # a second run into the same folder replaces the model it saved there ...
    res = _finetune_cli("--model", "tiny-llava", "--dataset", "testbed", "--method", "lora", "--n_labels", "1",
                        "--n_prompts", "1", "--output_dir", str(out), "--max_steps", "1",
                        "--per_device_train_batch_size", "2", "--report_to", "none")
    assert res.returncode == 0, res.stderr[-3000:]
    # ... but never a folder holding anything else
    (out / "notes.txt").write_text("mine")
    res = _finetune_cli("--model", "tiny-llava", "--dataset", "testbed", "--output_dir", str(out), "--max_steps", "1")
    assert res.returncode == 2 and "did not save" in res.stderr
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("args, needle", [
    (["--learning_rate", "nan"], "learning_rate"),
    (["--learning_rate", "inf"], "learning_rate"),
    (["--learning_rate", "0"], "learning_rate"),
    (["--learning_rate=-1e-4"], "learning_rate"),
    (["--learning_rate", "100"], "learning_rate"),
    (["--fp16", "true"], "fp16"),
    (["--method", "sft"], "method"),
    (["--n_prompts", "0"], "n_prompts"),
    (["--num_train_epochs", "nan"], "num_train_epochs"),
    (["--max_steps", "0"], "max_steps"),
    (["--kl_coef", "-1"], "kl_coef"),
])
def test_finetune_command_bad_input_exits_2_with_one_line(tmp_path, args, needle, capsys, monkeypatch):
    """In process (the command's ``main``), on a machine that looks GPU-less to torch."""
    from fairvlm import finetune

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc = finetune.main(["--model", "tiny-llava", "--dataset", "testbed", "--output_dir", str(tmp_path / "o"),
                        "--report_to", "none", *args])
    err = capsys.readouterr().err
    assert rc == 2, err[-3000:]
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err[-3000:]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_finetune_output_dir_that_is_a_file_exits_2(tmp_path, capsys, monkeypatch):
    from fairvlm import finetune

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    f = tmp_path / "model"
    f.write_text("x")
    assert finetune.main(["--model", "tiny-llava", "--dataset", "testbed", "--output_dir", str(f)]) == 2
    assert "is a file" in capsys.readouterr().err and f.read_text() == "x"


def test_scale_out_configs_parse():
    cfg = json.loads((ROOT / "configs" / "ds_zero3.json").read_text())
    z = cfg["zero_optimization"]
    assert z["stage"] == 3 and z["offload_param"]["device"] == "cpu"
    assert cfg["train_micro_batch_size_per_gpu"] == 16 and cfg["fp16"]["enabled"] is True
    assert cfg["optimizer"]["type"] == "AdamW" and cfg["optimizer"]["params"]["lr"] == 5e-5
    from accelerate.commands.config.config_args import load_config_from_file

    acc = load_config_from_file(str(ROOT / "configs" / "accelerate_ds_zero3.yaml"))
    assert str(acc.distributed_type).endswith("DEEPSPEED")
    assert acc.deepspeed_config["deepspeed_config_file"] == "configs/ds_zero3.json"
    deepspeed = pytest.importorskip("deepspeed")
    from transformers.integrations import HfDeepSpeedConfig

    ds = HfDeepSpeedConfig(str(ROOT / "configs" / "ds_zero3.json"))
    assert ds.is_zero3() and ds.is_offload()
    assert deepspeed.__version__


# ---------------------------------------------------------------------------- utility checks


def test_social_difference_questions_are_balanced_and_sourced(tmp_path):
    from fairvlm import utility

    qs = utility.load_social_differences()
    assert (qs.attribute == "gender").sum() == 20 and (qs.attribute == "race").sum() == 30
    # half of each attribute's answers name each group: always naming one group scores half
    for attribute, n in (("gender", 10), ("race", 15)):
        counts = qs[qs.attribute == attribute]["answer"].value_counts()
        assert counts.tolist() == [n, n]
    assert qs["source"].str.len().min() > 20
    rows = utility.social_rows(qs)
    assert len(rows) == 50 and all(r.item.variant == "text" for r in rows)
    # a model that says "both" to everything gets none right; one that names the answer gets all
    table = pd.DataFrame({"scenario": qs["id"], "parsed": "fair"})
    assert not utility.score_social(table, qs)["correct"].any()
    key = {g.value: g.key for a in mcq.ATTRIBUTES for g in mcq.GROUPS[a]}
    table = pd.DataFrame({"scenario": qs["id"], "parsed": [key[a] for a in qs["answer"]]})
    assert utility.score_social(table, qs)["correct"].all()
    bad = tmp_path / "bad.yaml"
    bad.write_text("questions:\n  - {id: x, attribute: gender, question: q, answer: black, source: s}\n")
    with pytest.raises(FairVLMError, match="not a gender group"):
        utility.load_social_differences(bad)
    with pytest.raises(FairVLMError, match="no social-difference"):
        utility.load_social_differences(tmp_path / "missing.yaml")


def test_general_questions_scoring():
    from fairvlm import utility

    qs = utility.GENERAL_QUESTIONS[:3]
    prompts, options = utility.general_rows(qs)
    assert all(q[1] in o for q, o in zip(qs, options))
    assert [o.index(q[1]) for q, o in zip(qs, options)] == [0, 1, 2]      # the correct option rotates
    got = utility.score_general(["Paris.", "I think Beijing, not Tokyo", "no idea"], qs)
    assert got.tolist() == [1.0, 0.0, 0.0]
    with pytest.raises(FairVLMError, match="answers"):
        utility.score_general(["Paris"], qs)


def test_micro_batches_give_the_full_batch_update(tmp_path):
    """``micro_batch`` accumulates gradients: one step on a batch of 4 in micro-batches of 2
    moves the weights as one step on the whole batch does (a wrong split or scale breaks it)."""
    from fairvlm import finetune

    rows, src = _trainer_rows()
    base = {k: v.clone() for k, v in models.load("tiny-llava").model.state_dict().items()}
    trained = {}
    for micro in (None, 2):
        lm = models.load("tiny-llava")
        torch.manual_seed(0)
        # plain SGD: Adam's first step is lr * sign(g) and would hide a gradient of the wrong scale
        kw = finetune._common_args(tmp_path / str(micro), 1, 4, 1e-1, 0, 1, micro)
        kw.update(optim="sgd", lr_scheduler_type="constant")
        args = finetune.DPOKLConfig(beta=0.1, kl_coef=0.5, max_length=None, **kw)
        assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == ((4, 1) if micro is None else (2, 2))
        out, hist = finetune.train_dpo_kl(lm, rows, src, output_dir=tmp_path / str(micro), args=args)
        assert [h for h in hist if "loss" in h], "no training step was logged"
        trained[micro] = out.model.state_dict()
    moved = [k for k in base if not torch.equal(base[k], trained[None][k])]
    assert moved, "the full-batch step did not change any weight"
    for k in moved:
        assert torch.allclose(trained[None][k], trained[2][k], atol=1e-5, rtol=1e-4), k


@pytest.mark.parametrize("batch, micro", [(16, 5), (16, 0), (16, 17)])
def test_micro_batch_must_divide_the_batch(batch, micro):
    from fairvlm import finetune

    with pytest.raises(FairVLMError, match="micro_batch"):
        finetune._micro(batch, micro)


def test_bf16_mixed_precision_keeps_float32_weights_and_the_update(tmp_path):
    """``mixed_precision="bf16"`` runs forward and backward under autocast only: the weights
    stay float32 and one SGD step moves them as the float32 step does (to bfloat16 rounding)."""
    from fairvlm import finetune

    rows, src = _trainer_rows()
    base = {k: v.clone() for k, v in models.load("tiny-llava").model.state_dict().items()}
    deltas = {}
    for mp in (None, "bf16"):
        lm = models.load("tiny-llava")
        torch.manual_seed(0)
        kw = finetune._common_args(tmp_path / str(mp), 1, 4, 1e-1, 0, 1, None, mp)
        assert kw["bf16"] is (mp == "bf16") and kw["fp16"] is False
        kw.update(optim="sgd", lr_scheduler_type="constant")
        args = finetune.DPOKLConfig(beta=0.1, kl_coef=0.5, max_length=None, **kw)
        out, _ = finetune.train_dpo_kl(lm, rows, src, output_dir=tmp_path / str(mp), args=args)
        sd = out.model.state_dict()
        assert all(v.dtype == base[k].dtype for k, v in sd.items()), "mixed precision changed a weight's dtype"
        deltas[mp] = torch.cat([(sd[k] - base[k]).flatten().float() for k in base])
    assert deltas[None].norm() > 0
    cos = torch.nn.functional.cosine_similarity(deltas[None], deltas["bf16"], dim=0)
    assert 0.95 < cos < 1 - 1e-6, float(cos)   # close to the float32 step, and not the same run
    with pytest.raises(FairVLMError, match="mixed_precision"):
        finetune._common_args(tmp_path, 1, 4, 1e-1, 0, 1, None, "fp8")


def test_validation_rows_feed_the_stopping_rule_and_the_adapter_comes_back(tmp_path):
    """With validation rows the trainer scores them before the first step and after each
    epoch (the callback sees every evaluation), and the LoRA factors are kept for shipping."""
    from fairvlm import finetune
    from fairvlm.resfair_baselines import TrainSettings, _callback

    rows, src = _trainer_rows()
    state = {"losses": [], "margins": [], "converged": False}
    lm = models.load("tiny-llava")
    out, hist = finetune.train_lora(lm, rows, src, output_dir=tmp_path, epochs=2, batch_size=4, seed=0,
                                    eval_rows=rows[:2], callbacks=[_callback(TrainSettings(), False, state)])
    assert len(state["losses"]) == 3 and [h for h in hist if "eval_loss" in h]
    assert out.info["adapter_state"] and all("lora" in k for k in out.info["adapter_state"])
