"""Fairness and utility metrics for text-to-image retrieval.

Conventions shared by every function here:

- A *ranking* is a sequence of group labels (any hashable: ``"female"``, ``3``), best
  first: ``ranked_groups[0]`` is the group of the top-ranked image.
- A *target* distribution is a mapping ``{group: proportion}`` whose values sum to 1
  (:func:`uniform` builds the usual one). Natural logarithms are used for KL divergence,
  skew and entropy; the NDKL position discount uses ``log2`` as in the literature.
- Bad input (empty ranking, unknown group, ``k`` out of range, mismatched shapes) raises
  :class:`fairvlm.params.ParameterError` or :class:`fairvlm.errors.DataError` with a
  message that says what to fix.

Definitions and sources:

``ndkl``
    Normalized discounted cumulative KL divergence (Geyik et al., KDD 2019), exactly as the
    PyPI package ``reranking`` (``reranking.ndkl``, version 0.3.6) computes it::

        NDKL = (1/Z) * sum_{i=1..n} KL(D_i || D*) / log2(i + 1),   Z = sum_{i=1..n} 1/log2(i + 1)

    where ``D_i`` is the group distribution of the top ``i`` items and ``D*`` the target.
    Smoothing convention (the same as ``reranking``): each KL term is
    ``sum_g p_g * ln((p_g + 1e-12) / (q_g + 1e-12))``, so a group absent from the top ``i``
    contributes ``0`` (``0 * ln(...)``) and a group with target ``0`` but present items
    contributes a large finite number instead of ``inf``. 0 means every prefix matches
    the target. Unlike ``reranking`` (which silently drops items whose group is not a key
    of the target from the distribution but still counts them in ``i``), an item of an
    unknown group raises an error here: it is almost always a labelling bug.
``max_skew``
    ``max_g ln(p_topk(g) / q(g))`` over the groups (Geyik et al. 2019; the MaxSkew@k of
    DEBIASLENS and of the So-B-IT work). With a uniform target ``q(g) = 1/|groups|``.
    0 for a perfectly proportional top-k; ``ln(|groups|)`` when one group fills it.
``normalized_entropy``
    ``H(p) / ln(n_groups)`` of the group distribution of a top-k list (Hamidieh et al.,
    AIES 2024); 1 = uniform over all ``n_groups`` groups, 0 = a single group.
``recall_at_k``
    Fraction of queries with at least one relevant item among their top ``k``; ties in the
    scores are broken by item index (stable sort), so results are deterministic.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

from fairvlm import validate as V
from fairvlm.errors import DataError
from fairvlm.params import ParameterError

#: The smoothing constant of ``reranking.ndkl`` (added to both probabilities in the log).
NDKL_EPSILON = 1e-12


def uniform(groups: Iterable[Hashable]) -> dict:
    """The uniform target ``{g: 1/len(groups)}`` over the distinct ``groups`` (in order)."""
    distinct = list(dict.fromkeys(V.labels("groups", groups)))
    return {g: 1.0 / len(distinct) for g in distinct}


def _check_target(target: Mapping) -> tuple[list, np.ndarray]:
    if not isinstance(target, Mapping) or not target:
        raise ParameterError(
            "target must be a non-empty mapping {group: proportion}, e.g. "
            "fairvlm.metrics.uniform(['female', 'male'])"
        )
    keys = list(target.keys())
    q = np.asarray([float(target[k]) for k in keys], dtype=float)
    if np.any(~np.isfinite(q)) or np.any(q < 0) or abs(q.sum() - 1.0) > 1e-6:
        raise ParameterError(
            f"target proportions must be non-negative and sum to 1; got {dict(target)!r}"
        )
    return keys, q


def _encode(ranked_groups: Sequence, keys: list, what: str) -> np.ndarray:
    index = {k: i for i, k in enumerate(keys)}
    codes = np.empty(len(ranked_groups), dtype=np.int64)
    for pos, g in enumerate(ranked_groups):
        try:
            codes[pos] = index[g]
        except (KeyError, TypeError):
            raise DataError(
                f"{what}: ranked_groups[{pos}] (the item at rank {pos}) has group {g!r}, which is not one of "
                f"{keys!r}; relabel it or add the group to the target/groups"
            ) from None
    return codes


def _as_list(ranked_groups) -> list:
    if isinstance(ranked_groups, np.ndarray):
        return ranked_groups.tolist()
    return list(ranked_groups)


def ndkl(ranked_groups: Sequence, target: Mapping) -> float:
    """Normalized discounted cumulative KL divergence of a ranking against ``target``.

    ``ranked_groups``: the group label of each ranked item, best first (length ``n >= 1``).
    ``target``: ``{group: desired proportion}``, summing to 1 (e.g. :func:`uniform`).
    Returns a float >= 0 (0: every prefix has the target distribution). See the module
    docstring for the exact formula and the ``1e-12`` smoothing shared with
    ``reranking.ndkl``.
    """
    V.sequence("ranked_groups", ranked_groups)
    ranked = _as_list(ranked_groups)
    keys, q = _check_target(target)
    codes = _encode(ranked, keys, "ndkl")
    n = len(codes)
    onehot = np.zeros((n, len(keys)))
    onehot[np.arange(n), codes] = 1.0
    prefix = np.arange(1, n + 1, dtype=float)[:, None]
    p = np.cumsum(onehot, axis=0) / prefix  # (n, groups): distribution of the top i
    kl = np.sum(p * np.log((p + NDKL_EPSILON) / (q + NDKL_EPSILON)), axis=1)
    discount = 1.0 / np.log2(np.arange(1, n + 1) + 1.0)
    return float(np.sum(discount * kl) / np.sum(discount))


def max_skew(
    ranked_groups: Sequence, groups: Iterable[Hashable], k: int, target: Mapping | None = None
) -> float:
    """MaxSkew@k: ``max_g ln(p_topk(g) / q(g))`` over ``groups``.

    ``ranked_groups``: group label per ranked item, best first (at least ``k`` items).
    ``groups``: all groups that could appear (defines the uniform target when ``target``
    is None). Groups absent from the top ``k`` have skew ``-inf`` and never win the max.
    Returns a float in ``[0, ln(1/min q)]`` for a uniform target (>= 0 always holds there).
    """
    V.sequence("ranked_groups", ranked_groups, empty=True)
    ranked = _as_list(ranked_groups)
    groups = list(dict.fromkeys(V.sequence("groups", groups, empty=True)))
    if not groups:
        raise ParameterError("max_skew needs the list of groups")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= len(ranked):
        raise ParameterError(f"k={k!r} must be an integer in [1, {len(ranked)}] (the ranking length)")
    target = uniform(groups) if target is None else target
    keys, q = _check_target(target)
    if set(keys) != set(groups):
        raise ParameterError(f"target keys {keys!r} must be exactly the groups {groups!r}")
    codes = _encode(ranked[: int(k)], keys, "max_skew")
    p = np.bincount(codes, minlength=len(keys)) / float(k)
    present = p > 0
    if np.any(q[present] == 0):
        return math.inf
    return float(np.max(np.log(p[present] / q[present])))


def normalized_entropy(groups_topk: Sequence, n_groups: int) -> float:
    """``H(p) / ln(n_groups)`` of the group distribution of a top-k list.

    ``groups_topk``: the group label of each retrieved item (order irrelevant, at least one).
    ``n_groups``: how many groups exist in the gallery (>= 2); groups that never appear
    count as zero probability. Returns a float in [0, 1].
    """
    V.sequence("groups_topk", groups_topk)
    items = _as_list(groups_topk)
    if isinstance(n_groups, bool) or not isinstance(n_groups, (int, np.integer)) or n_groups < 2:
        raise ParameterError(f"n_groups={n_groups!r} must be an integer >= 2")
    counts = np.asarray(list(Counter(items).values()), dtype=float)
    if len(counts) > n_groups:
        raise DataError(
            f"{len(counts)} distinct groups in the top-k but n_groups={n_groups}; "
            "pass the number of groups in the gallery"
        )
    p = counts / counts.sum()
    h = -float(np.sum(p * np.log(p)))
    return h / math.log(n_groups)


def _matrix(x, name: str) -> np.ndarray:
    """A finite float matrix from numpy / torch / nested lists; NaN or inf is an error."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
    try:
        a = np.asarray(x, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ParameterError(f"{name} must be a numeric matrix: {exc}") from None
    if a.ndim != 2 or a.size == 0:
        raise ParameterError(f"{name} must be a non-empty 2-D matrix; got shape {a.shape}")
    if not np.isfinite(a).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise DataError(f"{name} holds NaN or infinite values (first at {bad}); a ranking "
                        "of them would be arbitrary")
    return a


def _indices(values, name: str) -> np.ndarray:
    """An int64 vector of indices; floats, bools and non-integral values are errors."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    a = np.asarray(values)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise ParameterError(f"{name} must hold integer indices; got dtype {a.dtype} "
                             f"(e.g. {a.ravel()[:3].tolist()!r})")
    return a.astype(np.int64)


def _relevance_matrix(relevant, n_queries: int, n_items: int) -> np.ndarray:
    """A boolean (n_queries, n_items) matrix, or one index / list of indices per query.

    A 0/1 *integer* matrix of the full shape is ambiguous (relevance flags, or two item
    indices per query?) and is refused: pass ``relevant.astype(bool)`` or index lists."""
    if hasattr(relevant, "detach"):
        relevant = relevant.detach().cpu().numpy()
    if relevant is None or isinstance(relevant, (str, bytes, dict)) or np.ndim(relevant) == 0:
        raise ParameterError(f"relevant={V.show(relevant)} is not valid: give a boolean (n_queries, n_items) "
                             "matrix, or one item index (or list of them) per query")
    arr = None
    try:
        arr = np.asarray(relevant)
    except (TypeError, ValueError):  # ragged lists of indices
        arr = None
    if arr is not None and arr.dtype == bool:
        if arr.shape != (n_queries, n_items):
            raise ParameterError(
                f"relevant is a boolean matrix of shape {arr.shape}; expected {(n_queries, n_items)}"
            )
        return arr
    if (arr is not None and arr.dtype != object and arr.shape == (n_queries, n_items)
            and n_items > 1 and np.isin(arr, (0, 1)).all()):
        raise ParameterError(
            f"relevant is a 0/1 matrix of shape {arr.shape}: pass it as booleans "
            "(np.asarray(relevant, dtype=bool)) if it flags relevant items, or as one set of "
            "item indices per query ([{0, 1}, ...]) if it lists them"
        )
    rel = np.zeros((n_queries, n_items), dtype=bool)
    relevant = list(relevant)
    if len(relevant) != n_queries:
        raise ParameterError(f"relevant lists {len(relevant)} queries; scores have {n_queries}")
    for qi, items in enumerate(relevant):
        if isinstance(items, (bool, np.bool_)):
            raise ParameterError(
                f"relevant[{qi}] is a bool; give item indices per query, or a boolean matrix "
                f"of shape {(n_queries, n_items)}")
        items = [items] if np.ndim(items) == 0 else list(items)
        for it in items:
            if isinstance(it, (bool, np.bool_)) or not isinstance(it, (int, np.integer)):
                raise ParameterError(
                    f"relevant item {it!r} of query {qi} is not an integer index (booleans: "
                    f"pass one boolean matrix of shape {(n_queries, n_items)})")
            if not 0 <= int(it) < n_items:
                raise ParameterError(f"relevant item {it} of query {qi} is outside [0, {n_items})")
            rel[qi, int(it)] = True
    return rel


def _ks(ks) -> list:
    out = V.sequence("ks", ks)
    for k in out:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ParameterError(f"ks holds k={k!r}; each k must be a positive integer")
    return out


def recall_at_k(scores, relevant, ks: Iterable[int] = (1, 5, 10)) -> dict[int, float]:
    """Recall@k of a retrieval: the fraction of queries with a relevant item in the top k.

    ``scores``: (n_queries, n_items) similarities, higher is better (numpy or torch).
    ``relevant``: a boolean (n_queries, n_items) matrix, or one index / iterable of indices
    per query (a 0/1 integer matrix is refused as ambiguous). Returns ``{k: recall}``.
    Ties are broken by item index (stable sort). NaN or infinite scores raise
    :class:`~fairvlm.errors.DataError`.
    """
    s = _matrix(scores, "scores")
    ks = _ks(ks)
    rel = _relevance_matrix(relevant, *s.shape)
    if not rel.any(axis=1).all():
        missing = int(np.flatnonzero(~rel.any(axis=1))[0])
        raise DataError(f"query {missing} has no relevant item; recall is undefined for it")
    order = np.argsort(-s, axis=1, kind="stable")
    rel_sorted = np.take_along_axis(rel, order, axis=1)
    first_hit = np.argmax(rel_sorted, axis=1)  # 0-based rank of the best relevant item
    out = {}
    for k in ks:
        out[int(k)] = float(np.mean(first_hit < k))
    return out


def text_image_recall(
    text_emb, image_emb, caption_image: Sequence[int], ks: Iterable[int] = (1, 5, 10)
) -> dict[str, dict[int, float]]:
    """Recall@k in both directions for a caption/image set (COCO / Flickr30K protocol).

    ``text_emb``: (n_captions, d), ``image_emb``: (n_images, d), both L2-normalized so the
    dot product is the cosine similarity. ``caption_image[i]``: index of the image that
    caption ``i`` describes (several captions may share one image).
    Returns ``{"t2i": {k: r}, "i2t": {k: r}}``: text-to-image (each caption finds its image)
    and image-to-text (each image finds any of its captions).
    """
    t = _matrix(text_emb, "text_emb")
    v = _matrix(image_emb, "image_emb")
    ks = _ks(ks)
    cap = _indices(caption_image, "caption_image")
    if t.ndim != 2 or v.ndim != 2 or t.shape[1] != v.shape[1]:
        raise ParameterError(f"text_emb and image_emb must be (n, d) with the same d; got {t.shape}, {v.shape}")
    if cap.shape != (t.shape[0],):
        raise ParameterError(f"caption_image needs one image index per caption ({t.shape[0]})")
    if cap.min(initial=0) < 0 or cap.max(initial=0) >= v.shape[0]:
        raise ParameterError(f"caption_image holds indices outside [0, {v.shape[0]})")
    sim = t @ v.T
    t2i = recall_at_k(sim, cap.tolist(), ks)
    rel_i2t = np.zeros((v.shape[0], t.shape[0]), dtype=bool)
    rel_i2t[cap, np.arange(t.shape[0])] = True
    i2t = recall_at_k(sim.T, rel_i2t, ks)
    return {"t2i": t2i, "i2t": i2t}


def zero_shot_accuracy(image_emb, class_emb, labels: Sequence[int]) -> float:
    """Top-1 zero-shot accuracy: each image takes the class whose text embedding is closest.

    ``image_emb``: (n, d), ``class_emb``: (n_classes, d), both L2-normalized;
    ``labels[i]``: the true class index of image ``i``.
    """
    v = _matrix(image_emb, "image_emb")
    c = _matrix(class_emb, "class_emb")
    y = _indices(labels, "labels")
    if v.ndim != 2 or c.ndim != 2 or v.shape[1] != c.shape[1] or y.shape != (v.shape[0],):
        raise ParameterError(
            f"shapes do not fit: image_emb {v.shape}, class_emb {c.shape}, labels {y.shape} (images, classes, labels)"
        )
    if y.min(initial=0) < 0 or y.max(initial=0) >= c.shape[0]:
        raise ParameterError(f"labels must lie in [0, {c.shape[0]})")
    return float(np.mean(np.argmax(v @ c.T, axis=1) == y))


def _ranked_relevance(scores, relevance, name: str = "relevance") -> np.ndarray:
    """Relevance ``(n_queries, n_items)`` reordered by descending score (ties by item index)."""
    s = _matrix(scores, "scores")
    try:
        rel = np.asarray(relevance, dtype=float)
    except (TypeError, ValueError):
        raise ParameterError(f"{name}={V.show(relevance)} is not valid: it must be a numeric matrix") from None
    if rel.shape != s.shape:
        raise ParameterError(f"{name} has shape {rel.shape}; expected {s.shape} (one value per query and item)")
    if not np.isfinite(rel).all() or (rel < 0).any():
        raise ParameterError(f"{name} values must be finite and >= 0")
    order = np.argsort(-s, axis=1, kind="stable")
    return np.take_along_axis(rel, order, axis=1)


def ndcg_at_k(scores, relevance, k: int | None = None) -> float:
    """Normalized discounted cumulative gain at ``k``, mean over queries (Jarvelin and
    Kekalainen, 2002; the utility column of the Debiasing-CLIP paper's Table 2).

    ``DCG@k = sum_{i=1..k} rel_i / log2(i + 1)`` over the ranking by descending score (ties
    by item index), ``NDCG@k = DCG@k / IDCG@k`` with ``IDCG@k`` the DCG of the ideal
    ordering. ``relevance``: ``(n_queries, n_items)`` graded (>= 0) or boolean. ``k=None``:
    the whole ranking. Queries without any relevant item raise :class:`DataError`.
    """
    ranked = _ranked_relevance(scores, relevance)
    n = ranked.shape[1]
    if k is None:
        k = n
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ParameterError(f"k={k!r} must be an integer in [1, {n}]")
    ideal = -np.sort(-np.asarray(relevance, dtype=float), axis=1)
    if not (ideal[:, 0] > 0).all():
        missing = int(np.flatnonzero(ideal[:, 0] <= 0)[0])
        raise DataError(f"query {missing} has no relevant item; NDCG is undefined for it")
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = ranked[:, :k] @ disc
    idcg = ideal[:, :k] @ disc
    return float(np.mean(dcg / idcg))


def mean_average_precision(scores, relevant, k: int | None = None) -> float:
    """Mean average precision over queries (the mAP column of the Debiasing-CLIP Table 2).

    Per query, ``AP@k = (1 / min(k, R)) * sum_{i<=k, item i relevant} precision@i`` with
    ``R`` the number of relevant items (``k=None``: the whole ranking, so the divisor is
    ``R``). ``relevant``: boolean ``(n_queries, n_items)``. Ties by item index.
    """
    rel = np.asarray(relevant)
    if rel.dtype != bool:
        raise ParameterError("relevant must be a boolean (n_queries, n_items) matrix")
    ranked = _ranked_relevance(scores, rel, "relevant").astype(bool)
    n = ranked.shape[1]
    if k is None:
        k = n
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n:
        raise ParameterError(f"k={k!r} must be an integer in [1, {n}]")
    n_rel = rel.sum(axis=1)
    if not (n_rel > 0).all():
        missing = int(np.flatnonzero(n_rel == 0)[0])
        raise DataError(f"query {missing} has no relevant item; average precision is undefined for it")
    top = ranked[:, :k]
    prec = np.cumsum(top, axis=1) / np.arange(1, k + 1)
    ap = (prec * top).sum(axis=1) / np.minimum(k, n_rel)
    return float(np.mean(ap))
