"""Progress bars that do not end up in executed notebooks.

A chapter executed by papermill stores every output its cells produce; a tqdm bar there
is stored as whatever it showed when the notebook was saved (often ``0%``), a half bar
frozen into the book. :func:`bar` is ``tqdm.auto.tqdm`` with two defaults: ``leave=False``
(a finished bar clears itself) and ``disable=True`` when nobody watches: when
``$FAIRVLM_PROGRESS`` is ``0`` (the book's build sets it for the kernels it starts,
:mod:`fairvlm.bookbuild`). ``FAIRVLM_PROGRESS=1`` forces bars on.
"""

from __future__ import annotations

import os

#: The environment variable that switches progress bars off (``0``) or on (``1``).
PROGRESS_ENV = "FAIRVLM_PROGRESS"


def interactive() -> bool:
    """False when ``$FAIRVLM_PROGRESS`` is ``0`` / ``false`` / ``no`` / ``off`` (a batch build)."""
    return os.environ.get(PROGRESS_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def bar(iterable=None, **kwargs):
    """``tqdm.auto.tqdm(iterable, **kwargs)`` with ``leave=False`` and ``disable`` set from
    :func:`interactive` unless the caller gives them."""
    from tqdm.auto import tqdm

    kwargs.setdefault("leave", False)
    kwargs.setdefault("disable", not interactive())
    return tqdm(iterable, **kwargs)
