"""Chapter 06's Matryoshka BatchTopK SAE against SAELens's on the same activations (a script, not a test).

Both SAEs train on the activations chapter 06's image SAE trains on (the class token of
testbed-clip's last vision layer, held-out testbed scenes; the same 90/10 split by image)
with the same recipe: width 8 x d, k = 20 on average over the batch, the DEBIASLENS
Matryoshka prefixes (1/16, 1/8, 1/4, 9/16 of the latents), Adam at the recipe's learning rate
with a linear decay over the last fifth, the same batch size, the same number of training
rows (the steps chapter 06's SAE ran before its plateau rule stopped it) and an AuxK term
of weight 0.03 on latents that have not fired for four passes over the training rows.
Inputs are scaled to a mean squared norm of d on both sides (SAELens:
``normalize_activations="expected_average_only_in"``).

Then both are read the same way at inference (their thresholded, JumpReLU-style encoders;
SAELens's through its own ``save_inference_model`` / ``SAE.load_from_disk``) on the
held-out rows: explained variance of the whole SAE and of each Matryoshka prefix, L0, and
the fraction of latents that fire on no training or held-out row. Wall time per 1,000
steps is printed as a ratio (SAELens / fairvlm) from the same machine in one run.

SAELens needs TransformerLens and does not belong in the book's environment, so it runs
in a separate one that the script calls:

    make bench-saelens                              # creates .venv-saelens, then runs this script
    python benchmarks/bench_sae_vs_saelens.py       # when .venv-saelens exists (or --saelens-python PATH)

The two are independent implementations of one recipe; agreement within a few points of
explained variance and L0 says chapter 06's SAE is not an outlier. A large gap in either
direction is a finding to chase, not a win.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAELENS_VERSION = "6.54.12"


def _metrics(x_ev, x_all, encode, decode_prefix, widths) -> dict:
    """The same read of either SAE: held-out EV (whole and per prefix), L0, dead fraction."""
    import torch

    def ev(x, x_hat):
        return float(1 - (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12))

    with torch.no_grad():
        z = encode(x_ev)
        out = {f"ev_prefix_{m}": ev(x_ev, decode_prefix(z, m)) for m in widths}
        out["ev_heldout"] = out[f"ev_prefix_{widths[-1]}"]
        out["l0_heldout"] = float((z > 0).float().sum(-1).mean())
        fired = torch.zeros(z.shape[-1], dtype=torch.bool)
        for s in range(0, len(x_all), 1024):
            fired |= (encode(x_all[s:s + 1024]) > 0).any(0)
        out["dead_fraction"] = float((~fired).float().mean())
    return out


# ------------------------------------------------------------------------------ SAELens side
def saelens_worker(path: str) -> None:
    """Runs inside the SAELens environment: train on the saved activations, print JSON."""
    import torch
    from safetensors.torch import load_file
    from sae_lens import SAE
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (MatryoshkaBatchTopKTrainingSAE,
                                                         MatryoshkaBatchTopKTrainingSAEConfig)
    from sae_lens.training.sae_trainer import SAETrainer

    t = load_file(path)
    x_tr, x_ev = t["train"].float(), t["heldout"].float()
    spec = json.loads(Path(path).with_suffix(".json").read_text())
    torch.manual_seed(spec["seed"])
    torch.set_num_threads(1)
    d = x_tr.shape[1]
    cfg = MatryoshkaBatchTopKTrainingSAEConfig(
        d_in=d, d_sae=spec["d_sae"], k=float(spec["k"]), matryoshka_widths=list(spec["widths"]),
        aux_loss_coefficient=spec["auxk_alpha"], normalize_activations="expected_average_only_in",
        dtype="float32", device="cpu")
    sae = MatryoshkaBatchTopKTrainingSAE(cfg)
    steps, batch = spec["steps"], spec["batch"]
    tcfg = SAETrainerConfig(total_training_samples=steps * batch, train_batch_size_samples=batch, lr=spec["lr"], lr_end=0.0,
                            lr_scheduler_name="constant", lr_decay_steps=max(1, steps // 5),
                            dead_feature_window=spec["dead_after_steps"], feature_sampling_window=10**9,
                            n_batches_for_norm_estimate=max(1, min(100, len(x_tr) // batch)),
                            logger=LoggingConfig(log_to_wandb=False), device="cpu")
    g = torch.Generator().manual_seed(spec["seed"])

    def batches():
        while True:
            order = torch.randperm(len(x_tr), generator=g)
            for s in range(0, len(order) - batch + 1, batch):
                yield x_tr[order[s:s + batch]]

    t0 = time.perf_counter()
    trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=batches())
    trained = trainer.fit()
    seconds = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        trained.save_inference_model(tmp)
        inf = SAE.load_from_disk(tmp, device="cpu")
    inf.eval()

    def decode_prefix(z, m):
        return inf.decode(torch.cat([z[:, :m], torch.zeros_like(z[:, m:])], dim=1))

    out = _metrics(x_ev, torch.cat([x_tr, x_ev]), inf.encode, decode_prefix, spec["widths"])
    out.update(seconds=seconds, steps=steps, architecture=type(inf).__name__)
    import sae_lens

    out["version"] = sae_lens.__version__
    print("SAELENS_RESULT " + json.dumps(out))


# ------------------------------------------------------------------------------ fairvlm side
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", default="embedded", choices=("embedded", "smoke"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--saelens-python", default=str(ROOT / ".venv-saelens" / "bin" / "python"),
                    help="the Python of an environment with sae-lens==%s installed" % SAELENS_VERSION)
    ap.add_argument("--keep", metavar="DIR", help="write the activations and the run's spec into DIR and keep them")
    ap.add_argument("--saelens-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.saelens_worker:
        saelens_worker(args.saelens_worker)
        return 0
    if not Path(args.saelens_python).is_file():
        print(f"no SAELens environment at {args.saelens_python}: run `make bench-saelens` (it creates "
              f".venv-saelens with sae-lens=={SAELENS_VERSION}) or pass --saelens-python", file=sys.stderr)
        return 2

    import numpy as np
    import torch
    from safetensors.torch import save_file

    from fairvlm import debiaslens as DL
    from fairvlm import retrieval
    from fairvlm import sae as S
    from fairvlm.models import load
    from fairvlm.testbed import world

    recipe = DL.RECIPES[args.profile]
    size = DL.SHIPPED[args.profile]
    clip = load("testbed-clip", size=size)
    # chapter 06's image rows (fairvlm.debiaslens.sae_training_data, image part): the class
    # token of held-out scenes from 2000 on, split 90/10 by image with the same generator
    rng = np.random.default_rng(args.seed)
    rows = world.gallery(recipe["sae_scenes"], split="heldout", start=2000)
    images = world.render_rows(rows, world.DEFAULT_SIZE)
    perm = rng.permutation(len(images))
    tr, ev = perm[: int(0.9 * len(images))], perm[int(0.9 * len(images)):]
    cls = DL.last_layer_cls(clip, retrieval.pixel_values(clip, images))
    x_tr, x_ev = cls[torch.from_numpy(tr)].contiguous(), cls[torch.from_numpy(ev)].contiguous()
    d = x_tr.shape[1]
    cfg = S.SAEConfig(d_in=d, d_sae=recipe["expansion"]["image"] * d, k=recipe["k"],
                      dead_after=recipe["dead_after_epochs"] * len(x_tr), threshold_decay=recipe["threshold_decay"])
    t0 = time.perf_counter()
    ours, log = S.train(x_tr, cfg, steps=recipe["steps"], batch_size=recipe["batch"], lr=recipe["lr"], seed=args.seed,
                        eval_acts=x_ev, log_every=recipe["log_every"], plateau_tol=recipe["plateau_tol"],
                        patience=recipe["patience"])
    t_ours = time.perf_counter() - t0
    steps = int(log.attrs["steps_run"])
    widths = list(cfg.widths)

    def our_prefix(z, m):
        return ours.decode(z, m)

    mine = _metrics(x_ev, torch.cat([x_tr, x_ev]), ours.encode, our_prefix, widths)
    spec = {"seed": args.seed, "d_sae": cfg.d_sae, "k": cfg.k, "widths": widths, "auxk_alpha": cfg.auxk_alpha,
            "steps": steps, "batch": recipe["batch"], "lr": recipe["lr"],
            "dead_after_steps": max(1, -(-cfg.dead_after // recipe["batch"]))}
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(args.keep) if args.keep else Path(tmp)
        where.mkdir(parents=True, exist_ok=True)
        f = where / "acts.safetensors"
        save_file({"train": x_tr, "heldout": x_ev}, str(f))
        f.with_suffix(".json").write_text(json.dumps(spec))
        proc = subprocess.run([args.saelens_python, __file__, "--saelens-worker", str(f)], capture_output=True,
                              text=True, cwd=ROOT)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("SAELENS_RESULT ")]
    if proc.returncode != 0 or not line:
        print(f"the SAELens run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return 1
    theirs = json.loads(line[0].split(" ", 1)[1])

    print(f"testbed-clip ({size}) class token of the last vision layer: {len(x_tr)} training rows, {len(x_ev)} "
          f"held-out rows, d = {d}, {cfg.d_sae} latents, k = {cfg.k}, {steps} steps of {recipe['batch']} "
          f"(fairvlm's plateau rule: {'stopped early' if log.attrs['plateaued'] else 'ran to the ceiling'})")
    print(f"{'measure (held-out rows)':34s} {'fairvlm.sae':>12s} {'SAELens ' + theirs['version']:>16s}")
    keys = ["ev_heldout"] + [f"ev_prefix_{m}" for m in widths[:-1]] + ["l0_heldout", "dead_fraction"]
    for k in keys:
        print(f"{k:34s} {mine[k]:12.4f} {theirs[k]:16.4f}")
    print(f"{'seconds per 1,000 steps':34s} {1000 * t_ours / steps:12.2f} {1000 * theirs['seconds'] / steps:16.2f}"
          f"   (ratio SAELens / fairvlm: {theirs['seconds'] / t_ours:.2f}; one run each, same machine)")
    print("SAELens inference class:", theirs["architecture"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
