"""Matryoshka BatchTopK sparse autoencoder and DEBIASLENS's neuron-controlled inference.

DEBIASLENS (An et al., CVPR 2026) trains a sparse autoencoder (SAE) on one residual site of a
CLIP encoder, finds *social neurons* (latents that fire consistently on one group's images and
on no other group's), and at inference overwrites those latents and mixes the decoded vector
back into the stream. This module holds the four pieces, each small:

The model (:class:`SAEConfig`, :class:`MatryoshkaSAE`)
    ``z = BatchTopK(ReLU((x / scale - b_dec) W_enc + b_enc))``, ``x_hat = (z W_dec + b_dec) * scale``
    with unit-norm decoder rows (one row per latent). *BatchTopK* (Bussmann et al., 2024) keeps
    the ``k * batch`` largest activations of the whole batch, so rows keep ``k`` latents *on
    average*. *Matryoshka* (Bussmann et al., 2025; Nabeshima, 2024): the latents are split into
    nested groups (fractions 1/16, 1/8, 1/4, 9/16 of ``d_sae``) and the loss averages the
    reconstruction error of every prefix ``x - W_dec[:m]^T z[:m]`` (the poster's ``L_R`` writes
    a sum; the authors' released trainer averages), so early latents carry coarse, general
    features. AuxK (Gao et al., 2024) adds
    ``auxk_alpha`` (0.03) times the error of reconstructing the residual from the top dead
    latents. **Which encode serves inference**: training uses BatchTopK; inference uses the
    learned threshold (a moving average of the smallest activation BatchTopK kept), i.e. a
    JumpReLU, so one image's code does not depend on the rest of its batch.
Training (:func:`train`)
    Adam on an in-memory tensor of activations; the side effects each get one small
    ``@torch.no_grad()`` function: :func:`remove_parallel_grad` (after ``backward``),
    :func:`normalize_decoder` (after ``step``), :func:`update_dead` (tokens since each latent
    fired), :func:`update_threshold`. Returns the SAE and a log of reconstruction by prefix,
    dead fraction and explained variance.
Activations (:func:`collect_image_acts`, :func:`collect_text_acts`)
    through :func:`fairvlm.hooks.capture` at a site such as ``vision.resid_post.-1`` (the
    post-MLP residual of the last vision layer; DEBIASLENS trains on two random tokens per
    image) or ``resid_post.-1`` (text encoder). LLaVA-1.5 reads vision layer ``-2``: an edit on
    the last vision layer never reaches its language model.
Social neurons and control (:func:`social_neurons`, :func:`pick_neurons`, :func:`control`, :func:`control_edits`)
    ``E_g`` = latents active on at least ``threshold`` of group g's images; ``N_g = E_g`` minus
    every other group's ``E_h``; ranked by mean activation on g. Control sets the chosen latents
    to ``gamma`` and mixes. Two variants: ``"authors"`` (DEBIASLENS's code:
    ``h' = (1 - alpha) h + alpha decode(z')``; the SAE's reconstruction error is dropped, so
    only ``alpha = 0`` is an exact identity) and ``"error_preserving"``
    (``h' = h + alpha (decode(z') - decode(z))``: what the SAE fails to reconstruct is kept, and
    leaving the latents as they are changes nothing).

Saved as ``cfg.json`` + ``sae_weights.safetensors`` (SAELens's file names and parameter names
``W_enc (d_in, d_sae)``, ``W_dec (d_sae, d_in)``, ``b_enc``, ``b_dec``, ``threshold``, plus our
``scale``). Why not SAELens itself: see the chapter (it installs and trains from memory, but adds
about 40 packages and seconds of import time for a class of one screen).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from fairvlm import validate as V
from fairvlm.errors import DataError, FairVLMError, unknown
from fairvlm.params import ParameterError

__all__ = [
    "SAEConfig", "MatryoshkaSAE", "train", "sae_loss", "explained_variance", "save_sae", "load_sae",
    "collect_image_acts", "collect_text_acts", "social_neurons", "pick_neurons", "control",
    "control_edits", "site_width", "check_pixels", "VARIANTS",
]

VARIANTS = ("authors", "error_preserving")


# --------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class SAEConfig:
    """Hyperparameters of a Matryoshka BatchTopK SAE (DEBIASLENS defaults in the comments)."""

    d_in: int                      # activation width (CLIP ViT-L/14: 1024)
    d_sae: int                     # number of latents (DEBIASLENS code: expansion factor 8; README: 1)
    k: int = 20                    # latents kept per row on average (DEBIASLENS: 20)
    group_fractions: tuple = (0.0625, 0.125, 0.25, 0.5625)  # Matryoshka groups (DEBIASLENS)
    auxk_alpha: float = 0.03       # AuxK weight (DEBIASLENS: 0.03)
    dead_after: int = 10_000_000   # rows without firing before a latent counts as dead (dictionary_learning)
    threshold_decay: float = 0.999  # moving average of the inference threshold
    site: str = ""                 # where the activations come from, e.g. "vision.resid_post.-1"
    model: str = ""                # which model they come from
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("d_in", "d_sae", "k", "dead_after"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ParameterError(f"SAEConfig.{name}={v!r} must be a positive integer")
        if self.k > self.d_sae:
            raise ParameterError(f"SAEConfig.k={self.k} cannot exceed d_sae={self.d_sae}")
        fr = tuple(V.numbers_list("SAEConfig.group_fractions", self.group_fractions, low=0.0))
        if not fr or any(not f > 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
            raise ParameterError(f"group_fractions={self.group_fractions!r} must be positive and sum to 1")
        object.__setattr__(self, "group_fractions", fr)
        w = self.widths  # strictly increasing, last = d_sae (as SAELens validates matryoshka widths)
        if len(set(w)) != len(w) or w[0] < 1:
            raise ParameterError(f"d_sae={self.d_sae} is too small for {len(fr)} Matryoshka groups {fr}")
        V.number("SAEConfig.auxk_alpha", self.auxk_alpha, low=0.0)
        V.number("SAEConfig.threshold_decay", self.threshold_decay, low=0.0, high=1.0, low_open=True, high_open=True)
        V.text("SAEConfig.site", self.site, empty=True)
        V.text("SAEConfig.model", self.model, empty=True)
        if not isinstance(self.extra, dict):
            raise ParameterError(f"SAEConfig.extra={self.extra!r} must be a dict")

    @property
    def widths(self) -> tuple:
        """Nested prefix sizes, e.g. (32, 96, 224, 512) for d_sae = 512: the last is d_sae."""
        cum = np.cumsum(self.group_fractions)
        return tuple(int(round(c * self.d_sae)) for c in cum[:-1]) + (self.d_sae,)


# ---------------------------------------------------------------------------------------------- model
class MatryoshkaSAE(torch.nn.Module):
    """Matryoshka BatchTopK SAE (module docstring). Shapes: x (..., d_in), z (..., d_sae)."""

    def __init__(self, cfg: SAEConfig, *, seed: int = 0):
        super().__init__()
        if not isinstance(cfg, SAEConfig):
            raise ParameterError(f"cfg={V.show(cfg)} must be a fairvlm.sae.SAEConfig")
        seed = V.integer("seed", seed, low=0)
        self.cfg = cfg
        g = torch.Generator().manual_seed(seed)
        w = F.normalize(torch.randn(cfg.d_sae, cfg.d_in, generator=g), dim=-1)
        self.W_dec = torch.nn.Parameter(w)                        # (d_sae, d_in), unit rows
        self.W_enc = torch.nn.Parameter(w.T.clone())              # (d_in, d_sae)
        self.b_enc = torch.nn.Parameter(torch.zeros(cfg.d_sae))
        self.b_dec = torch.nn.Parameter(torch.zeros(cfg.d_in))
        self.register_buffer("threshold", torch.tensor(-1.0))    # < 0 until training sets it
        self.register_buffer("scale", torch.tensor(1.0))         # inputs are divided by it

    def _check(self, x: torch.Tensor):
        if not isinstance(x, torch.Tensor) or x.shape[-1] != self.cfg.d_in:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise FairVLMError(f"this SAE reads vectors of width {self.cfg.d_in} (site {self.cfg.site!r} of "
                               f"{self.cfg.model!r}); got {got}: train or load an SAE for this model and site")

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        self._check(x)
        x = x.to(self.W_enc.dtype) / self.scale
        return F.relu((x - self.b_dec) @ self.W_enc + self.b_enc)  # (..., d_sae)

    def encode(self, x: torch.Tensor, *, batch_topk: bool = False) -> torch.Tensor:
        a = self.pre_acts(x)
        if batch_topk:  # keep the k * rows largest activations of the whole batch
            flat = a.reshape(-1)
            n_keep = min(self.cfg.k * a.reshape(-1, self.cfg.d_sae).shape[0], flat.numel())
            keep = torch.zeros_like(flat, dtype=torch.bool)
            keep[flat.topk(n_keep, sorted=False).indices] = True
            return (flat * keep).reshape(a.shape)
        if float(self.threshold) < 0:
            raise FairVLMError("this SAE has no inference threshold yet: train it (fairvlm.sae.train) first")
        return a * (a > self.threshold)

    def decode(self, z: torch.Tensor, width: int | None = None) -> torch.Tensor:
        z = V.tensor("z", z, width=self.cfg.d_sae, finite=False)
        m = self.cfg.d_sae if width is None else V.integer("width", width, low=1, high=self.cfg.d_sae)
        return (z[..., :m] @ self.W_dec[:m] + self.b_dec) * self.scale  # (..., d_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# ------------------------------------------------------------------------------------------- training
def sae_loss(sae: MatryoshkaSAE, x: torch.Tensor, dead: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Named loss terms on a batch ``x`` (B, d_in) already divided by ``sae.scale``.

    ``mse_level_i``: squared error of prefix i, summed over features, mean over rows; the
    total **averages** them over the prefixes, as the authors' released trainer does (the
    poster's L_R writes a sum, which would make AuxK, added once, |prefixes| times weaker);
    ``auxk``: normalized error of reconstructing the residual from
    the top ``d_in // 2`` dead latents (Gao et al. 2024, App. B.1). Returns (terms, z)."""
    if not isinstance(sae, MatryoshkaSAE):
        raise ParameterError(f"sae={V.show(sae)} must be a fairvlm.sae.MatryoshkaSAE")
    x = V.tensor("x", x, ndim=2, width=sae.cfg.d_in)
    if not isinstance(dead, torch.Tensor) or dead.dtype != torch.bool or tuple(dead.shape) != (sae.cfg.d_sae,):
        raise ParameterError(f"dead={V.show(dead)} must be a bool tensor ({sae.cfg.d_sae},): latents counted as dead")
    cfg = sae.cfg
    a = F.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)              # (B, d_sae)
    flat = a.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.topk(min(cfg.k * x.shape[0], flat.numel()), sorted=False).indices] = True
    z = (flat * keep).reshape(a.shape)                               # BatchTopK
    terms, x_hat, start = {}, sae.b_dec.expand_as(x), 0
    for i, m in enumerate(cfg.widths):  # prefix i adds its own group's latents to prefix i - 1
        x_hat = x_hat + z[:, start:m] @ sae.W_dec[start:m]
        start = m
        terms[f"mse_level_{i}"] = (x - x_hat).pow(2).sum(-1).mean()
    auxk = x.new_zeros(())
    n_dead = int(dead.sum())
    if n_dead and cfg.auxk_alpha > 0:
        resid = (x - x_hat).detach()
        k_aux = min(cfg.d_in // 2, n_dead)  # AuxK on the top d_in // 2 dead latents
        dead_a = a.masked_fill(~dead, 0.0)
        top = dead_a.topk(k_aux, dim=-1)
        z_aux = torch.zeros_like(a).scatter(-1, top.indices, top.values)
        e_hat = z_aux @ sae.W_dec
        auxk = (e_hat - resid).pow(2).sum(-1).mean() / resid.sub(resid.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
    terms["auxk"] = auxk
    mse = [v for k, v in terms.items() if k.startswith("mse_level")]
    terms["total"] = sum(mse) / len(mse) + cfg.auxk_alpha * auxk
    return terms, z


@torch.no_grad()
def remove_parallel_grad(sae: MatryoshkaSAE) -> None:
    """Drop the part of each decoder row's gradient along the row (keeps unit norm to first order)."""
    if sae.W_dec.grad is not None:
        w, g = sae.W_dec, sae.W_dec.grad
        g -= (g * w).sum(-1, keepdim=True) * w


@torch.no_grad()
def normalize_decoder(sae: MatryoshkaSAE) -> None:
    sae.W_dec.data = F.normalize(sae.W_dec.data, dim=-1)


@torch.no_grad()
def update_dead(since_fired: torch.Tensor, z: torch.Tensor) -> None:
    """``since_fired`` (d_sae,): rows seen since each latent last fired."""
    since_fired += z.shape[0]
    since_fired[(z > 0).any(0)] = 0


@torch.no_grad()
def update_threshold(sae: MatryoshkaSAE, z: torch.Tensor) -> None:
    """Moving average of the smallest activation BatchTopK kept (the inference threshold)."""
    pos = z[z > 0]
    if pos.numel():
        m = pos.min()
        d = sae.cfg.threshold_decay
        sae.threshold.copy_(m if sae.threshold < 0 else d * sae.threshold + (1 - d) * m)


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """``1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2`` over rows (1 = perfect)."""
    x = V.tensor("x", x, ndim=2)
    x_hat = V.tensor("x_hat", x_hat, ndim=2, width=x.shape[-1])
    if x_hat.shape != x.shape:
        raise ParameterError(f"x_hat={V.show(x_hat)} must have x's shape {tuple(x.shape)}")
    den = (x - x.mean(0)).pow(2).sum()
    return float(1 - (x - x_hat).pow(2).sum() / den.clamp_min(1e-12))


def train(acts: torch.Tensor, cfg: SAEConfig, *, steps: int = 1000, batch_size: int = 256, lr: float = 1e-3,
          seed: int = 0, eval_acts: torch.Tensor | None = None, log_every: int = 50,
          progress: bool = False, plateau_tol: float | None = None,
          patience: int = 5) -> tuple[MatryoshkaSAE, pd.DataFrame]:
    """Train on ``acts`` (N, d_in) held in memory; returns ``(sae, log)``.

    Inputs are scaled so that their mean squared norm is ``d_in`` (``sae.scale`` keeps the
    factor, so the SAE reads and writes raw activations). ``b_dec`` starts at the mean. Adam,
    learning rate constant then linearly to 0 over the last fifth. ``log``: one row per
    ``log_every`` steps with the train loss terms and, on ``eval_acts`` (default: the first
    1024 rows of ``acts``), explained variance per prefix (``ev_level_i``), ``l0`` and the
    fraction of dead latents.

    ``plateau_tol``: train *until it plateaus*: stop at the first log row where the explained
    variance of the whole SAE on ``eval_acts`` rose by less than ``plateau_tol`` over the
    last ``patience`` log rows (``steps`` is then a ceiling). ``log.attrs`` records
    ``plateaued`` (True when it stopped that way) and ``steps_run``.
    """
    if not isinstance(cfg, SAEConfig):
        raise ParameterError(f"cfg={V.show(cfg)} must be a fairvlm.sae.SAEConfig")
    if not isinstance(acts, torch.Tensor) or acts.ndim != 2 or acts.shape[1] != cfg.d_in or len(acts) < 2:
        raise ParameterError(f"acts must be an (N >= 2, {cfg.d_in}) tensor; got "
                             f"{tuple(acts.shape) if isinstance(acts, torch.Tensor) else type(acts).__name__}")
    if not isinstance(cfg, SAEConfig):
        raise ParameterError(f"cfg={V.show(cfg)} must be a fairvlm.sae.SAEConfig")
    if not torch.isfinite(acts).all():
        raise DataError("acts (the activations) hold NaN or inf; check the model and the site")
    for name, v in (("steps", steps), ("batch_size", batch_size), ("log_every", log_every)):
        V.integer(name, v, low=1)
    V.learning_rate("lr", lr)
    V.integer("seed", seed, low=0)
    V.flag("progress", progress)
    if plateau_tol is not None:
        V.number("plateau_tol", plateau_tol, low=0.0, low_open=True)
    V.integer("patience", patience, low=1)
    if eval_acts is not None:
        V.tensor("eval_acts", eval_acts, ndim=2, width=cfg.d_in)
    x_all = acts.detach().float()          # trains where the activations are (CPU or GPU)
    if x_all.device.type == "cpu":
        # small matrices gain nothing from intra-op threads, and on a shared machine two
        # threads per process were measured 7x slower than one (46 s vs 6 s for 50 steps)
        old_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return _train(x_all, cfg, steps, batch_size, lr, seed, eval_acts, log_every, progress, plateau_tol, patience)
        finally:
            torch.set_num_threads(old_threads)
    return _train(x_all, cfg, steps, batch_size, lr, seed, eval_acts, log_every, progress, plateau_tol, patience)


def _train(x_all, cfg, steps, batch_size, lr, seed, eval_acts, log_every, progress, plateau_tol, patience):
    sae = MatryoshkaSAE(cfg, seed=seed).to(x_all.device)
    scale = x_all.pow(2).sum(-1).mean().div(cfg.d_in).sqrt().clamp_min(1e-8)
    sae.scale.copy_(scale)
    xs = x_all / scale
    ev_x = (eval_acts.detach().float().to(x_all.device) if eval_acts is not None else x_all[:1024])
    with torch.no_grad():
        sae.b_dec.copy_(xs.mean(0))
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (steps - s) / max(1, steps // 5)))
    since_fired = torch.zeros(cfg.d_sae, dtype=torch.long, device=x_all.device)
    g = torch.Generator().manual_seed(seed)
    rows, order, pos = [], torch.randperm(len(xs), generator=g), 0
    it = range(steps)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="training SAE", unit="step")
    for step in it:
        if pos + batch_size > len(xs):
            order, pos = torch.randperm(len(xs), generator=g), 0
        x = xs[order[pos:pos + batch_size]]
        pos += batch_size
        with torch.enable_grad():  # also when the caller runs under torch.no_grad()
            terms, z = sae_loss(sae, x, since_fired >= cfg.dead_after)
            opt.zero_grad(set_to_none=True)
            terms["total"].backward()
        remove_parallel_grad(sae)
        opt.step()
        sched.step()
        normalize_decoder(sae)
        update_dead(since_fired, z)
        update_threshold(sae, z.detach())
        if step % log_every == 0 or step == steps - 1:
            row = {"step": step, **{k: float(v.detach()) for k, v in terms.items()}}
            row.update(_eval(sae, ev_x))
            row["dead_frac"] = float((since_fired >= cfg.dead_after).float().mean())
            rows.append(row)
            last = f"ev_level_{len(cfg.widths) - 1}"
            if plateau_tol is not None and len(rows) > patience and \
                    rows[-1][last] - rows[-1 - patience][last] < plateau_tol:
                plateaued = True
                break
    else:
        plateaued = False
    sae.eval()
    log = pd.DataFrame(rows)
    log.attrs.update(plateaued=plateaued, steps_run=int(rows[-1]["step"]) + 1 if rows else 0)
    return sae, log


@torch.no_grad()
def _eval(sae: MatryoshkaSAE, x: torch.Tensor) -> dict:
    z = sae.encode(x)
    out = {f"ev_level_{i}": explained_variance(x, sae.decode(z, m)) for i, m in enumerate(sae.cfg.widths)}
    out["l0"] = float((z > 0).float().sum(-1).mean())
    return out


# -------------------------------------------------------------------------------------------- storage
def save_sae(sae: MatryoshkaSAE, path: str | os.PathLike, *, overwrite: bool = True) -> Path:
    """Write the folder ``path`` with ``cfg.json``, ``sae_weights.safetensors`` and a
    ``SHA256SUMS`` manifest (checked by :func:`load_sae`), atomically.

    A folder holding anything fairvlm did not save there is never touched: the call is
    refused. With ``overwrite=True`` (the default: a chapter re-run saves to the same cache
    folder) what a previous save wrote there is replaced; ``overwrite=False`` refuses any
    non-empty folder (see :func:`fairvlm.validate.staged_folder`)."""
    from safetensors.torch import save_file

    if not isinstance(sae, MatryoshkaSAE):
        raise ParameterError(f"sae={V.show(sae)} must be a fairvlm.sae.MatryoshkaSAE")
    with V.staged_folder("path", path, overwrite=overwrite) as staging:
        tensors = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
        save_file(tensors, str(staging / "sae_weights.safetensors"))
        cfg = asdict(sae.cfg)
        cfg["architecture"] = "matryoshka_batchtopk (inference: jumprelu with the learned threshold)"
        (staging / "cfg.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return Path(path)


def load_sae(path: str | os.PathLike) -> MatryoshkaSAE:
    """Load what :func:`save_sae` wrote; checks that the weights match the config."""
    from safetensors.torch import load_file

    path = V.path("path", path)
    cfg_file, w_file = path / "cfg.json", path / "sae_weights.safetensors"
    if not cfg_file.is_file() or not w_file.is_file():
        raise DataError(f"path={str(path)!r} holds no SAE (cfg.json and sae_weights.safetensors); train and save one first")
    V.verified("path", path)
    try:
        raw = json.loads(cfg_file.read_text())
        raw.pop("architecture", None)
        raw["group_fractions"] = tuple(raw["group_fractions"])
        cfg = SAEConfig(**raw)
        tensors = load_file(str(w_file))
    except Exception as exc:  # json, the config's own checks, or safetensors (several error types)
        raise DataError(f"{path}: unreadable SAE files ({type(exc).__name__}: {exc}); delete the folder and retrain") from None
    sae = MatryoshkaSAE(cfg)
    want = {k: tuple(v.shape) for k, v in sae.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    if want != got:
        raise DataError(f"{path}: weights {got} do not match the config {want}; delete the folder and retrain")
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise DataError(f"{w_file}: the weights {bad} hold NaN or inf; delete the folder and retrain")
    sae.load_state_dict(tensors)
    return sae.eval()


# ---------------------------------------------------------------------------------------- activations
def site_width(lm, site: str) -> int:
    """Residual width at a site: the vision stream for ``vision.*``, else the language/text stream."""
    V.loaded("lm", lm)
    V.text("site", site)
    return int(lm.d_vision if site.startswith("vision.") else lm.d_model)


def _pick_tokens(h: torch.Tensor, tokens, gen: torch.Generator, mask: torch.Tensor | None = None) -> torch.Tensor:
    """h (B, T, d) -> rows. tokens: int (that many random tokens per row), 'cls', 'mean', 'max' or 'all'."""
    if mask is None:
        mask = torch.ones(h.shape[:2], dtype=torch.bool)
    if tokens == "cls":
        return h[:, 0]
    if tokens == "mean":
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp_min(1)
    if tokens == "max":
        return h.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(1).values
    if tokens == "all":
        return h[mask]
    out = []
    for b in range(h.shape[0]):
        idx = torch.nonzero(mask[b]).flatten()
        pick = idx[torch.randperm(len(idx), generator=gen)[: int(tokens)]]
        out.append(h[b, pick])
    return torch.cat(out)


def _check_tokens(tokens):
    if isinstance(tokens, str) and tokens in ("cls", "mean", "max", "all"):
        return
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ParameterError(f"tokens={tokens!r} must be a positive integer, 'cls', 'mean', 'max' or 'all'")


def check_pixels(lm, pixels) -> torch.Tensor:
    """``pixels`` is a finite, non-empty ``(N, 3, S, S)`` tensor with ``S`` the vision
    encoder's image size (when its config states one)."""
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or len(pixels) == 0:
        raise ParameterError(f"pixels={V.show(pixels)} must be a non-empty (N, 3, S, S) tensor")
    V.tensor("pixels", pixels)  # finite
    vc = getattr(getattr(getattr(lm, "model", None), "config", None), "vision_config", None)
    size = getattr(vc, "image_size", None)
    if pixels.shape[1] != 3 or (isinstance(size, int) and tuple(pixels.shape[2:]) != (size, size)):
        want = f"(N, 3, {size}, {size})" if isinstance(size, int) else "(N, 3, S, S)"
        raise ParameterError(f"pixels={V.show(pixels)} must be {want} for {lm.name}: preprocess the images with "
                             "the model's processor")
    return pixels


def _check_sae_arg(sae) -> None:
    if sae is not None and not isinstance(sae, MatryoshkaSAE):
        raise ParameterError(f"sae={V.show(sae)} must be None or a fairvlm.sae.MatryoshkaSAE")


def _rows(h: torch.Tensor, sae, tokens, gen, mask=None) -> torch.Tensor:
    h = h.float().cpu()
    if sae is not None:
        h = sae.encode(h)  # SAE codes of every token, then pooled
    return _pick_tokens(h, tokens, gen, mask)


@torch.no_grad()
def collect_image_acts(lm, pixels: torch.Tensor, *, site: str = "vision.resid_post.-1", tokens=2, seed: int = 0,
                       batch_size: int = 64, sae: MatryoshkaSAE | None = None) -> torch.Tensor:
    """Activations at a vision ``site`` for images ``pixels`` (N, 3, S, S), float32 on CPU.

    ``tokens``: ``2`` (two random tokens per image, DEBIASLENS's training points; any int),
    ``"cls"`` (the class token, what CLIP's image embedding reads), ``"mean"``, ``"max"`` or
    ``"all"``. With ``sae``, the rows are SAE codes (every token encoded, then pooled: ``"max"``
    says whether and how strongly a latent fires anywhere in the image). Runs only the vision
    encoder (``lm.vision_model()``).
    """
    from fairvlm import hooks

    V.loaded("lm", lm)
    _check_tokens(tokens)
    if not V.text("site", site).startswith("vision."):
        raise ParameterError(f"site {site!r} is not a vision site; use e.g. 'vision.resid_post.-1'")
    check_pixels(lm, pixels)
    V.integer("seed", seed, low=0)
    V.integer("batch_size", batch_size, low=1)
    _check_sae_arg(sae)
    vm = lm.vision_model()
    gen = torch.Generator().manual_seed(seed)
    out = []
    with hooks.capture(lm, site) as cache:
        for s in range(0, len(pixels), batch_size):
            vm(pixel_values=pixels[s:s + batch_size].to(lm.device, lm.dtype))
            out.append(_rows(cache[site], sae, tokens, gen))
    return torch.cat(out)


@torch.no_grad()
def collect_text_acts(lm, texts: Sequence[str], *, site: str = "resid_post.-1", tokens="all", seed: int = 0,
                      batch_size: int = 128, sae: MatryoshkaSAE | None = None) -> torch.Tensor:
    """Activations at a text-encoder ``site`` (padding excluded), float32 on CPU.

    Runs ``get_text_features`` so that the tokenisation is the one retrieval uses. ``tokens``
    as in :func:`collect_image_acts` (``"cls"`` is the first token).
    """
    from fairvlm import hooks

    V.loaded("lm", lm)
    _check_tokens(tokens)
    texts = V.strings("texts", texts, blank=True)
    V.text("site", site)
    V.integer("seed", seed, low=0)
    V.integer("batch_size", batch_size, low=1)
    _check_sae_arg(sae)
    gen = torch.Generator().manual_seed(seed)
    out = []
    with hooks.capture(lm, site) as cache:
        for s in range(0, len(texts), batch_size):
            enc = lm.inputs(texts[s:s + batch_size])
            enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            lm.model.get_text_features(**enc)
            out.append(_rows(cache[site], sae, tokens, gen, enc["attention_mask"].bool().cpu()))
    return torch.cat(out)


# ------------------------------------------------------------------------------------- social neurons
def social_neurons(codes, groups: Sequence, *, threshold: float = 0.5) -> pd.DataFrame:
    """Social neurons per group from SAE codes ``codes`` (N, d_sae) of labelled images.

    ``E_g``: latents active (> 0) on at least ``threshold`` of g's images; ``N_g = E_g`` minus
    the union of the other groups' ``E_h``. Returns one row per (group, latent) in ``N_g``,
    ranked within the group by mean activation on g (the poster's ``s_j``): columns
    ``group, rank, latent, frac_active, frac_active_other`` (the largest firing rate on another
    group), ``mean_act``, ``mean_act_other`` and ``specificity = mean_act / (mean_act +
    mean_act_other)`` (1: fires only on g).
    """
    z = V.tensor("codes", codes, ndim=2, dtype=torch.float32)
    groups = V.labels("groups", groups)
    if len(groups) != z.shape[0]:
        raise ParameterError(f"codes has {z.shape[0]} rows but groups has {len(groups)} labels; give one label per row")
    labels = np.asarray([str(g) for g in groups], dtype=object)
    V.number("threshold", threshold, low=0.0, high=1.0, low_open=True)
    names = sorted(set(labels.tolist()))
    if len(names) < 2:
        raise DataError("social-neuron probing needs images of at least two groups")
    active = (z > 0).float()
    frac = {g: active[torch.from_numpy(labels == g)].mean(0) for g in names}   # (d_sae,)
    mean = {g: z[torch.from_numpy(labels == g)].mean(0) for g in names}
    consistent = {g: frac[g] >= threshold for g in names}
    rows = []
    for g in names:
        others = [h for h in names if h != g]
        own = consistent[g].clone()
        for h in others:
            own &= ~consistent[h]
        idx = torch.nonzero(own).flatten()
        if not len(idx):
            continue
        f_other = torch.stack([frac[h] for h in others]).max(0).values
        m_other = torch.stack([mean[h] for h in others]).mean(0)
        order = idx[torch.argsort(mean[g][idx], descending=True, stable=True)]
        for r, j in enumerate(order.tolist()):
            rows.append({"group": g, "rank": r, "latent": j, "frac_active": float(frac[g][j]),
                         "frac_active_other": float(f_other[j]), "mean_act": float(mean[g][j]),
                         "mean_act_other": float(m_other[j]),
                         "specificity": float(mean[g][j] / (mean[g][j] + m_other[j]).clamp_min(1e-12))})
    cols = ["group", "rank", "latent", "frac_active", "frac_active_other", "mean_act", "mean_act_other", "specificity"]
    return pd.DataFrame(rows, columns=cols)


def pick_neurons(table: pd.DataFrame, groups: Sequence[str], *, per_group: int = 1,
                 known: Sequence[str] | None = None) -> tuple[list[int], list[float]]:
    """The top ``per_group`` neurons of each group in ``groups`` -> (latents, their mean activation).

    ``known``: every group name the probing used (default: the groups in ``table``); a name
    outside it raises; a known group without social neurons contributes none.
    """
    if not isinstance(table, pd.DataFrame) or not {"group", "rank", "latent", "mean_act"} <= set(table.columns):
        raise ParameterError(f"table={V.show(table)} must be the DataFrame fairvlm.sae.social_neurons returned")
    groups = V.strings("groups", groups, empty=True)
    known = sorted(set(table["group"])) if known is None else V.strings("known", known)
    V.integer("per_group", per_group, low=1)
    latents, gammas = [], []
    for g in groups:
        if g not in known:
            raise unknown("group", g, known)
        sub = table[table["group"] == g].sort_values("rank").head(per_group)
        latents += sub["latent"].astype(int).tolist()
        gammas += sub["mean_act"].astype(float).tolist()
    return latents, gammas


# ------------------------------------------------------------------------------------------- control
def _check_alpha(alpha) -> float:
    return V.number("alpha", alpha, low=0.0, high=1.0)  # 0: no change, 1: the SAE's output only


def _check_control(sae, latents, gamma, variant) -> list[int]:
    if not isinstance(sae, MatryoshkaSAE):
        raise ParameterError(f"sae={V.show(sae)} must be a fairvlm.sae.MatryoshkaSAE")
    V.choice("variant", variant, VARIANTS)
    lat = V.integers("latents", latents, empty=True, low=0, high=sae.cfg.d_sae - 1, unique=True)
    if isinstance(gamma, (list, tuple)) or getattr(gamma, "ndim", 0) > 0:
        g = V.tensor("gamma", gamma, nonempty=False)
        if g.ndim == 1 and g.shape[0] not in (1, len(lat)):
            raise ParameterError(f"gamma has {g.shape[0]} values for {len(lat)} latents; give one number or one per latent")
    else:
        V.number("gamma", gamma)
    return lat


def control(sae: MatryoshkaSAE, h: torch.Tensor, latents: Sequence[int], gamma, alpha: float, *,
            variant: str = "authors") -> torch.Tensor:
    """Neuron-controlled inference on ``h`` (..., d_in): set ``latents`` to ``gamma`` and mix.

    ``gamma``: a number, one value per latent, or a tensor broadcastable to ``(..., len(latents))``.
    ``variant="authors"``: ``(1 - alpha) h + alpha decode(z')``; ``"error_preserving"``:
    ``h + alpha (decode(z') - decode(z))``. Returns a tensor of ``h``'s shape and dtype.
    """
    a = _check_alpha(alpha)
    lat = _check_control(sae, latents, gamma, variant)
    sae._check(h)
    if not torch.isfinite(h).all():
        raise ParameterError(f"h ({V.show(h)}) holds NaN or inf; only finite activations can be controlled")
    idx = torch.as_tensor(lat, dtype=torch.long)
    z = sae.encode(h)
    z2 = z.clone()
    g = torch.as_tensor(gamma, dtype=z.dtype)
    z2[..., idx] = g.expand(z2[..., idx].shape)
    if variant == "authors":
        out = (1 - a) * h.to(z.dtype) + a * sae.decode(z2)
    else:
        out = h.to(z.dtype) + a * (sae.decode(z2) - sae.decode(z))
    return out.to(h.dtype)


def control_edits(lm, site: str, sae: MatryoshkaSAE, latents: Sequence[int], gamma, alpha: float, *,
                  variant: str = "authors") -> dict:
    """``{site: fn}`` for :func:`fairvlm.hooks.edit`: neuron control on every token at ``site``.

    Raises when the SAE's width does not match the model's stream at that site, and when the
    SAE records (``cfg.site``, ``cfg.model``) another site or model than the one it is applied
    to: a vision SAE on the text stream of the same width would run and mean nothing.
    """
    from fairvlm import hooks

    V.loaded("lm", lm)
    _check_alpha(alpha)
    lat = _check_control(sae, latents, gamma, variant)
    V.text("site", site)
    if sae.cfg.site and [k for _, k in hooks._parse(lm, sae.cfg.site)] != [k for _, k in hooks._parse(lm, site)]:
        raise ParameterError(f"site={site!r}: this SAE was trained on {sae.cfg.site!r}; apply it there, or train "
                             "an SAE on this site")
    names = {lm.name, str(getattr(lm, "info", {}).get("weights", lm.name))}
    if sae.cfg.model and sae.cfg.model not in names:
        raise ParameterError(f"lm={lm.name!r}: this SAE was trained on {sae.cfg.model!r}; apply it to that model, "
                             "or train an SAE on this one")
    width = site_width(lm, site)
    if width != sae.cfg.d_in:
        raise FairVLMError(f"SAE width {sae.cfg.d_in} (trained on {sae.cfg.site!r} of {sae.cfg.model!r}) does not "
                           f"match {lm.name}'s {site!r}, width {width}: train an SAE on this model and site")
    return {site: lambda h: control(sae, h, lat, gamma, alpha, variant=variant)}
