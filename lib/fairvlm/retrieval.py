"""Text-to-image retrieval for fairness audits: galleries, embeddings, per-query metrics,
and two embedding-space debiasing baselines.

Galleries (:class:`Gallery`: one row of metadata per image plus a lazy image loader) in
the public formats of the datasets the CLIP-heads paper uses:

- :func:`load_fairface`: FairFace (Karkkainen & Joo 2021) either as the original release
  (``fairface_label_{train,val}.csv`` with columns ``file, age, gender, race,
  service_test`` and the image folders ``train/``, ``val/``) or as the Hugging Face
  parquet export (``HuggingFaceM4/FairFace``: ``<config>/<split>-*.parquet`` with an
  ``image`` struct of bytes and class-label integers for ``age, gender, race``; label names
  are read from the file's ``huggingface`` schema metadata when present).
- :func:`load_sispi`: SISPI (Gomez, SIGIR 2025): images named
  ``{profession}_{index}_{gender}_{ethnicity}.{jpg,png}``, either as a folder or as parquet
  files with ``image`` and ``file_name`` columns.
- :func:`load_karpathy`: the Karpathy split of COCO or Flickr30K (``dataset_coco.json`` /
  ``dataset_flickr30k.json``: ``images[*].{filepath, filename, split, sentences[*].raw}``).
- :func:`pairs_gallery`: PAIRS (Fraser & Kiritchenko 2024) through
  :func:`fairvlm.data.load_pairs`.

Embeddings (:func:`embed_images`, :func:`embed_texts`) are L2-normalized, so dot products
are cosine similarities; :func:`embed_images` takes head interventions from
:mod:`fairvlm.clip_heads` and applies them while encoding.

Baselines, both post-hoc on embeddings:

- :func:`clip_clip_dims` (CLIP-clip, Wang et al. EMNLP 2021): keep the ``m`` embedding
  dimensions with the *lowest* mutual information with the protected attribute
  (scikit-learn ``mutual_info_classif`` on image embeddings), drop the rest from both image
  and text embeddings, renormalize.
- :func:`biased_prompts_projection` (Chuang et al. 2023, "Debiasing vision-language models
  via biased prompts"): ``P0 = I - A (A^T A)^+ A^T`` projects out the span of the spurious
  prompt embeddings ``A``; the calibrated projection is ``P = P0 (lambda M + I)^{-1}`` with
  ``M = (1/|S|) sum_{(i,j) in S} (z_i - z_j)(z_i - z_j)^T`` over pairs of prompts that differ
  only in the protected attribute, ``lambda = 1000``. It is applied to text (query)
  embeddings only.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from fairvlm import metrics
from fairvlm.errors import DataError, FairVLMError, unknown
from fairvlm.params import ParameterError

__all__ = [
    "FAIRFACE_NAMES",
    "Gallery",
    "biased_prompts_projection",
    "clip_clip_dims",
    "embed_images",
    "embed_texts",
    "keep_dims",
    "load_fairface",
    "load_karpathy",
    "load_sispi",
    "pairs_gallery",
    "pixel_values",
    "project_texts",
    "query_fairness",
    "word_entropy",
]

#: Class names of the Hugging Face FairFace export (used when a parquet file carries no
#: ``huggingface`` schema metadata).
FAIRFACE_NAMES = {
    "age": ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"],
    "gender": ["Male", "Female"],
    "race": ["East Asian", "Indian", "Black", "White", "Middle Eastern", "Latino_Hispanic", "Southeast Asian"],
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


# ------------------------------------------------------------------------------- gallery
def _open_image(src, what: str) -> Image.Image:
    try:
        if isinstance(src, (bytes, bytearray)):
            im = Image.open(io.BytesIO(src))
        else:
            im = Image.open(src)
        im.load()
    except FileNotFoundError:
        raise DataError(f"{what}: image file {src} is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{what}: cannot decode image ({exc}); re-download the file") from None
    return im.convert("RGB")


@dataclass
class Gallery:
    """Images with demographic metadata for retrieval audits.

    ``meta``: one row per image (attribute columns such as ``gender``, ``race``,
    ``scenario``; a ``path`` column when images live on disk). ``captions``: optional
    frame with columns ``image`` (row index into ``meta``) and ``caption``.
    ``source``: where the data came from (for provenance). Images load lazily as RGB PIL
    images through :meth:`image`.
    """

    name: str
    meta: pd.DataFrame
    loader: Callable[[int], Image.Image] = field(repr=False)
    captions: pd.DataFrame | None = None
    source: str = ""

    def __len__(self) -> int:
        return len(self.meta)

    def image(self, i: int) -> Image.Image:
        if not 0 <= int(i) < len(self):
            raise ParameterError(f"image index {i} is out of range for {self.name} ({len(self)} images)")
        return self.loader(int(i))

    def images(self, indices: Iterable[int] | None = None) -> list[Image.Image]:
        idx = range(len(self)) if indices is None else indices
        return [self.image(i) for i in idx]

    def subset(self, indices: Sequence[int]) -> Gallery:
        """A gallery of the chosen rows (captions pointing at dropped images are dropped)."""
        idx = np.asarray(indices, dtype=np.int64)
        meta = self.meta.iloc[idx].reset_index(drop=True)
        old = self.loader
        caps = None
        if self.captions is not None:
            remap = {int(o): n for n, o in enumerate(idx)}
            keep = self.captions[self.captions["image"].isin(remap)]
            caps = keep.assign(image=keep["image"].map(remap)).reset_index(drop=True)
        return Gallery(self.name, meta, lambda i: old(int(idx[i])), caps, self.source)


def _path_loader(paths: Sequence[str], what: str):
    paths = list(paths)
    return lambda i: _open_image(paths[i], what)


def _limit(df: pd.DataFrame, limit: int | None, seed: int) -> pd.DataFrame:
    if limit is None or limit >= len(df):
        return df.reset_index(drop=True)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ParameterError(f"limit={limit!r} must be a positive integer or None")
    return df.sample(n=limit, random_state=seed).sort_index().reset_index(drop=True)


def _read_parquet(files: list[Path], what: str):
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow comes with pandas' parquet support
        raise FairVLMError(f"reading {what} parquet files needs pyarrow: pip install pyarrow") from None
    tables, names = [], {}
    for f in files:
        try:
            t = pq.read_table(f)
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DataError(f"{f}: not a readable parquet file ({exc}); re-download it") from None
        md = t.schema.metadata or {}
        if b"huggingface" in md:
            try:
                feats = json.loads(md[b"huggingface"])["info"]["features"]
                for col, spec in feats.items():
                    if isinstance(spec, dict) and "names" in spec:
                        names[col] = list(spec["names"])
            except (KeyError, ValueError, TypeError):
                pass
        tables.append(t.to_pandas())
    return pd.concat(tables, ignore_index=True), names


def _image_bytes(cell, what: str):
    if isinstance(cell, dict) and cell.get("bytes") is not None:
        return cell["bytes"]
    if isinstance(cell, (bytes, bytearray)):
        return cell
    raise DataError(f"{what}: an image cell holds no bytes ({type(cell).__name__})")


def load_fairface(root: str | os.PathLike, split: str = "validation", *, limit: int | None = None, seed: int = 0) -> Gallery:
    """FairFace as a :class:`Gallery` with columns ``age, gender, race`` (+ ``path``).

    ``root``: the folder of the original release (holding ``fairface_label_val.csv``) or of
    the Hugging Face parquet export (``*.parquet`` whose name starts with the split, in
    ``root`` or one sub-folder such as ``0.25/``). ``split``: ``"validation"`` or ``"train"``.
    ``limit``: a random subset of that many images (seeded), e.g. the paper's 500 probe
    images. Gender names are lower-cased (``male``/``female``); race names are kept.
    """
    if split not in ("validation", "train"):
        raise unknown("FairFace split", split, ("validation", "train"))
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"FairFace folder {root} does not exist; download FairFace and pass its folder")
    csv = root / ("fairface_label_val.csv" if split == "validation" else "fairface_label_train.csv")
    if csv.is_file():
        try:
            df = pd.read_csv(csv, dtype=str)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise DataError(f"{csv}: cannot read ({exc})") from None
        missing = {"file", "age", "gender", "race"} - set(df.columns)
        if missing:
            raise DataError(f"{csv}: missing columns {sorted(missing)}; expected file, age, gender, race")
        df = _limit(df, limit, seed)
        df["path"] = [str(root / f) for f in df["file"]]
        df["gender"] = df["gender"].str.lower()
        meta = df[["file", "path", "age", "gender", "race"]]
        return Gallery("FairFace", meta, _path_loader(meta["path"], "FairFace"), source=str(csv))
    prefix = "validation" if split == "validation" else "train"
    files = sorted(p for p in [*root.glob("*.parquet"), *root.glob("*/*.parquet")] if p.name.startswith(prefix))
    if not files:
        raise DataError(
            f"{root} holds neither {csv.name} (original FairFace release) nor {prefix}-*.parquet "
            "(Hugging Face export HuggingFaceM4/FairFace); point root at one of them"
        )
    df, names = _read_parquet(files, "FairFace")
    missing = {"image", "age", "gender", "race"} - set(df.columns)
    if missing:
        raise DataError(f"{files[0]}: missing columns {sorted(missing)}")
    df = _limit(df, limit, seed)
    meta = pd.DataFrame(index=range(len(df)))
    for col in ("age", "gender", "race"):
        vocab = names.get(col, FAIRFACE_NAMES[col])
        codes = df[col].to_numpy()
        if codes.dtype.kind in "iu":
            if codes.min() < 0 or codes.max() >= len(vocab):
                raise DataError(f"FairFace {col} codes outside 0..{len(vocab) - 1}")
            meta[col] = [vocab[int(c)] for c in codes]
        else:
            meta[col] = df[col].astype(str).to_numpy()
    meta["gender"] = meta["gender"].str.lower()
    blobs = [_image_bytes(c, "FairFace") for c in df["image"]]
    return Gallery("FairFace", meta, lambda i: _open_image(blobs[i], "FairFace"), source=str(files[0].parent))


_SISPI_RE = re.compile(
    r"^(?P<profession>.+?)_(?P<index>\d+)_(?P<gender>male|female)_(?P<ethnicity>.+)\.(?:jpe?g|png|webp)$",
    re.IGNORECASE,
)


def _parse_sispi(name: str) -> dict:
    m = _SISPI_RE.match(Path(name).name)
    if m is None:
        raise DataError(
            f"SISPI file name {name!r} does not follow profession_index_gender_ethnicity.jpg"
        )
    d = m.groupdict()
    return {"profession": d["profession"].replace("_", " "), "index": int(d["index"]),
            "gender": d["gender"].lower(), "ethnicity": d["ethnicity"].lower()}


def load_sispi(root: str | os.PathLike, *, limit: int | None = None, seed: int = 0) -> Gallery:
    """SISPI as a :class:`Gallery` with columns ``file, profession, index, gender, ethnicity``.

    ``root``: a folder of images named ``{profession}_{index}_{gender}_{ethnicity}.jpg``, or a
    folder of parquet files with ``image`` (struct with bytes) and ``file_name`` columns.
    Professions with underscores are written with spaces (``"fire_fighter"`` ->
    ``"fire fighter"``).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"SISPI folder {root} does not exist; download SISPI and pass its folder")
    images = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if images:
        rows = [{"file": p.name, "path": str(p), **_parse_sispi(p.name)} for p in images]
        meta = _limit(pd.DataFrame(rows), limit, seed)
        return Gallery("SISPI", meta, _path_loader(meta["path"], "SISPI"), source=str(root))
    files = sorted([*root.glob("*.parquet"), *root.glob("*/*.parquet")])
    if not files:
        raise DataError(f"{root} holds no SISPI images (*.jpg/*.png) and no parquet files")
    df, _ = _read_parquet(files, "SISPI")
    if not {"image", "file_name"} <= set(df.columns):
        raise DataError(f"{files[0]}: SISPI parquet needs the columns image and file_name")
    df = _limit(df, limit, seed)
    meta = pd.DataFrame([{"file": f, **_parse_sispi(f)} for f in df["file_name"]])
    blobs = [_image_bytes(c, "SISPI") for c in df["image"]]
    return Gallery("SISPI", meta, lambda i: _open_image(blobs[i], "SISPI"), source=str(files[0].parent))


def load_karpathy(json_path: str | os.PathLike, image_root: str | os.PathLike, split: str = "test", *, limit: int | None = None) -> Gallery:
    """COCO / Flickr30K Karpathy split as a gallery with captions.

    ``json_path``: ``dataset_coco.json`` or ``dataset_flickr30k.json``; ``image_root``: the
    folder that holds ``<filepath>/<filename>`` (COCO: the folder with ``val2014/``; Flickr30K
    entries have no filepath, so the images folder itself). ``split``: ``train``,
    ``restval``, ``val`` or ``test``. ``limit``: the first ``limit`` images of the split.
    ``captions`` has one row per sentence (``image``, ``caption``).
    """
    json_path, image_root = Path(json_path), Path(image_root)
    try:
        data = json.loads(json_path.read_text(encoding="utf-8"))
        entries = data["images"]
    except FileNotFoundError:
        raise DataError(f"Karpathy split file {json_path} is missing") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{json_path}: not a Karpathy split file ({exc})") from None
    splits = sorted({e.get("split") for e in entries})
    if split not in splits:
        raise unknown("Karpathy split", split, splits)
    rows, caps = [], []
    for e in entries:
        if e.get("split") != split:
            continue
        if limit is not None and len(rows) >= limit:
            break
        try:
            rel = Path(e.get("filepath", "")) / e["filename"]
            sentences = [s["raw"].strip() for s in e["sentences"]]
        except (KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{json_path}: malformed image entry ({exc})") from None
        for s in sentences:
            caps.append((len(rows), s))
        rows.append({"file": str(rel), "path": str(image_root / rel), "id": e.get("cocoid", e.get("imgid"))})
    meta = pd.DataFrame(rows)
    captions = pd.DataFrame(caps, columns=["image", "caption"])
    name = "COCO" if "coco" in json_path.name.lower() else "Flickr30K" if "flickr" in json_path.name.lower() else json_path.stem
    return Gallery(name, meta, _path_loader(meta["path"], name), captions, source=str(json_path))


def pairs_gallery(root=None, *, mapped_only: bool = False) -> Gallery:
    """PAIRS as a gallery (columns ``section, scenario, label, gender, race, path``)."""
    from fairvlm.data import load_pairs

    meta = load_pairs(root, mapped_only=mapped_only).reset_index(drop=True)
    return Gallery("PAIRS", meta, _path_loader(meta["path"].tolist(), "PAIRS"), source="PAIRS (katiefraser/PAIRS@507075a)")


# ---------------------------------------------------------------------------- embeddings
def _unwrap(model):
    """(torch model, tokenizer or None, image processor or None) from a model or LoadedModel."""
    if isinstance(model, torch.nn.Module):
        return model, None, None
    inner = getattr(model, "model", None)
    if not isinstance(inner, torch.nn.Module):
        raise FairVLMError(f"expected a CLIP-style model or a LoadedModel, got {type(model).__name__}")
    proc = getattr(model, "processor", None)
    return inner, getattr(model, "tokenizer", None), getattr(proc, "image_processor", proc)


def _features(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    for key in ("image_embeds", "text_embeds", "pooler_output"):
        val = getattr(out, key, None)
        if val is not None:
            return val
    return out[0]


def pixel_values(processor, images: Sequence[Image.Image], *, batch_size: int = 64) -> torch.Tensor:
    """Preprocess PIL images with a CLIP image processor (or a processor holding one)."""
    if not images:
        raise ParameterError("no images to preprocess")
    proc = processor
    if not isinstance(proc, torch.nn.Module) and hasattr(proc, "processor") and hasattr(proc, "model"):
        proc = proc.processor  # a LoadedModel
    proc = getattr(proc, "image_processor", proc)
    out = []
    for s in range(0, len(images), batch_size):
        chunk = [im.convert("RGB") for im in images[s : s + batch_size]]
        out.append(proc(images=chunk, return_tensors="pt")["pixel_values"])
    return torch.cat(out)


@torch.no_grad()
def embed_images(model, pixels: torch.Tensor, *, edits: Sequence = (), batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """L2-normalized image embeddings (N, d) of a CLIP-style model, float32 on CPU.

    ``pixels``: (N, 3, S, S) from :func:`pixel_values`. ``edits``: head interventions
    (:class:`fairvlm.clip_heads.HeadIntervention`) applied while encoding. Uses
    ``get_image_features`` (projection included) when the model has it, else the pooled
    output of a bare vision model.
    """
    from fairvlm.clip_heads import intervene

    net, _, _ = _unwrap(model)
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4 or pixels.shape[0] == 0:
        raise ParameterError("pixels must be a non-empty (N, 3, S, S) tensor from pixel_values()")
    p = next(net.parameters())
    starts = range(0, pixels.shape[0], batch_size)
    if progress:
        from fairvlm.progress import bar

        starts = bar(starts, desc="encoding images", unit="batch")
    out = []
    with intervene(net, *edits):
        for s in starts:
            pv = pixels[s : s + batch_size].to(device=p.device, dtype=p.dtype)
            if hasattr(net, "get_image_features"):
                emb = _features(net.get_image_features(pixel_values=pv))
            else:
                emb = _features(net(pixel_values=pv))
            out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
    return torch.cat(out)


@torch.no_grad()
def embed_texts(model, texts: Sequence[str], *, tokenizer=None, batch_size: int = 128) -> torch.Tensor:
    """L2-normalized text embeddings (N, d) from ``get_text_features``, float32 on CPU."""
    net, tok, _ = _unwrap(model)
    tok = tokenizer or tok
    if tok is None:
        raise ParameterError("embed_texts needs a tokenizer (pass tokenizer= or a LoadedModel)")
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise ParameterError("no texts to embed")
    p = next(net.parameters())
    max_len = getattr(tok, "model_max_length", 77)
    max_len = 77 if not max_len or max_len > 10_000 else max_len
    out = []
    for s in range(0, len(texts), batch_size):
        enc = tok(texts[s : s + batch_size], padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        enc = {k: v.to(p.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        emb = _features(net.get_text_features(**enc))
        out.append(torch.nn.functional.normalize(emb.float(), dim=-1).cpu())
    return torch.cat(out)


# ----------------------------------------------------------------------- fairness tables
def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def query_fairness(
    sim,
    groups: Sequence,
    *,
    k: int,
    queries: Sequence[str] | None = None,
    candidates=None,
    target: Mapping | None = None,
) -> pd.DataFrame:
    """NDKL and MaxSkew@k per query.

    ``sim``: (Q, N) query-image similarities; ``groups``: (N,) the group of each image.
    ``candidates``: optional boolean (Q, N) mask; each query then ranks only its candidates
    (the SISPI protocol ranks the images of the queried profession). ``target``: the
    desired distribution (default: uniform over the groups of the whole gallery). NDKL is
    computed over the full candidate ranking, MaxSkew over its top ``k``.
    Returns columns ``query, n_ranked, ndkl, max_skew``.
    """
    s = _np(sim).astype(float)
    g = np.asarray([str(x) for x in groups], dtype=object)
    if s.ndim != 2 or s.shape[1] != len(g):
        raise ParameterError(f"sim must be (Q, {len(g)}); got {s.shape}")
    all_groups = sorted(set(g.tolist()))
    target = metrics.uniform(all_groups) if target is None else {str(a): b for a, b in target.items()}
    cand = np.ones_like(s, dtype=bool) if candidates is None else _np(candidates).astype(bool)
    if cand.shape != s.shape:
        raise ParameterError(f"candidates must have the shape of sim {s.shape}; got {cand.shape}")
    names = [str(i) for i in range(s.shape[0])] if queries is None else [str(q) for q in queries]
    if len(names) != s.shape[0]:
        raise ParameterError(f"{len(names)} query names for {s.shape[0]} queries")
    rows = []
    for qi in range(s.shape[0]):
        idx = np.flatnonzero(cand[qi])
        if len(idx) < k:
            raise DataError(f"query {names[qi]!r} has {len(idx)} candidates, fewer than k={k}")
        order = idx[np.argsort(-s[qi, idx], kind="stable")]
        ranked = g[order].tolist()
        rows.append({
            "query": names[qi], "n_ranked": len(order),
            "ndkl": metrics.ndkl(ranked, target),
            "max_skew": metrics.max_skew(ranked, list(target), k, target),
        })
    return pd.DataFrame(rows)


def word_entropy(sim, attributes: Mapping[str, Sequence], *, k: int = 100, queries: Sequence[str] | None = None) -> pd.DataFrame:
    """Normalized entropy of each attribute among each query's top ``k`` images.

    ``sim``: (Q, N); ``attributes``: ``{name: (N,) labels}`` (e.g. gender and race);
    the number of groups of an attribute is the number of distinct labels in the gallery.
    Returns columns ``query, attribute, entropy``.
    """
    s = _np(sim).astype(float)
    if s.ndim != 2:
        raise ParameterError(f"sim must be 2-D; got {s.shape}")
    if not 1 <= k <= s.shape[1]:
        raise ParameterError(f"k={k} must lie in [1, {s.shape[1]}] (the gallery size)")
    names = [str(i) for i in range(s.shape[0])] if queries is None else [str(q) for q in queries]
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    rows = []
    for attr, labels in attributes.items():
        lab = np.asarray([str(x) for x in labels], dtype=object)
        if len(lab) != s.shape[1]:
            raise ParameterError(f"attribute {attr!r} has {len(lab)} labels for {s.shape[1]} images")
        n_groups = len(set(lab.tolist()))
        for qi in range(s.shape[0]):
            rows.append({"query": names[qi], "attribute": attr,
                         "entropy": metrics.normalized_entropy(lab[top[qi]].tolist(), n_groups)})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ baselines
def clip_clip_dims(image_emb, labels: Sequence, m: int, *, seed: int = 0) -> np.ndarray:
    """CLIP-clip: indices (sorted) of the ``m`` dims with the lowest mutual information with
    ``labels``, estimated by ``sklearn.feature_selection.mutual_info_classif`` (k-NN
    estimator, ``random_state=seed``) on the (N, d) image embeddings."""
    from sklearn.feature_selection import mutual_info_classif

    x = _np(image_emb).astype(float)
    y = np.asarray([str(v) for v in labels])
    if x.ndim != 2 or len(y) != x.shape[0]:
        raise ParameterError(f"image_emb must be (N, d) with N labels; got {x.shape} and {len(y)} labels")
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= x.shape[1]:
        raise ParameterError(f"m={m!r} must be an integer in [1, {x.shape[1]}]")
    if len(set(y.tolist())) < 2:
        raise DataError("CLIP-clip needs labels with at least two groups")
    mi = mutual_info_classif(x, y, discrete_features=False, random_state=seed)
    keep = np.argsort(mi, kind="stable")[: int(m)]
    return np.sort(keep)


def keep_dims(emb, dims: np.ndarray) -> torch.Tensor:
    """Keep only ``dims`` of (N, d) embeddings and renormalize (CLIP-clip's clipped space)."""
    e = torch.as_tensor(_np(emb), dtype=torch.float32)
    return torch.nn.functional.normalize(e[:, torch.as_tensor(np.asarray(dims), dtype=torch.long)], dim=-1)


def biased_prompts_projection(spurious, pairs_a, pairs_b, *, lam: float = 1000.0) -> torch.Tensor:
    """The calibrated projection ``P = P0 (lam M + I)^{-1}`` of Chuang et al. (2023), (d, d).

    ``spurious``: (S, d) embeddings of prompts naming only the protected attribute (e.g.
    "a photo of a man", "a photo of a woman"); ``pairs_a``/``pairs_b``: (P, d) embeddings of
    prompt pairs that differ only in that attribute ("a photo of a male doctor" / "... female
    doctor"). Apply with :func:`project_texts`.
    """
    a = torch.as_tensor(_np(spurious), dtype=torch.float64)
    za = torch.as_tensor(_np(pairs_a), dtype=torch.float64)
    zb = torch.as_tensor(_np(pairs_b), dtype=torch.float64)
    if a.ndim != 2 or za.shape != zb.shape or za.ndim != 2 or za.shape[1] != a.shape[1] or za.shape[0] == 0:
        raise ParameterError(
            f"spurious must be (S, d) and both pair sets (P, d) with the same d; got "
            f"{tuple(a.shape)}, {tuple(za.shape)}, {tuple(zb.shape)}"
        )
    if not lam >= 0:
        raise ParameterError(f"lam={lam!r} must be >= 0")
    d = a.shape[1]
    v = a.T  # (d, S)
    p0 = torch.eye(d, dtype=torch.float64) - v @ torch.linalg.pinv(v.T @ v) @ v.T
    diff = za - zb
    m = diff.T @ diff / diff.shape[0]
    p = p0 @ torch.linalg.inv(lam * m + torch.eye(d, dtype=torch.float64))
    return p.float()


def project_texts(text_emb, projection: torch.Tensor) -> torch.Tensor:
    """Apply a (d, d) projection to (N, d) text embeddings (``z -> P z``) and renormalize."""
    t = torch.as_tensor(_np(text_emb), dtype=torch.float32)
    if projection.shape != (t.shape[1], t.shape[1]):
        raise ParameterError(f"projection must be ({t.shape[1]}, {t.shape[1]}); got {tuple(projection.shape)}")
    return torch.nn.functional.normalize(t @ projection.T, dim=-1)


# ------------------------------------------------------------------------------ the head audit (chapter 07)
GENDER_NAMES = {"man": "male", "woman": "female", "male": "male", "female": "female"}
#: the two prompt styles of a So-B-IT word query (Table 4): the bare word and a template
WORD_STYLES = {"word": "{w}", "template": "a photo of {a} {w} person"}


def normalize_groups(meta: pd.DataFrame) -> pd.DataFrame:
    """``meta`` with ``gender`` as ``male``/``female`` (the testbed's ``man``/``woman``
    renamed), ``race`` lower case and ``group = gender|race``."""
    out = meta.copy()
    out["gender"] = [GENDER_NAMES.get(str(g).lower(), str(g).lower()) for g in out["gender"]]
    out["race"] = [str(r).lower() for r in out["race"]]
    out["group"] = out["gender"] + "|" + out["race"]
    return out


def word_prompt(style: str, word: str) -> str:
    """A So-B-IT word as a query in one of :data:`WORD_STYLES`."""
    if style not in WORD_STYLES:
        raise unknown("word prompt style", style, WORD_STYLES)
    a = "an" if word[:1].lower() in "aeiou" else "a"
    return WORD_STYLES[style].format(w=word, a=a)


@dataclass
class AuditData:
    """Everything chapter 07 encodes and ranks, for one profile.

    ``galleries``: ``{name: {"meta", "pixels", "image"}}`` (evaluation images);
    ``probe_meta`` / ``probe_pixels`` / ``probe_sets``: the probe set (disjoint from every
    gallery) and its counterfactual-set ids for grouped splits (or None);
    ``scenario_suites``: ranking audits, each ``{"name", "gallery", "key_col", "queries"}``
    with ``queries`` columns ``key, prompt, role``; ``recall_suite`` / ``zeroshot_suite``:
    utility (or None); ``word_gallery``: where So-B-IT words are ranked; ``planted_scen`` /
    ``planted_words``: the testbed's ground truth (None on real data); ``description``:
    one line for captions.
    """

    galleries: dict
    probe_meta: pd.DataFrame
    probe_pixels: torch.Tensor
    probe_sets: np.ndarray | None
    scenario_suites: list
    recall_suite: dict | None
    zeroshot_suite: dict | None
    word_gallery: str
    planted_scen: pd.DataFrame | None = None
    planted_words: pd.DataFrame | None = None
    description: str = ""


def testbed_audit_data(loaded, n_probe_scenes: int, n_gallery_scenes: int, *, seed: int = 0) -> AuditData:
    """The testbed audit: probe set and gallery are counterfactual quadruplets of held-out
    scenes (disjoint seeds), one query per scenario ("a photo of a/an <role>"), one held-out
    caption per gallery image for Recall@K (relevant: same scenario, and the same gender /
    race where the caption names them) and zero-shot scenario classification."""
    from fairvlm.testbed import captions as tb_captions
    from fairvlm.testbed import world
    from fairvlm.testbed.scenarios import SCENARIOS
    from fairvlm.testbed import world_spec

    spec = world_spec()
    size = world.DEFAULT_SIZE
    probe_rows = world.gallery(n_probe_scenes, split="heldout", start=500)
    probe_pixels = pixel_values(loaded, world.render_rows(probe_rows, size))
    probe_sets = (probe_rows["scenario"] + "#" + probe_rows["scene_seed"].astype(str)).to_numpy()
    gal_rows = world.gallery(n_gallery_scenes, split="heldout", start=0)
    gal_images = world.render_rows(gal_rows, size)
    gal_meta = normalize_groups(gal_rows)
    keys = list(dict.fromkeys(gal_meta["scenario"]))
    roles = [SCENARIOS[k].role for k in keys]
    queries = pd.DataFrame({"key": keys, "prompt": [f"a photo of {tb_captions.with_article(r)}" for r in roles],
                            "role": roles})
    rng = np.random.default_rng(seed)
    caps = [tb_captions.caption(spec, r.scenario, {"male": "man", "female": "woman"}[r.gender], r.race, rng)
            for r in gal_meta.itertuples()]
    scen, gen, rac = (gal_meta[c].to_numpy() for c in ("scenario", "gender", "race"))
    rel = np.zeros((len(caps), len(gal_meta)), dtype=bool)
    for i, c in enumerate(caps):
        named = tb_captions.mentions(c)
        ok = scen == scen[i]
        if named["gender"]:
            ok &= gen == gen[i]
        if named["race"]:
            ok &= rac == rac[i]
        rel[i] = ok
    return AuditData(
        galleries={"testbed": {"meta": gal_meta, "pixels": pixel_values(loaded, gal_images),
                               "image": gal_images.__getitem__}},
        probe_meta=normalize_groups(probe_rows), probe_pixels=probe_pixels, probe_sets=probe_sets,
        scenario_suites=[{"name": "testbed scenarios", "gallery": "testbed", "key_col": "scenario",
                          "queries": queries}],
        recall_suite={"gallery": "testbed", "captions": caps, "relevant": rel,
                      "relevance": "same scenario, and the same gender/race when the caption names them"},
        zeroshot_suite={"gallery": "testbed", "key_col": "scenario", "classes": keys,
                        "prompts": tb_captions.zero_shot_prompts(keys)},
        word_gallery="testbed",
        planted_scen=spec.share_table()[["scenario", "p_man", "p_black", "gender_skew", "race_skew", "note"]],
        planted_words=spec.word_table()[["word", "category", "p_man", "p_black", "gender_skew", "race_skew", "note"]],
        description=(f"testbed world (synthetic): probe set {len(probe_rows)} images, gallery {len(gal_meta)} "
                     "images, held-out scenes, 4 variants each"))


def paper_audit_data(loaded, *, pairs_dir=None, fairface_dir: str = "", fairface_limit: int | None = None,
                     sispi_dir: str = "", coco_json: str = "", coco_images: str = "", seed: int = 0) -> AuditData:
    """The real-data audit of the paper profile.

    Probes, prototypes and CLIP-clip are fitted on FairFace train (500 images) when
    ``fairface_dir`` is given. Without FairFace they are fitted on half of the PAIRS
    scenarios (even positions in sorted order) and every PAIRS number is measured on the
    other half, so nothing is fitted on the gallery it is evaluated on.
    """
    pairs = pairs_gallery(pairs_dir or None, mapped_only=True)
    pmeta = normalize_groups(pairs.meta)
    pix = pixel_values(loaded, pairs.images())
    if fairface_dir:
        probe_g = load_fairface(fairface_dir, "train", limit=500, seed=seed)
        probe_meta, probe_pixels, probe_sets = normalize_groups(probe_g.meta), pixel_values(loaded, probe_g.images()), None
        eval_mask = np.ones(len(pmeta), dtype=bool)
    else:
        scen = sorted(set(pmeta["scenario"]))
        if len(scen) < 4:
            raise DataError(f"splitting PAIRS by scenario needs at least 4 scenarios, found {len(scen)}; "
                            "set FAIRFACE_DIR to probe on FairFace instead")
        fit = set(scen[0::2])
        eval_mask = ~pmeta["scenario"].isin(fit).to_numpy()
        probe_meta = pmeta[~eval_mask].reset_index(drop=True)
        probe_pixels = pix[torch.from_numpy(~eval_mask)]
        probe_sets = probe_meta["scenario"].to_numpy()
    idx = np.flatnonzero(eval_mask)
    gmeta = pmeta[eval_mask].reset_index(drop=True)
    galleries = {"pairs": {"meta": gmeta, "pixels": pix[torch.from_numpy(idx)],
                           "image": lambda i, idx=idx: pairs.image(int(idx[i]))}}
    labels = list(dict.fromkeys(gmeta["label"]))
    suites = [{"name": "PAIRS labels", "gallery": "pairs", "key_col": "label",
               "queries": pd.DataFrame({"key": labels, "prompt": [f"a photo of a {x}" for x in labels],
                                        "role": labels})}]
    zeroshot = {"gallery": "pairs", "key_col": "label", "classes": labels,
                "prompts": [f"a photo of a {x}" for x in labels]}
    word_gallery = "pairs"
    if fairface_dir:
        ff_val = load_fairface(fairface_dir, "validation", limit=fairface_limit or None, seed=seed)
        galleries["fairface"] = {"meta": normalize_groups(ff_val.meta),
                                 "pixels": pixel_values(loaded, ff_val.images()), "image": ff_val.image}
        word_gallery = "fairface"
    if sispi_dir:
        sispi = load_sispi(sispi_dir)
        sm = normalize_groups(sispi.meta.rename(columns={"ethnicity": "race"}))
        galleries["sispi"] = {"meta": sm, "pixels": pixel_values(loaded, sispi.images()), "image": sispi.image}
        profs = list(dict.fromkeys(sm["profession"]))
        suites.append({"name": "SISPI professions", "gallery": "sispi", "key_col": "profession",
                       "queries": pd.DataFrame({"key": profs, "role": profs, "prompt": [
                           f"a photo of {'an' if p[0] in 'aeiou' else 'a'} {p}" for p in profs]})})
    recall = None
    if coco_json:
        coco = load_karpathy(coco_json, coco_images, "test")
        galleries["coco"] = {"meta": coco.meta.assign(gender="na", race="na", group="na"),
                             "pixels": pixel_values(loaded, coco.images()), "image": coco.image}
        rel = np.zeros((len(coco.captions), len(coco)), dtype=bool)
        rel[np.arange(len(coco.captions)), coco.captions["image"].to_numpy()] = True
        recall = {"gallery": "coco", "captions": coco.captions["caption"].tolist(), "relevant": rel,
                  "relevance": "the captioned image (Karpathy test split)"}
    desc = ("PAIRS (mapped labels" + ("" if fairface_dir else ", scenarios split: probes on half, audit on the other")
            + ")" + (", FairFace" if fairface_dir else "") + (", SISPI" if sispi_dir else "")
            + (", COCO Karpathy test" if coco_json else ""))
    return AuditData(galleries, probe_meta, probe_pixels, probe_sets, suites, recall, zeroshot, word_gallery,
                     description=desc)


def word_queries(planted_words: pd.DataFrame | None = None, per_category: int | None = None) -> pd.DataFrame:
    """So-B-IT words (``category, word``), ``per_category`` of each at most; the testbed's
    planted words join their category. Without the taxonomy file the planted words stand in
    (and the frame's ``attrs["note"]`` says so); without either a :class:`DataError`."""
    from fairvlm.data import load_sobit

    note = ""
    try:
        sobit = load_sobit()
    except DataError as exc:
        if planted_words is None:
            raise
        note = f"So-B-IT taxonomy not found, so only the testbed's planted words are used as word queries. {exc}"
        sobit = planted_words[["category", "word"]].iloc[:0]
    if per_category:
        sobit = sobit.groupby("category", sort=False).head(per_category)
    if planted_words is not None:
        extra = planted_words[~planted_words["word"].isin(sobit["word"])][["category", "word"]]
        sobit = pd.concat([sobit, extra], ignore_index=True)
    out = sobit.drop_duplicates("word").reset_index(drop=True)
    out.attrs["note"] = note
    return out


def audit_texts(data: AuditData, words: pd.DataFrame) -> list[str]:
    """Every text any suite of ``data`` needs (scenario queries, word prompts in both
    styles, captions, zero-shot prompts), each once, in a fixed order."""
    out = []
    for s in data.scenario_suites:
        out += s["queries"]["prompt"].tolist()
    out += [word_prompt(st, w) for st in WORD_STYLES for w in words["word"]]
    if data.recall_suite:
        out += data.recall_suite["captions"]
    if data.zeroshot_suite:
        out += data.zeroshot_suite["prompts"]
    return list(dict.fromkeys(out))


def topk_max_skew(top: np.ndarray, groups: Sequence) -> np.ndarray:
    """MaxSkew@k of every query from its top-``k`` image indices ``top`` (Q, k), against the
    uniform target over the groups of the whole gallery (``groups``: one label per image):
    what :func:`query_fairness` reports as ``max_skew`` without candidates, in one
    vectorised pass (:func:`fairvlm.metrics.max_skew`)."""
    g = np.asarray([str(x) for x in groups], dtype=object)
    keys = sorted(set(g.tolist()))
    codes = np.searchsorted(np.asarray(keys, dtype=object), g)
    top = np.asarray(top)
    k = top.shape[1]
    counts = np.stack([(codes[top] == j).sum(axis=1) for j in range(len(keys))], axis=1)
    p = counts / float(k)
    with np.errstate(divide="ignore"):
        sk = np.where(p > 0, np.log(p * len(keys)), -np.inf)
    return sk.max(axis=1)


def first_hit_rank(sim, relevant) -> np.ndarray:
    """0-based rank of each query's best relevant item, ties broken by item index (a
    stable sort's order), without sorting: the items scored above it plus the equal ones
    before it. ``sim``: (Q, N); ``relevant``: boolean (Q, N), at least one per row.
    ``rank < k`` is hit@k, its mean Recall@k (:func:`fairvlm.metrics.recall_at_k`)."""
    s = _np(sim).astype(np.float64)
    rel = np.asarray(relevant, dtype=bool)
    if s.shape != rel.shape or s.ndim != 2:
        raise ParameterError(f"sim {s.shape} and relevant {rel.shape} must be the same (Q, N) shape")
    if not rel.any(axis=1).all():
        raise DataError(f"query {int(np.flatnonzero(~rel.any(axis=1))[0])} has no relevant item")
    best = np.where(rel, s, -np.inf).max(axis=1, keepdims=True)
    first = np.argmax(rel & (s == best), axis=1)[:, None]       # the lowest-index relevant item at that score
    before = np.arange(s.shape[1])[None, :] < first
    return (s > best).sum(axis=1) + ((s == best) & before).sum(axis=1)


def score_variant(data: AuditData, words: pd.DataFrame, image_emb: Mapping, text_emb, text_index: Mapping,
                  *, k_entropy: int, text_rows: dict | None = None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Fairness and utility of one variant (its image embeddings per gallery and its text
    embeddings). Returns ``(per_query, per_word, utility)``:

    - per scenario query: NDKL over the query's own scenario images (SISPI protocol),
      MaxSkew@k over the whole gallery (k = images per scenario), NDCG@k and AP (relevant:
      the scenario's images), the top-k share of men / Black people;
    - per So-B-IT word and prompt style: normalized entropy of gender and race in the top
      ``k_entropy`` and the top-k shares;
    - utility: Recall@1/5/10 both ways and zero-shot accuracy (when the suites exist).

    ``text_rows``: a dict shared across calls (:func:`score_variants` passes one) in which
    the rows gathered from ``text_emb`` are kept for the next variant with the same texts.
    """
    memo = {} if text_rows is None else text_rows   # variants that share one text side gather its rows once

    def texts(items):
        items = tuple(items)
        hit = memo.get((id(text_emb), items))
        if hit is None or hit[0] is not text_emb:
            hit = (text_emb, text_emb[[text_index[t] for t in items]])
            memo[(id(text_emb), items)] = hit
        return hit[1]

    scen_rows, word_rows, util = [], [], {}
    for suite in data.scenario_suites:
        meta = data.galleries[suite["gallery"]]["meta"]
        sim = (texts(suite["queries"]["prompt"]) @ image_emb[suite["gallery"]].T).numpy()
        keys_arr = meta[suite["key_col"]].to_numpy()
        cand = np.stack([keys_arr == k for k in suite["queries"]["key"]])
        k_skew = int(cand.sum(axis=1).min())
        per_attr = {}
        top = np.argsort(-sim, axis=1, kind="stable")[:, :k_skew]
        for attr in ("gender", "race"):
            t_nd = query_fairness(sim, meta[attr], k=min(k_skew, 4), candidates=cand, queries=suite["queries"]["key"])
            per_attr[attr] = (t_nd["ndkl"].to_numpy(), topk_max_skew(top, meta[attr]))
        ndcg = [metrics.ndcg_at_k(sim[i:i + 1], cand[i:i + 1], k_skew) for i in range(len(sim))]
        ap = [metrics.mean_average_precision(sim[i:i + 1], cand[i:i + 1]) for i in range(len(sim))]
        scen_rows.append(pd.DataFrame({
            "suite": suite["name"], "query": suite["queries"]["key"],
            "ndkl_gender": per_attr["gender"][0], "ndkl_race": per_attr["race"][0],
            "maxskew_gender": per_attr["gender"][1], "maxskew_race": per_attr["race"][1],
            "ndcg": ndcg, "ap": ap,
            "topk_male_share": (meta["gender"].to_numpy()[top] == "male").mean(axis=1),
            "topk_black_share": (meta["race"].to_numpy()[top] == "black").mean(axis=1), "k": k_skew}))
    wmeta = data.galleries[data.word_gallery]["meta"]
    k_ent = min(k_entropy, len(wmeta))
    for style in WORD_STYLES:
        sim = (texts([word_prompt(style, w) for w in words["word"]]) @ image_emb[data.word_gallery].T).numpy()
        ent = word_entropy(sim, {"gender": wmeta["gender"], "race": wmeta["race"]}, k=k_ent, queries=words["word"])
        ent = ent.pivot(index="query", columns="attribute", values="entropy").reindex(words["word"])
        top = np.argsort(-sim, axis=1, kind="stable")[:, :k_ent]
        word_rows.append(pd.DataFrame({
            "style": style, "word": words["word"].to_numpy(), "category": words["category"].to_numpy(),
            "entropy_gender": ent["gender"].to_numpy(), "entropy_race": ent["race"].to_numpy(),
            "topk_male_share": (wmeta["gender"].to_numpy()[top] == "male").mean(axis=1),
            "topk_black_share": (wmeta["race"].to_numpy()[top] == "black").mean(axis=1)}))
    if data.recall_suite:
        rs = data.recall_suite
        sim = (texts(rs["captions"]) @ image_emb[rs["gallery"]].T).numpy()
        rel = np.asarray(rs["relevant"], dtype=bool)
        f_t2i, f_i2t = first_hit_rank(sim, rel), first_hit_rank(sim.T, rel.T)
        util.update({f"t2i_R@{k}": float(np.mean(f_t2i < k)) for k in (1, 5, 10)})
        util.update({f"i2t_R@{k}": float(np.mean(f_i2t < k)) for k in (1, 5, 10)})
        # per caption: 1 when a relevant image is in the top 5 (the unit of utility intervals)
        util["_t2i_hit@5"] = (f_t2i < 5).astype(float)
    if data.zeroshot_suite:
        zs = data.zeroshot_suite
        zmeta = data.galleries[zs["gallery"]]["meta"]
        cls_index = {c: i for i, c in enumerate(zs["classes"])}
        y = [cls_index[c] for c in zmeta[zs["key_col"]]]
        util["zero_shot_acc"] = metrics.zero_shot_accuracy(image_emb[zs["gallery"]], texts(zs["prompts"]), y)
    return pd.concat(scen_rows, ignore_index=True), pd.concat(word_rows, ignore_index=True), util


def random_ranking_floor(data: AuditData, *, n: int = 200, seed: int = 0) -> pd.DataFrame:
    """NDKL and MaxSkew@k of *random* rankings of the same galleries, per suite and
    attribute: ``floor`` (mean over ``n`` draws of the mean over queries) with its 2.5 /
    97.5 percentiles. A finite list cannot be perfectly fair at every prefix, so this is
    what "no bias" looks like for these lists; an intervention cannot meaningfully go
    below it."""
    rng = np.random.default_rng(seed)
    rows = []
    for suite in data.scenario_suites:
        meta = data.galleries[suite["gallery"]]["meta"]
        keys_arr = meta[suite["key_col"]].to_numpy()
        cand = np.stack([keys_arr == k for k in suite["queries"]["key"]])
        k_skew = int(cand.sum(axis=1).min())
        for attr in ("gender", "race"):
            nd, sk = [], []
            for _ in range(n):
                sim = rng.random(cand.shape)
                nd.append(query_fairness(sim, meta[attr], k=min(k_skew, 4), candidates=cand)["ndkl"].mean())
                sk.append(query_fairness(sim, meta[attr], k=k_skew)["max_skew"].mean())
            for metric, vals in (("ndkl", nd), ("maxskew", sk)):
                rows.append({"suite": suite["name"], "attribute": attr, "metric": metric,
                             "floor": float(np.mean(vals)), "lo": float(np.percentile(vals, 2.5)),
                             "hi": float(np.percentile(vals, 97.5)), "n_draws": n})
    return pd.DataFrame(rows)


def time_edits(model, pixel_values: torch.Tensor, edits: Sequence, *,
               repeats: int = 7, batch_size: int = 64) -> dict:
    """Wall-clock cost of encoding with ``edits``, with an A/A noise check
    (:func:`fairvlm.timing.time_ab`: plain, edited and plain again, interleaved ``repeats``
    times). Returns its dict with ``median_edited_s`` beside ``median_plain_s``: ``ratio`` =
    median(edited) / median(plain) with a bootstrap interval over repeats, ``noise`` =
    median(plain again) / median(plain) with its interval (what two identical runs differ
    by), the per-1,000-image columns, and ``valid``: False when the edited run is *faster*
    than plain beyond the noise band (a hook cannot speed a forward pass up, so such a
    timing measures the machine, not the edit). A caller may add ``why_not`` (a reason the
    timing cannot be judged here, e.g. a CI profile); :func:`head_audit_claims` honours it.
    """
    from fairvlm.timing import time_ab

    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 3:
        raise ParameterError(f"repeats={repeats} must be at least 3")
    t = time_ab(lambda: embed_images(model, pixel_values, batch_size=batch_size),
                lambda: embed_images(model, pixel_values, edits=edits, batch_size=batch_size),
                repeats=int(repeats), n_inputs=int(pixel_values.shape[0]))
    t.pop("times")
    t["median_edited_s"] = t["median_method_s"]
    return t


def score_variants(data: AuditData, words: pd.DataFrame, variants: Sequence[Mapping], image_emb: Mapping,
                   text_emb: Mapping, text_index: Mapping, *, k_entropy: int) -> dict:
    """:func:`score_variant` for every variant, gathered: ``{"queries"`` (one line per variant
    and scenario query, with the planted shares on the testbed), ``"words"`` (per variant,
    style and word), ``"summary"`` (one line per variant: utility, mean NDKL / MaxSkew /
    NDCG / mAP of the first suite, mean entropies, ``ndkl_gender_change`` relative to
    ``none``), ``"hits"`` (per variant, the per-caption text-to-image hit@5 array)}."""
    scen_parts, word_parts, util_rows, hits, rows = [], [], [], {}, {}
    for v in variants:
        name = v["variant"]
        q, w, u = score_variant(data, words, image_emb[name], text_emb[name], text_index, k_entropy=k_entropy,
                                text_rows=rows)
        if "_t2i_hit@5" in u:
            hits[name] = u.pop("_t2i_hit@5")
        scen_parts.append(q.assign(variant=name))
        word_parts.append(w.assign(variant=name))
        util_rows.append({"variant": name, "family": v["family"], "heads": v["heads"], **u})
    scen = pd.concat(scen_parts, ignore_index=True)
    wt = pd.concat(word_parts, ignore_index=True)
    if data.planted_scen is not None:
        scen = scen.merge(data.planted_scen[["scenario", "p_man", "p_black"]].rename(
            columns={"scenario": "query", "p_man": "planted_p_man", "p_black": "planted_p_black"}),
            on="query", how="left")
    if data.planted_words is not None:
        wt = wt.merge(data.planted_words[["word", "p_man", "p_black"]].rename(
            columns={"p_man": "planted_p_man", "p_black": "planted_p_black"}), on="word", how="left")
    main = scen[scen["suite"] == data.scenario_suites[0]["name"]]
    fair = (main.groupby("variant", sort=False)[["ndkl_gender", "ndkl_race", "maxskew_gender", "maxskew_race",
                                                 "ndcg", "ap"]].mean().rename(columns={"ap": "mAP", "ndcg": "NDCG@k"}))
    ent = wt.groupby(["variant", "style"], sort=False)[["entropy_gender", "entropy_race"]].mean().unstack("style")
    ent.columns = [f"H_{a.split('_')[1]} ({s})" for a, s in ent.columns]
    summary = pd.DataFrame(util_rows).set_index("variant").join(fair).join(ent).reset_index()
    if "none" in set(summary["variant"]):
        summary["ndkl_gender_change"] = summary["ndkl_gender"] / float(fair.loc["none", "ndkl_gender"]) - 1.0
    return {"queries": scen, "words": wt, "summary": summary, "hits": hits}


def head_audit_claims(scores: Mapping, floor: pd.DataFrame, *, main_suite: str, gap_verdict,
                      neurons: pd.DataFrame, neuron_testable: tuple[bool, str], experts: Sequence[int],
                      random_variants: Sequence[str], damp_alpha: float, timing: Mapping,
                      seed: int = 0, single_head: int | None = None) -> tuple[list, dict]:
    """The "Paper vs this book" rows of the CLIP-heads chapter, each decided by the
    protocol of :mod:`fairvlm.verdicts` against a control measured in the same run.

    ``scores``: :func:`score_variants` output; ``floor``: :func:`random_ranking_floor`;
    ``gap_verdict``: Table 1's verdict (:func:`fairvlm.probes.expert_gap_verdict`);
    ``neurons``: the neuron probes of the expert heads and of random non-expert heads
    (``head, ap, kind`` with kind ``expert`` / ``other``); ``neuron_testable``: whether the
    expert-neuron mask selects some but not all coordinates above chance, and why not;
    ``random_variants``: the variants that put the male prototype on random non-expert
    heads (:func:`fairvlm.probes.random_heads`; in the book weakened to the strongest edit
    that costs no more retrieval mAP on the probe images than the expert edit,
    :func:`fairvlm.clip_heads.match_utility`), the control of every head-level edit; ``timing``: :func:`time_edits`. Rows pair variants
    per scenario query, word or caption. NDKL claims are *not testable here* when the
    baseline NDKL lies inside the random-ranking floor (no bias to remove), and every claim
    that builds on the head edit (all experts against one, the male prototype against the
    runner-up, something else stays put, a neuron edit does less) only after the head
    edit's own effect was shown (``after=``). The comparators are fixed before any NDKL is
    read: ``single_head`` (default: the first expert) is the one expert edited alone (the
    book passes the expert with the highest probe AP), and the male prototype is compared
    with zero ablation, the paper's runner-up (Table 2: 0.060 against 0.066).
    Returns the rows (for :func:`fairvlm.verdicts.verdict_table`) and ``{"base_ndkl",
    "floor", "floor_hi", "has_bias"}``.
    """
    from fairvlm.verdicts import Claim, judge, judge_estimates

    q = scores["queries"]
    q = q[q["suite"] == main_suite]
    words, hits = scores["words"], scores["hits"]
    S = scores["summary"].set_index("variant")
    names = set(S.index)
    if not random_variants or any(v not in names for v in random_variants):
        raise FairVLMError(f"random_variants={list(random_variants)} must name scored variants (the male prototype "
                           "on random non-expert heads)")

    def h1(hs):
        return ",".join(str(h + 1) for h in hs)

    def per_query(variant, col="ndkl_gender"):
        return q[q["variant"] == variant].set_index("query")[col].sort_index()

    def reduction(variant):
        return (per_query("none") - per_query(variant)).to_numpy(float)

    nan = float("nan")
    fl = floor[floor["suite"] == main_suite].set_index(["metric", "attribute"])
    base = float(S.loc["none", "ndkl_gender"])
    floor_hi = float(fl.loc[("ndkl", "gender"), "hi"])
    has_bias = base > floor_hi
    why = "" if has_bias else (f"baseline NDKL {base:.3f} is inside the random-ranking floor (up to {floor_hi:.3f}): "
                               "no bias to remove")
    size = 0.05 * base            # the smallest NDKL change that counts: 5% of the baseline
    male = reduction("male (experts)")
    rand = np.mean([reduction(v) for v in random_variants], axis=0)
    rows = [{"measure": "AP gap of the experts (picked on other images) over the other heads; control: the same "
                        "procedure on shuffled labels", "verdict": gap_verdict}]
    ne, no = neurons[neurons["kind"] == "expert"], neurons[neurons["kind"] == "other"]
    rows.append({"measure": "neuron AP, expert heads vs random non-expert heads (clusters: heads)",
                 "verdict": judge(Claim("Figure 1: expert heads hold many high-AP neurons, other heads few", "other",
                                        min_effect=0.02, effect_ref=None),
                                  ne["ap"].to_numpy(float), no["ap"].to_numpy(float), paired=False,
                                  clusters=ne["head"].to_numpy(), control_clusters=no["head"].to_numpy(), seed=seed)})
    t2 = judge(Claim("Table 2: the male prototype on the experts cuts NDKL (paper: 0.114 to 0.060, 47%; "
                     "its text says up to 42%)", "debias", min_effect=size),
               male, rand, testable=has_bias, why=why, seed=seed)
    rows.append({"measure": f"NDKL reduction per query ({-S.loc['male (experts)', 'ndkl_gender_change']:+.1%} "
                            f"relative); control: the male prototype on {len(random_variants)} random sets of "
                            "non-expert heads, each weakened until it costs no more retrieval utility than the expert edit",
                 "verdict": t2})
    one = int(experts[0]) if single_head is None else int(single_head)
    c_one = Claim("Table 2: editing all experts beats editing one (comparator fixed in advance: the male "
                  "prototype on the expert with the highest probe AP)", "debias", min_effect=size)
    one_name = f"male (h:{one + 1})"
    if len(experts) > 1 and one in set(int(h) for h in experts) and one_name in names:
        gain = (per_query(one_name) - per_query("male (experts)")).to_numpy(float)
        rows.append({"measure": f"NDKL of {one_name} minus all experts, per query; control: 0",
                     "verdict": judge(c_one, gain, np.zeros_like(gain), testable=has_bias, why=why, after=t2,
                                      seed=seed)})
    else:
        rows.append({"measure": "a single expert head",
                     "verdict": judge(c_one, [], [], testable=False,
                                      why="one expert: nothing to compare" if len(experts) <= 1 else
                                      f"no single-head variant {one_name} was scored")})
    c_best = Claim("Table 2: the male prototype beats zero ablation, the paper's runner-up on the experts",
                   "debias", min_effect=size)
    if "zero (experts)" in names:
        mb = (per_query("zero (experts)") - per_query("male (experts)")).to_numpy(float)
        rows.append({"measure": "NDKL of zero (experts) minus male (experts), per query; control: 0",
                     "verdict": judge(c_best, mb, np.zeros_like(mb), testable=has_bias, why=why, after=t2, seed=seed)})
    else:
        rows.append({"measure": "zero ablation", "verdict": judge(c_best, [], [], testable=False,
                                                                  why="no zero-ablation variant was scored")})
    if hits:
        rows.append({"measure": "text-to-image hit@5 per caption, male (experts) vs unedited; margin ±0.02",
                     "verdict": judge(Claim("Tables 2 and 5: utility barely moves (COCO Recall@K within 2 points; "
                                            "Flickr30K drops more, mainly R@1)", "no-change", "within", tol=0.02),
                                      hits["male (experts)"], hits["none"], binary=True, after=t2, seed=seed)})
    damp_name = f"damp {damp_alpha:g} (expert neurons)"
    c_left = Claim("Table 3 (left): neuron-level edits do little, less than head-level", "other", "less",
                   min_effect=size, effect_ref=None)
    c_right = Claim(f"Table 3 (right): damping expert neurons (alpha {damp_alpha:g}) changes NDKL little",
                    "no-change", "within", tol=size if size > 0 else 0.01)
    mask_ok, mask_why = neuron_testable
    if mask_ok and "male (expert neurons)" in names:
        rows.append({"measure": "NDKL reduction per query, male prototype on expert neurons; control: on the whole "
                                "experts", "verdict": judge(c_left, reduction("male (expert neurons)"), male,
                                                            testable=has_bias, why=why, after=t2, seed=seed)})
        rows.append({"measure": f"NDKL per query, damped vs unedited; margin ±5% of the baseline ({size:.3f})",
                     "verdict": judge(c_right, per_query(damp_name).to_numpy(float), per_query("none").to_numpy(float),
                                      testable=has_bias, why=why, after=t2, seed=seed)})
    else:
        reason = mask_why or "no neuron-level variant was run"
        for c in (c_left, c_right):
            rows.append({"measure": "expert-neuron mask", "verdict": judge(c, [], [], testable=False, why=reason)})
    wt = words[words["style"] == "word"]

    def h_change(variant):
        return (wt[wt["variant"] == variant].set_index("word")["entropy_gender"].sort_index()
                - wt[wt["variant"] == "none"].set_index("word")["entropy_gender"].sort_index()).to_numpy(float)

    hm = h_change("male (experts)")
    hr = np.mean([h_change(v) for v in random_variants], axis=0)
    h0 = S.loc["none", "H_gender (word)"]
    rows.append({"measure": f"entropy change per word; control: matched random non-expert heads (CLIP-clip "
                            f"{S.loc['CLIP-clip', 'H_gender (word)'] - h0:+.3f}, biased prompts "
                            f"{S.loc['biased prompts', 'H_gender (word)'] - h0:+.3f})",
                 "verdict": judge(Claim("Table 4: the male prototype raises gender entropy over So-B-IT words",
                                        "debias", min_effect=0.01), hm, hr, seed=seed)})
    if hits:
        drop_clip = hits["none"] - hits["CLIP-clip"]
        drop_male = hits["none"] - hits["male (experts)"]
        rows.append({"measure": "hit@5 drop per caption, CLIP-clip vs male (experts)",
                     "verdict": judge(Claim("Table 5: CLIP-clip costs more utility than the intervention", "other",
                                            min_effect=0.02, effect_ref=None), drop_clip, drop_male, seed=seed)})
    nlo, nhi = timing["noise_interval"]
    resolvable = nhi - nlo <= 2 * 0.05
    forced = str(timing.get("why_not") or "")      # the caller rules the timing out (e.g. a CI profile)
    t_why = (forced if forced else "" if timing["valid"] and resolvable else
             "the edited run was faster than plain beyond the A/A noise band: the timing measures the machine, "
             "not the edit" if not timing["valid"] else
             f"two identical runs differ by up to [{nlo:.2f}, {nhi:.2f}]: the machine is too noisy to resolve a 5% cost")
    lo, hi = timing["interval"]
    rows.append({"measure": f"wall-clock median ratio edited/plain ({timing['repeats']} interleaved repeats), margin "
                            "±0.05; control: plain/plain (A/A); benchmarks/bench_clip_heads.py times a ViT-B/32-sized "
                            "encoder",
                 "verdict": judge_estimates(Claim("Sec. 3.2: the intervention adds negligible inference cost",
                                                  "no-change", "within", tol=0.05),
                                            timing["ratio"], (lo, hi), 1.0, timing["ratio"] - 1.0, (lo - 1.0, hi - 1.0),
                                            n_units=int(timing["repeats"]), control_interval=(nlo, nhi),
                                            testable=bool(timing["valid"] and resolvable and not forced),
                                            why=t_why)})
    return rows, {"base_ndkl": base, "floor": float(fl.loc[("ndkl", "gender"), "floor"]), "floor_hi": floor_hi,
                  "has_bias": has_bias}


#: The utility and side-effect columns a control edit must leave where they were.
CONTROL_CHECK_COLUMNS = ("t2i_R@1", "t2i_R@5", "i2t_R@1", "zero_shot_acc", "mAP", "maxskew_gender")

#: Equivalence margins of the control check, per scenario query: the controls' mAP and
#: MaxSkew (gender) against the expert edit's. Half a point of each: a tenth of the width of
#: the random-ranking floor's MaxSkew range on the testbed, and below the damage a
#: size-matched random-head edit does (0.005-0.008 of mAP, 2026-12-07).
CONTROL_MARGINS = {"ap": 0.005, "maxskew_gender": 0.005}


def control_check(scores: Mapping, random_variants: Sequence[str], *, matches: Sequence[Mapping] | None = None,
                  edit: str = "male (experts)", tol: float = 0.02, main_suite: str | None = None,
                  margins: Mapping[str, float] | None = None, others: Sequence[str] = (),
                  other_matches: Sequence[Mapping] | None = None, seed: int = 0) -> tuple[pd.DataFrame, list]:
    """Does the random-head control leave the model intact? A control that damages the
    model (retrieval, zero-shot accuracy, skew of an unrelated list) is no control for a
    claim that an edit removes bias.

    Returns ``(table, rows)``. ``table``: one line per variant (unedited, ``edit``, each
    control in ``random_variants``, then ``others``: e.g. controls matched another way,
    shown for comparison) with :data:`CONTROL_CHECK_COLUMNS` and their change from the
    unedited model (and, from ``matches`` / ``other_matches``, each control's strength and
    matched measure). ``rows`` (for :func:`fairvlm.verdicts.verdict_table`, all
    ``asserts="no-change"``, not a paper's claim): an equivalence check (TOST, ``+-tol``)
    of the per-caption text-to-image hit@5, the controls' mean against the unedited model;
    and, with ``main_suite``, per scenario query of that suite, the controls' mean against
    the *edit* for each column of ``margins`` (default :data:`CONTROL_MARGINS`: mAP and
    MaxSkew), so the control is as harmless as the edit it controls for, not only as the
    unedited model.
    """
    from fairvlm.verdicts import Claim, judge

    S = scores["summary"].set_index("variant")
    listed = ["none", edit, *random_variants, *others]
    missing = [v for v in listed if v not in S.index]
    if missing:
        raise FairVLMError(f"control_check: variants {missing} were not scored")
    cols = [c for c in CONTROL_CHECK_COLUMNS if c in S.columns]
    info = {}
    if matches is not None:
        info.update(zip(random_variants, matches))
        info[edit] = {"strength": 1.0, "displacement": matches[0]["target"] if matches else float("nan"),
                      "matched": True}
    if other_matches is not None:
        info.update(zip(others, other_matches))
    rows = []
    for v in listed:
        r = {"variant": v, "heads": S.loc[v, "heads"]}
        if info:
            m = info.get(v, {})
            r.update({"strength": m.get("strength", float("nan")), "matched measure": m.get("displacement",
                                                                                          float("nan")),
                      "matched": m.get("matched", None)})
        for c in cols:
            r[c] = float(S.loc[v, c])
            r[f"Δ {c}"] = float(S.loc[v, c] - S.loc["none", c])
        rows.append(r)
    hits = scores.get("hits") or {}
    claim = Claim("the random-head control leaves utility intact (t2i hit@5 per caption)", "no-change", "within",
                  tol=tol)
    if all(v in hits for v in ["none", *random_variants]):
        ctl = np.mean([np.asarray(hits[v], float) for v in random_variants], axis=0)
        verdict = judge(claim, ctl, np.asarray(hits["none"], float), seed=seed)
    else:
        verdict = judge(claim, [], [], testable=False, why="no per-caption hits were scored")
    out = [{"measure": f"t2i hit@5 per caption, controls' mean vs unedited; margin ±{tol:g}", "verdict": verdict}]
    if main_suite is not None:
        q = scores["queries"]
        q = q[q["suite"] == main_suite]
        names = {"ap": "mAP", "maxskew_gender": "MaxSkew (gender)"}
        for col, margin in (CONTROL_MARGINS if margins is None else margins).items():
            if col not in q.columns:
                raise FairVLMError(f"control_check: the scenario queries have no column {col!r}")

            def per_query(v, col=col):
                return q[q["variant"] == v].set_index("query")[col].sort_index().to_numpy(float)

            ctl = np.mean([per_query(v) for v in random_variants], axis=0)
            c = Claim(f"the random-head control is as harmless as the edit ({names.get(col, col)} per query)",
                      "no-change", "within", tol=float(margin))
            out.append({"measure": f"{names.get(col, col)} per scenario query, controls' mean vs {edit}; margin "
                                   f"±{margin:g}", "verdict": judge(c, ctl, per_query(edit), seed=seed)})
    return pd.DataFrame(rows), out


# ------------------------------------------------------------------------------ embeddings and tables of chapter 07
#: the prompts that name only the protected attribute in the biased-prompts baseline
SPURIOUS_PROMPTS = ("a photo of a man", "a photo of a woman", "a photo of a male", "a photo of a female")


def embed_audit_texts(loaded, data: AuditData, words: pd.DataFrame) -> tuple[torch.Tensor, dict]:
    """Every text of the audit (:func:`audit_texts`) embedded once: ``(text_emb (T, d),
    {text: row})``."""
    texts = audit_texts(data, words)
    return embed_texts(loaded, texts), {t: i for i, t in enumerate(texts)}


def fit_baselines(loaded, probe_pixels: torch.Tensor, probe_labels: Sequence, roles: Sequence[str], *,
                  keep: float, lam: float = 1000.0, seed: int = 0, probe_emb: torch.Tensor | None = None) -> dict:
    """Fit the two embedding-level baselines on the probe set and on text alone.

    CLIP-clip keeps ``clip_m = max(1, round(keep * d))`` of the ``d`` image-embedding
    dimensions, those with the least mutual information with ``probe_labels``
    (:func:`clip_clip_dims` on the probe images). Biased prompts
    (:func:`biased_prompts_projection`, weight ``lam``) removes the direction of
    :data:`SPURIOUS_PROMPTS`, calibrated on the pairs "a photo of a male <role>" / "a photo
    of a female <role>". ``probe_emb``: the probe images' unedited embeddings, when already
    computed (e.g. from :func:`fairvlm.clip_heads.cls_cache`). Returns ``{"clip_dims",
    "clip_m", "dim", "projection"}`` for :func:`add_baselines`.
    """
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0.0 < keep <= 1.0:
        raise ParameterError(f"keep={keep!r} must be a fraction in (0, 1] of the embedding dimensions")
    roles = list(roles)
    if not roles:
        raise ParameterError("roles is empty; biased prompts needs at least one role for its prompt pairs")
    if probe_emb is None:
        probe_emb = embed_images(loaded, probe_pixels)
    elif probe_emb.ndim != 2 or probe_emb.shape[0] != probe_pixels.shape[0]:
        raise ParameterError(f"probe_emb must be ({probe_pixels.shape[0]}, d); got {tuple(probe_emb.shape)}")
    dim = int(probe_emb.shape[1])
    clip_m = max(1, round(keep * dim))
    projection = biased_prompts_projection(
        embed_texts(loaded, list(SPURIOUS_PROMPTS)), embed_texts(loaded, [f"a photo of a male {r}" for r in roles]),
        embed_texts(loaded, [f"a photo of a female {r}" for r in roles]), lam=lam)
    return {"clip_dims": clip_clip_dims(probe_emb, probe_labels, clip_m, seed=seed), "clip_m": clip_m, "dim": dim,
            "projection": projection}


def add_baselines(image_emb: Mapping, text_emb, variants: Sequence[Mapping], fitted: Mapping) -> tuple[dict, dict]:
    """Image and text embeddings of every variant, the two baselines included.

    ``image_emb``: ``{variant: {gallery: (N, d)}}`` of the encoder variants (with
    ``"none"``); ``text_emb``: (T, d) unedited text embeddings; ``fitted``:
    :func:`fit_baselines`. Every variant ranks with the unedited texts except "biased
    prompts" (texts projected, images of ``none``) and "CLIP-clip" (images and texts cut to
    the kept dimensions and renormalized). Returns ``(image_emb, text_emb)``, both keyed by
    variant; the input dict is not changed.
    """
    if "none" not in image_emb:
        raise ParameterError("image_emb needs the unedited variant 'none' (the baselines start from it)")
    images = dict(image_emb)
    texts = {v["variant"]: text_emb for v in variants}
    texts["biased prompts"] = project_texts(text_emb, fitted["projection"])
    images["biased prompts"] = images["none"]
    images["CLIP-clip"] = {n: keep_dims(e, fitted["clip_dims"]) for n, e in images["none"].items()}
    texts["CLIP-clip"] = keep_dims(text_emb, fitted["clip_dims"])
    return images, texts


def floor_summary(floor: pd.DataFrame, suite: str) -> dict:
    """One suite's :func:`random_ranking_floor` as ``{"<metric>|<attribute>": {"floor",
    "lo", "hi"}}`` for NDKL and MaxSkew, gender and race."""
    fl = floor[floor["suite"] == suite].set_index(["metric", "attribute"])
    want = [(m, a) for m in ("ndkl", "maxskew") for a in ("gender", "race")]
    missing = [w for w in want if w not in fl.index]
    if missing:
        raise ParameterError(f"the floor has no rows {missing} for suite {suite!r}; suites there: "
                             f"{sorted(set(floor['suite']))}")
    return {f"{m}|{a}": {k: float(fl.loc[(m, a), k]) for k in ("floor", "lo", "hi")} for m, a in want}


#: the columns of the chapter's variant table, in order (those a run lacks are left out)
VARIANT_COLUMNS = ("variant", "heads", "ndkl_gender", "ndkl_gender_change", "ndkl_race", "maxskew_gender",
                   "maxskew_race", "NDCG@k", "mAP")
UTILITY_COLUMNS = ("t2i_R@1", "t2i_R@5", "t2i_R@10", "i2t_R@1", "i2t_R@5", "i2t_R@10", "zero_shot_acc")


def variant_table(summary: pd.DataFrame, floor: pd.DataFrame, suite: str) -> pd.DataFrame:
    """The fairness-and-utility table of the variants: a first row "random ranking
    (floor)" with the floor's NDKL and MaxSkew for ``suite`` (:func:`floor_summary`), then
    :func:`score_variants`'s summary; columns :data:`VARIANT_COLUMNS`, the entropies
    (``H_*``) and :data:`UTILITY_COLUMNS`, each where present."""
    fl = floor_summary(floor, suite)
    row = {"variant": "random ranking (floor)", "family": "null", "heads": "",
           **{f"{m}_{a}": fl[f"{m}|{a}"]["floor"] for m in ("ndkl", "maxskew") for a in ("gender", "race")}}
    cols = [*VARIANT_COLUMNS, *[c for c in summary.columns if c.startswith("H_")],
            *[c for c in UTILITY_COLUMNS if c in summary]]
    shown = pd.concat([pd.DataFrame([row]), summary], ignore_index=True)
    return shown[[c for c in cols if c in shown]]


def planted_vs_retrieved(queries: pd.DataFrame) -> pd.DataFrame:
    """Per variant (in order of appearance), how retrieval follows the planted bias:
    Spearman correlation between the planted and the top-k share of men
    (``spearman_gender``) and of Black people (``spearman_race``) over the scenario
    queries, and the mean distance of the top-k share of men from one half
    (``mean_abs_gender_skew``). ``queries``: one suite of :func:`score_variants`'s
    ``queries`` on the testbed (with the planted shares)."""
    from scipy.stats import spearmanr

    need = {"variant", "planted_p_man", "planted_p_black", "topk_male_share", "topk_black_share"}
    if not need <= set(queries.columns):
        raise ParameterError(f"queries needs the columns {sorted(need)} (score_variants() on the testbed); "
                             f"missing {sorted(need - set(queries.columns))}")

    def rho(x, y) -> float:
        # a planted share that is the same in every scenario (a world with nothing planted) has no
        # ranking: the correlation is undefined (NaN), said here instead of by a scipy warning
        x, y = np.asarray(x, float), np.asarray(y, float)
        if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
            return float("nan")
        return float(spearmanr(x, y).statistic)

    return pd.DataFrame([{
        "variant": name,
        "spearman_gender": rho(d["planted_p_man"], d["topk_male_share"]),
        "spearman_race": rho(d["planted_p_black"], d["topk_black_share"]),
        "mean_abs_gender_skew": float(np.abs(d["topk_male_share"] - 0.5).mean())}
        for name, d in queries.groupby("variant", sort=False)])


def category_entropy(words: pd.DataFrame, variants: Sequence[str], *, style: str = "word") -> pd.DataFrame:
    """Mean normalized entropy per So-B-IT category (the layout of the paper's Table 4):
    one row per variant in ``variants``, columns ``(category, "R")`` and ``(category,
    "G")`` for race and gender. ``words``: :func:`score_variants`'s ``words``; ``style``:
    one of :data:`WORD_STYLES`."""
    if style not in WORD_STYLES:
        raise unknown("word prompt style", style, WORD_STYLES)
    variants = list(variants)
    sel = words[(words["style"] == style) & words["variant"].isin(variants)]
    cat = (sel.groupby(["variant", "category"], sort=False)[["entropy_race", "entropy_gender"]].mean()
           .rename(columns={"entropy_race": "R", "entropy_gender": "G"}).unstack("category"))
    return cat.swaplevel(axis=1).sort_index(axis=1, level=0, sort_remaining=False).reindex(variants)


def most_skewed_query(data: AuditData) -> tuple[str, str]:
    """``(key, prompt)`` of the first suite's query to show retrievals for: the scenario
    with the largest planted gender skew on the testbed, the first query elsewhere."""
    queries = data.scenario_suites[0]["queries"]
    if data.planted_scen is not None:
        key = data.planted_scen.loc[data.planted_scen["gender_skew"].abs().idxmax(), "scenario"]
    else:
        key = queries["key"].iloc[0]
    by_key = queries.set_index("key")
    if key not in by_key.index:
        raise DataError(f"query {key!r} is not among the first suite's queries")
    return key, by_key.loc[key, "prompt"]


def top_images(query_emb, image_emb, k: int = 8) -> np.ndarray:
    """Indices of the ``k`` images most similar to one query, best first (ties: lower index
    first). ``query_emb``: (d,); ``image_emb``: (N, d), both L2-normalized."""
    q = torch.as_tensor(_np(query_emb), dtype=torch.float32).reshape(1, -1)
    x = torch.as_tensor(_np(image_emb), dtype=torch.float32)
    if x.ndim != 2 or x.shape[1] != q.shape[1]:
        raise ParameterError(f"query_emb must be (d,) and image_emb (N, d); got {tuple(q.shape[1:])} and {tuple(x.shape)}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ParameterError(f"k={k!r} must be a positive integer")
    return np.argsort(-(q @ x.T).numpy()[0], kind="stable")[:k]


def variant_headline(summary: pd.DataFrame) -> dict:
    """The per-variant numbers of the chapter's results file, from :func:`score_variants`'s
    summary: gender NDKL, NDCG@k, mAP, gender entropy over words, and the utility columns
    Recall@5 both ways and zero-shot accuracy that exist."""
    s = summary.set_index("variant")
    return {"ndkl_gender_by_variant": s["ndkl_gender"].to_dict(), "ndcg_by_variant": s["NDCG@k"].to_dict(),
            "map_by_variant": s["mAP"].to_dict(), "entropy_gender_word_by_variant": s["H_gender (word)"].to_dict(),
            "utility_by_variant": {c: s[c].to_dict() for c in ("t2i_R@5", "i2t_R@5", "zero_shot_acc") if c in s}}


# ------------------------------------------------------------------------------ chapter 07's figures and results file
# matplotlib is imported inside the plot functions, as fairvlm.plotting does, so that
# importing the retrieval code does not load a plotting backend.
def plot_planted_vs_retrieved(queries: pd.DataFrame, variants: Sequence[str] = ("none", "male (experts)"), *,
                              ax=None):
    """Share of men in each scenario query's top-k against the planted share of men in
    training, one scatter per variant (markers ``o``, ``x``, ``s``, ... in the order of
    ``variants``, legend by variant name) and a dotted line at one half. ``queries``: one
    suite of :func:`score_variants`'s ``queries`` on the testbed. Draws on ``ax`` (or a new
    5.2 x 3.6 in figure) and returns the figure."""
    import matplotlib.pyplot as plt

    markers = ("o", "x", "s", "^", "v", "D")
    need = {"variant", "planted_p_man", "topk_male_share"}
    if not need <= set(queries.columns):
        raise ParameterError(f"queries needs the columns {sorted(need)} (score_variants() on the testbed); "
                             f"missing {sorted(need - set(queries.columns))}")
    variants = list(variants)
    missing = [v for v in variants if v not in set(queries["variant"])]
    if not variants or len(variants) > len(markers) or missing:
        raise ParameterError(f"variants={variants} must name 1 to {len(markers)} variants of the queries table"
                             + (f"; not there: {missing}" if missing else ""))
    if ax is None:
        _, ax = plt.subplots(figsize=(5.2, 3.6))
    for name, marker in zip(variants, markers):
        d = queries[queries["variant"] == name]
        ax.scatter(d["planted_p_man"], d["topk_male_share"], s=18, marker=marker, label=name)
    ax.axhline(0.5, color="k", lw=0.6, ls=":")
    ax.set_xlabel("planted share of men in training")
    ax.set_ylabel("share of men in top-k")
    ax.legend(frameon=False, fontsize=8)
    return ax.figure


def plot_top_retrievals(data: AuditData, image_emb: Mapping, text_emb: Mapping, text_index: Mapping, *,
                        after: str = "male (experts)", k: int = 8):
    """The top-``k`` images of the first suite's :func:`most_skewed_query` without
    intervention (top row, "before") and under the variant ``after`` (bottom row), best
    first, each labelled with its gender and race and a ``*`` when it belongs to another
    scenario; the query in the title (the paper's Figure 2). ``image_emb`` / ``text_emb``:
    ``{variant: {gallery: (N, d)}}`` / ``{variant: (T, d)}`` with ``text_index``
    ``{text: row}`` (:func:`add_baselines`). Returns the new figure."""
    import matplotlib.pyplot as plt

    for name in ("none", after):
        if name not in image_emb or name not in text_emb:
            raise ParameterError(f"variant {name!r} is missing from image_emb or text_emb; variants there: "
                                 f"{sorted(image_emb)}")
    suite = data.scenario_suites[0]
    gallery = data.galleries[suite["gallery"]]
    pick, prompt = most_skewed_query(data)
    if prompt not in text_index:
        raise ParameterError(f"the query {prompt!r} is not in text_index (embed_audit_texts())")
    tops = [top_images(text_emb[name][text_index[prompt]], image_emb[name][suite["gallery"]], k=k)
            for name in ("none", after)]
    fig, axes = plt.subplots(2, k, figsize=(11 * k / 8, 3.3), squeeze=False)
    for row, top in enumerate(tops):
        for col, idx in enumerate(top):
            ax = axes[row, col]
            ax.imshow(gallery["image"](int(idx)))
            ax.set_xticks([])
            ax.set_yticks([])
            r = gallery["meta"].iloc[int(idx)]
            ax.set_xlabel(f"{r['gender']}, {r['race']}{'' if r[suite['key_col']] == pick else ' *'}", fontsize=7)
        axes[row, 0].set_ylabel("before" if row == 0 else "after", fontsize=9)
    fig.suptitle(f'"{prompt}": no intervention (top) vs {after} (bottom); * = other scenario', fontsize=9)
    return fig


def head_audit_results(*, model: str, size: str, on_testbed: bool, data: AuditData, check: Mapping,
                       gender_experts: Sequence[int], race_experts: Sequence[int], expert_ap: float, other_ap: float,
                       gap: Mapping, audit: Mapping, scores: Mapping, floor: pd.DataFrame, main_suite: str,
                       planted: pd.DataFrame | None, timing: Mapping, verdicts: pd.DataFrame, runtime_s: float,
                       probe_table: pd.DataFrame, logreg_table: pd.DataFrame, layer_table: pd.DataFrame,
                       trap_table: pd.DataFrame, neuron_table: pd.DataFrame,
                       control_table: pd.DataFrame | None = None, control_verdict=None) -> dict:
    """The ``headline``, ``provenance`` and ``tables`` of chapter 07's results file, as
    keyword arguments for :func:`fairvlm.results.save_results`.

    ``model`` / ``size``: the model name and the testbed size (named in the provenance
    for testbed models); ``on_testbed``: whether the numbers describe the synthetic world;
    ``check``: :func:`fairvlm.clip_heads.decomposition_check`; ``gender_experts`` /
    ``race_experts``: 0-based heads; ``expert_ap`` / ``other_ap``:
    :func:`fairvlm.probes.expert_other_ap`; ``gap``: :func:`fairvlm.probes.expert_gap_test`;
    ``audit``: the second value of :func:`head_audit_claims`; ``scores``:
    :func:`score_variants`; ``floor``: :func:`random_ranking_floor` (summarised for
    ``main_suite``); ``planted``: :func:`planted_vs_retrieved` (None or empty without a
    planted ground truth); ``verdicts``: :func:`fairvlm.verdicts.verdict_table`; the last
    five are the probe tables (:func:`fairvlm.probes.head_table`, the logistic-regression
    table, :func:`fairvlm.probes.probe_layers`, :func:`fairvlm.probes.trap_table` and the
    :func:`fairvlm.probes.split_neurons` table); ``control_table`` / ``control_verdict``
    (optional): :func:`control_check` (its rows, or a single verdict)."""
    for name, obj, need in (("check", check, ("identity_err", "batch_err")),
                            ("gap", gap, ("effect", "interval", "null", "null_interval")),
                            ("audit", audit, ("base_ndkl",)), ("scores", scores, ("queries", "words", "summary"))):
        if not isinstance(obj, Mapping) or any(k not in obj for k in need):
            raise ParameterError(f"{name} must be a mapping with the keys {list(need)}")
    probe_cols = ["attribute", "layer", "head", "head_1based", "accuracy", "auroc", "ap", "expert"]
    for name, df, need in (("probe_table", probe_table, probe_cols), ("verdicts", verdicts, ["claim", "verdict"])):
        if not isinstance(df, pd.DataFrame) or not set(need) <= set(df.columns):
            raise ParameterError(f"{name} must be a DataFrame with the columns {need}")
    planted = pd.DataFrame() if planted is None else planted
    summary = scores["summary"]
    headline = {
        "model": model,
        "identity_max_abs_error": check["identity_err"],
        "batch_vs_single_max_abs_error": check["batch_err"],
        "gender_experts_1based": [h + 1 for h in gender_experts],
        "race_experts_1based": [h + 1 for h in race_experts],
        "k_experts": len(gender_experts),
        "gender_expert_mean_ap": expert_ap,
        "gender_other_mean_ap": other_ap,
        "expert_gap": {k: gap[k] for k in ("effect", "interval", "null", "null_interval")},
        "ndkl_gender_baseline": audit["base_ndkl"],
        "ndkl_random_floor": floor_summary(floor, main_suite),
        **variant_headline(summary),
        "planted_spearman_gender_baseline": (float(planted.set_index("variant").loc["none", "spearman_gender"])
                                             if len(planted) else None),
        "timing": timing,
        "verdicts": dict(zip(verdicts["claim"], verdicts["verdict"])),
        "runtime_s": runtime_s,
    }
    if control_verdict is not None:
        checks = control_verdict if isinstance(control_verdict, (list, tuple)) else \
            [{"measure": "control check", "verdict": control_verdict}]
        headline["control_check"] = [{"measure": r["measure"], "verdict": r["verdict"].verdict,
                                      "difference": r["verdict"].difference,
                                      "interval": list(r["verdict"].difference_interval)} for r in checks]
    provenance = {
        "models": [model + (f" (size={size})" if model.startswith("testbed") else "")],
        "data": [data.description, "So-B-IT taxonomy (ameliagmz/Debiasing_CLIP_Neural_Interventions)"],
        "note": "testbed numbers describe the synthetic world, not the paper's models or data"
        if on_testbed else "paper profile",
    }
    tables = {
        "probe_heads": probe_table[probe_cols],
        "probe_heads_logreg": logreg_table,
        "probe_layers": layer_table,
        "probe_init_trap": trap_table,
        "neurons": neuron_table,
        "variants": summary,
        "random_floor": floor,
        "scenario_queries": scores["queries"],
        "words": scores["words"],
        "planted_vs_retrieved": planted,
        "paper_vs_book": verdicts,
    }
    if control_table is not None:
        tables["control_check"] = control_table
    return {"headline": headline, "provenance": provenance, "tables": tables}
