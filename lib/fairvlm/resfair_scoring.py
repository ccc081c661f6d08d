"""Chapter 04's answers from option logits: one forward pass per row, the shared prefix computed once.

RES-FAIR's fair proportion (appendix C.2-C.3) is a choice among the options a question
lists: the paper's system prompt is tightened until every answer *is* one of the option
words (appendix A.2). :func:`option_scores` reads that choice from the next-token
distribution at the answer position instead of generating up to ``MAX_NEW_TOKENS`` tokens:

**Choice rule** (:func:`choice_from_logits`): the option owning the single most probable
option token, among the first tokens of every option's surface forms
(:func:`fairvlm.mcq.option_token_ids`). This is greedy decoding restricted to the option
tokens, so it is the greedy answer itself whenever that answer starts with an option word;
where the model opens with other words ("The answer is ...") it is the answer the paper's
format would have forced. The option log-probabilities ``lp_a, lp_b, lp_fair`` are the ones
:func:`fairvlm.mcq.evaluate` reports (summed first-token mass), so Table 2's KL readings do
not change. :func:`answer_agreement` measures, on rows answered both ways, how often the
choice equals the parsed generated answer.

**Shared prefix** (:func:`next_logits`). Every prompt of a call begins with the same tokens
(chat template and system prompt, up to the first image). They are run once, in the
context of the call (so under a :func:`fairvlm.resfair.posthoc` edit the prefix is the
edited one: the edit acts per position and a position sees only earlier tokens, so the
prefix's keys and values are the same for every row), and their key/value cache is
repeated for each batch; each row's remaining tokens follow, right-padded, and the logits
are read at each row's last real token. Up to floating-point rounding this is the full
forward pass (``tests/test_resfair_scoring.py`` checks it in float32).

:func:`score_choices` applies the same rule to free-form three-option questions
(:data:`fairvlm.utility.GENERAL_QUESTIONS`): the option whose first token is most probable.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from fairvlm import mcq
from fairvlm import validate as V
from fairvlm.errors import FairVLMError

__all__ = ["choice_from_logits", "common_prefix", "next_logits", "option_scores", "score_choices",
           "choice_token_ids", "answer_agreement", "OPTION_WORD"]

#: the word a logit choice is written as in the ``answer`` column, per attribute and option
OPTION_WORD = {a: {"a": g[0].option, "b": g[1].option, "fair": mcq.FAIR_OPTION} for a, g in mcq.GROUPS.items()}


def choice_from_logits(logits, token_ids) -> tuple[np.ndarray, str]:
    """``(lp, choice)`` for one row's next-token ``logits`` (``(vocab,)``): ``lp`` the
    ``(lp_a, lp_b, lp_fair)`` of :func:`fairvlm.mcq.option_logprobs` and ``choice`` the key
    (``"a"``, ``"b"``, ``"fair"``) of the option owning the most probable single token among
    ``token_ids[key]`` (module docstring). Ties go to the first of ``a, b, fair``."""
    x = torch.as_tensor(logits)
    if x.ndim != 1:
        raise FairVLMError(f"logits must be one row (vocab,), got shape {tuple(x.shape)}")
    x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    if not bool(torch.isfinite(x).all()):
        raise FairVLMError("logits hold NaN or inf; the forward pass failed")
    best, choice = -float("inf"), None
    for key in mcq.OPTIONS:
        ids = list(token_ids[key])
        if not ids or max(ids) >= x.shape[0] or min(ids) < 0:
            raise FairVLMError(f"option {key!r}: token ids {ids} do not index a vocabulary of {x.shape[0]}")
        v = float(x[ids].max())
        if v > best:
            best, choice = v, key
    return mcq.option_logprobs(x, token_ids).numpy(), choice


def common_prefix(seqs: Sequence[Sequence[int]], stop: Sequence[int] = ()) -> int:
    """Length of the longest token prefix shared by every sequence, cut before the first token
    in ``stop`` (image placeholders) and kept at least one token short of the shortest one
    (every row needs a token of its own to read its logits at)."""
    seqs = [list(s) for s in seqs]
    if not seqs or min(map(len, seqs)) < 1:
        raise FairVLMError("common_prefix needs non-empty sequences")
    n = min(map(len, seqs)) - 1
    first, stop = seqs[0], set(stop)
    p = 0
    while p < n and first[p] not in stop and all(s[p] == first[p] for s in seqs[1:]):
        p += 1
    return p


def _n_images(im) -> int:
    return 0 if im is None else len(im) if isinstance(im, (list, tuple)) else 1


def _image_token_ids(loaded) -> list[int]:
    cfg = getattr(loaded.model, "config", None)
    out = [getattr(cfg, k, None) for k in ("image_token_id", "image_token_index", "video_token_id")]
    return [int(i) for i in out if isinstance(i, int)]


def next_logits(loaded, texts: Sequence[str], images: Sequence | None = None, *, system: str | None = None,
                batch_size: int = 16, reuse_prefix: bool = True, progress: bool = False,
                desc: str = "rows") -> torch.Tensor:
    """Float next-token logits ``(n, vocab)`` after each prompt (``loaded.inputs`` format, in
    the order given), under whatever edit is active. ``images``: one entry per text (None, an
    image or a list). ``reuse_prefix``: run the prompts' shared prefix once (module
    docstring); ``False`` runs every prompt in full (left-padded)."""
    V.loaded("loaded", loaded)
    texts = V.strings("texts", texts)
    V.integer("batch_size", batch_size, low=1)
    if images is not None and len(images) != len(texts):
        raise FairVLMError(f"{len(texts)} texts but {len(images)} image entries")
    n_img = [_n_images(im) for im in (images if images is not None else [None] * len(texts))]
    order = sorted(range(len(texts)), key=lambda i: (n_img[i], len(texts[i]), i))
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out: list = [None] * len(texts)
    prefix_ids, prefix_kv = None, None
    if reuse_prefix:   # the prompts' token ids without images (placeholders stay one token each)
        seqs = [tok(loaded._prompt(t, k, True, system, ""), add_special_tokens=False)["input_ids"]
                for t, k in zip(texts, n_img)]
        p = common_prefix(seqs, _image_token_ids(loaded))
        if p >= 2:
            prefix_ids = torch.tensor([seqs[0][:p]], device=loaded.device)
            with torch.no_grad():
                o = loaded.model(input_ids=prefix_ids, attention_mask=torch.ones_like(prefix_ids), use_cache=True)
                prefix_kv = o["cache"] if "cache" in o else o["past_key_values"]
    bar = None
    if progress:
        from fairvlm.progress import bar as progress_bar

        bar = progress_bar(total=len(texts), desc=f"{loaded.name}: {len(texts)} {desc}", unit="row")
    try:
        for idx in batches:
            imgs = [images[i] for i in idx] if images is not None else None
            has = imgs is not None and any(_n_images(im) for im in imgs)
            enc = loaded.inputs([texts[i] for i in idx], imgs if has else None, system=system)
            with torch.no_grad():
                if prefix_kv is None:
                    logits = loaded.model(**enc, use_cache=False, logits_to_keep=1).logits[:, -1]
                else:
                    logits = _suffix_pass(loaded, enc, prefix_ids[0], prefix_kv, pad)
            for j, i in enumerate(idx):
                out[i] = logits[j].float()
            if bar is not None:
                bar.update(len(idx))
    finally:
        if bar is not None:
            bar.close()
    return torch.stack(out)


def _suffix_pass(loaded, enc, prefix_ids, prefix_kv, pad) -> torch.Tensor:
    """Logits at each row's last token, running only the tokens after the shared prefix."""
    ids, mask = enc["input_ids"], enc["attention_mask"]
    p = int(prefix_ids.shape[0])
    rows = [ids[i][mask[i].bool()] for i in range(ids.shape[0])]
    for r in rows:
        if r.shape[0] <= p or not torch.equal(r[:p], prefix_ids):
            raise FairVLMError("a prompt does not start with the shared prefix; call with reuse_prefix=False")
    suf = [r[p:] for r in rows]
    width = max(s.shape[0] for s in suf)
    sid = torch.full((len(suf), width), pad, dtype=ids.dtype, device=ids.device)
    smask = torch.zeros((len(suf), width), dtype=mask.dtype, device=ids.device)
    for j, s in enumerate(suf):
        sid[j, :s.shape[0]] = s
        smask[j, :s.shape[0]] = 1
    kv = copy.deepcopy(prefix_kv)
    kv.batch_repeat_interleave(len(suf))
    extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask", "token_type_ids")}
    attn = torch.cat([torch.ones((len(suf), p), dtype=mask.dtype, device=ids.device), smask], dim=1)
    last = torch.tensor([s.shape[0] - 1 for s in suf], device=ids.device)
    keep = torch.unique(last)           # the LM head runs only at the positions some row ends at
    logits = loaded.model(input_ids=sid, attention_mask=attn, cache=kv, use_cache=True, logits_to_keep=keep,
                          **extra).logits
    return logits[torch.arange(len(suf), device=ids.device), torch.searchsorted(keep, last)]


def option_scores(loaded, rows: Sequence, *, images: Callable | None = None, batch_size: int = 16,
                  reuse_prefix: bool = True, progress: bool = False) -> pd.DataFrame:
    """:func:`fairvlm.mcq.evaluate`'s table from one forward pass per row: ``parsed`` is the
    logit choice (:func:`choice_from_logits`), ``answer`` its option word, ``answer_mode``
    ``"logits"``; ``lp_*``, ``p_*``, ``skew``, ``option_argmax`` as ``evaluate`` gives them."""
    rows = V.sequence("rows", rows)
    if loaded.kind == "causal-lm" and any(r.item.images for r in rows):
        raise FairVLMError(f"{loaded.name} is text-only; build its items with variants=('text',)")
    systems = {r.system for r in rows}
    if len(systems) != 1:
        raise FairVLMError("option_scores: the rows must share a system prompt")
    imgs = mcq.row_images(rows, images)
    logits = next_logits(loaded, [r.text for r in rows], imgs if any(i is not None for i in imgs) else None,
                         system=systems.pop(), batch_size=batch_size, reuse_prefix=reuse_prefix,
                         progress=progress)
    ids = {a: mcq.option_token_ids(loaded.tokenizer, a) for a in mcq.ATTRIBUTES}
    lp, choice = np.zeros((len(rows), 3)), []
    for i, r in enumerate(rows):
        lp[i], c = choice_from_logits(logits[i], ids[r.item.attribute])
        choice.append(c)
    table = mcq.row_frame(rows, loaded.name)
    table["lp_a"], table["lp_b"], table["lp_fair"] = lp[:, 0], lp[:, 1], lp[:, 2]
    table = mcq.add_metrics(table)
    table["answer"] = [OPTION_WORD[r.item.attribute][c] for r, c in zip(rows, choice)]
    table["parsed"] = choice
    table["answer_mode"] = "logits"
    return table


def choice_token_ids(tokenizer, options: Sequence[str]) -> list[list[int]]:
    """Per option (free text), the distinct first tokens of its surface forms (as written,
    lower case, capitalised; with and without a leading space). Raises when two options
    share a first token (their probabilities could not be told apart)."""
    owner: dict = {}
    out = []
    for k, word in enumerate(V.strings("options", options)):
        ids = []
        for form in mcq._surface_forms(word):
            tid, _ = mcq._first_token(tokenizer, form)
            if owner.get(tid, k) != k:
                raise FairVLMError(f"options {options[owner[tid]]!r} and {word!r} start with the same token "
                                   f"{tokenizer.decode([tid])!r}; a first-token choice cannot tell them apart")
            owner[tid] = k
            if tid not in ids:
                ids.append(tid)
        out.append(ids)
    return out


def score_choices(loaded, prompts: Sequence[str], options: Sequence[Sequence[str]], *, system: str | None = None,
                  batch_size: int = 16, reuse_prefix: bool = True) -> list[int]:
    """Per prompt, the index of the option (in ``options[i]``) whose first token is the most
    probable next token among the options' first tokens."""
    prompts = V.strings("prompts", prompts)
    if len(options) != len(prompts):
        raise FairVLMError(f"{len(prompts)} prompts but {len(options)} option lists")
    logits = next_logits(loaded, prompts, system=system, batch_size=batch_size, reuse_prefix=reuse_prefix)
    out = []
    for lg, opts in zip(logits, options):
        best = [float(lg[ids].max()) for ids in choice_token_ids(loaded.tokenizer, opts)]
        out.append(int(np.argmax(best)))
    return out


def answer_agreement(generated: pd.DataFrame, scored: pd.DataFrame) -> dict:
    """How often the logit choice (``scored.parsed``) equals the parsed generated answer
    (``generated.parsed``) on the rows both tables hold (matched by ``row_id``):
    ``n``, ``agree`` (share of all rows), ``n_valid`` and ``agree_valid`` (share among rows
    whose generated answer names an option)."""
    for name, t in (("generated", generated), ("scored", scored)):
        V.frame(name, t, columns=("row_id", "parsed"))
    m = generated[["row_id", "parsed"]].merge(scored[["row_id", "parsed"]], on="row_id", suffixes=("_gen", "_logit"))
    if m.empty:
        raise FairVLMError("answer_agreement: the two tables share no row_id")
    same = m["parsed_gen"] == m["parsed_logit"]
    valid = m["parsed_gen"] != "invalid"
    return {"n": int(len(m)), "agree": float(same.mean()), "n_valid": int(valid.sum()),
            "agree_valid": float(same[valid].mean()) if valid.any() else float("nan")}
