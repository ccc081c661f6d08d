"""Loaders for the real datasets the book uses (no images are committed to the repository).

- **PAIRS** (Fraser & Kiritchenko 2024): :func:`load_pairs`, :func:`fetch_pairs`,
  :func:`verify_pairs`, the RES-FAIR label mapping :data:`PAIRS_LABELS` /
  :func:`label_table`.
- **SocialCounterfactuals** (Howard et al. 2024): :func:`load_socialcounterfactuals`,
  :func:`fetch_socialcf`, :func:`counterfactual_sets`, :func:`set_statistics`.
- **So-B-IT** (Hamidieh et al. 2024): :func:`load_sobit`, :func:`fetch_sobit`,
  :func:`sobit_words`, :func:`sobit_categories`.

Every loader finds its data the same way: an explicit argument, then an environment
variable (``FAIRVLM_PAIRS``, ``FAIRVLM_SOCIALCF``, ``FAIRVLM_SOBIT``), then
``data/<name>`` in the current directory or the book's checkout, then
``../shared/data/<name>`` beside it. Missing or corrupt data raise
:class:`fairvlm.errors.DataError` with what to do about it.

Every ``fetch_*`` downloads files pinned to one upstream commit and checks each against a
sha256 manifest in ``data/`` (:mod:`fairvlm.data.fetch`). Command line:
``python -m fairvlm.data fetch {pairs,socialcf,sobit,all} [DEST] [--source DIR]``,
``python -m fairvlm.data fetch all --if-missing`` (only what the loaders do not find),
``python -m fairvlm.data verify-pairs [ROOT]``.
"""

from fairvlm.data.pairs import (
    PAIRS_BASE_URL,
    PAIRS_COMMIT,
    PAIRS_LABEL_CORRECTIONS,
    PAIRS_LABELS,
    PAIRS_URL,
    SECTIONS,
    VARIANTS,
    fetch_pairs,
    label_table,
    load_pairs,
    manifest_path,
    pairs_label,
    pairs_root,
    read_manifest,
    verify_pairs,
)
from fairvlm.data.fetch import sha256_file
from fairvlm.data.sobit import (
    CATEGORY_ALIASES,
    fetch_sobit,
    load_sobit,
    normalize_category,
    sobit_categories,
    sobit_path,
    sobit_words,
)
from fairvlm.data.socialcf import (
    LEVELS,
    SEGMENTS,
    counterfactual_sets,
    fetch_socialcf,
    load_socialcounterfactuals,
    set_statistics,
    socialcf_root,
)

__all__ = [
    "CATEGORY_ALIASES", "LEVELS", "PAIRS_BASE_URL", "PAIRS_COMMIT", "PAIRS_LABELS",
    "PAIRS_LABEL_CORRECTIONS", "PAIRS_URL", "SECTIONS", "SEGMENTS", "VARIANTS",
    "counterfactual_sets", "fetch_pairs", "fetch_socialcf", "fetch_sobit", "label_table",
    "load_pairs", "load_socialcounterfactuals", "load_sobit", "manifest_path", "normalize_category",
    "pairs_label", "pairs_root", "read_manifest", "set_statistics", "sha256_file",
    "socialcf_root", "sobit_categories", "sobit_path", "sobit_words", "verify_pairs",
]
