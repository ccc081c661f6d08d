"""One theme and one ``savefig`` for every figure in the book."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

from fairvlm.errors import FairVLMError
from fairvlm.paths import figures_dir

_THEME_SET = False


class SavedFigure(type(Path())):
    """The path of a saved PNG (a :class:`pathlib.Path`; ``.pdf`` is its PDF sibling) that
    shows nothing when it is a cell's last value: ``savefig(fig, ...)`` at the end of a
    cell must not print ``PosixPath('figures/...')`` under the figure."""

    @property
    def pdf(self) -> Path:
        return Path(self).with_suffix(".pdf")

    def _ipython_display_(self):  # IPython: display nothing
        return None


def set_theme() -> None:
    """The book's single theme (seaborn paper context, ticks, colour-blind palette)."""
    global _THEME_SET
    import seaborn as sns

    sns.set_theme(context="paper", style="ticks", palette="colorblind")
    matplotlib.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "svg.hashsalt": "fairvlm"})
    _THEME_SET = True


def savefig(fig, stem: str, *, show: bool = True, out_dir: Path | None = None) -> SavedFigure:
    """Write ``figures/<stem>.png`` and ``.pdf`` byte-stably, then show the figure inline.

    ``stem`` is ``<NN_slug>_<name>``, e.g. ``"07_clip_heads_head_ap"``. Metadata that
    changes between runs (software version, creation date) is stripped so the same
    numbers give the same bytes. Returns the PNG's path as a :class:`SavedFigure`, which a
    notebook does not echo. An unwritable ``out_dir`` is a :class:`FairVLMError` naming it.
    """
    if not isinstance(stem, str) or not stem or "/" in stem or stem.startswith("."):
        raise FairVLMError(f"stem={stem!r} must be a file name such as '07_clip_heads_head_ap'")
    out_dir = Path(out_dir) if out_dir is not None else figures_dir()
    png = out_dir / f"{stem}.png"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path, meta in ((png, {"Software": None}),
                           (out_dir / f"{stem}.pdf", {"Creator": None, "Producer": None, "CreationDate": None})):
            # the temporary name keeps the suffix, so .gitignore (figures/*.png) covers it
            fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-", suffix=path.suffix, dir=out_dir)
            os.close(fd)
            try:  # atomic: a figure appears complete or not at all
                fig.savefig(tmp, format=path.suffix[1:], bbox_inches="tight", metadata=meta)
                os.chmod(tmp, 0o644)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
    except OSError as exc:
        raise FairVLMError(f"cannot write the figure {stem!r} to {out_dir}: {exc.strerror or exc}; "
                           "set $FAIRVLM_FIGURES (or out_dir=) to a writable folder") from None
    if show:
        try:
            from IPython import get_ipython
            from IPython.display import display

            if get_ipython() is not None:
                display(fig)
        except ImportError:  # pragma: no cover
            pass
    import matplotlib.pyplot as plt

    plt.close(fig)
    return SavedFigure(png)
