"""One theme and one ``savefig`` for every figure in the book."""

from __future__ import annotations

from pathlib import Path

import matplotlib

from fairvlm.paths import figures_dir

_THEME_SET = False


def set_theme() -> None:
    """The book's single theme (seaborn paper context, ticks, colour-blind palette)."""
    global _THEME_SET
    import seaborn as sns

    sns.set_theme(context="paper", style="ticks", palette="colorblind")
    matplotlib.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "svg.hashsalt": "fairvlm"})
    _THEME_SET = True


def savefig(fig, stem: str, *, show: bool = True, out_dir: Path | None = None) -> Path:
    """Write ``figures/<stem>.png`` and ``.pdf`` byte-stably, then show the figure inline.

    ``stem`` is ``<NN_slug>_<name>``, e.g. ``"07_clip_heads_head_ap"``. Metadata that
    changes between runs (software version, creation date) is stripped so the same
    numbers give the same bytes.
    """
    out_dir = Path(out_dir) if out_dir is not None else figures_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{stem}.png"
    fig.savefig(png, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(
        out_dir / f"{stem}.pdf", bbox_inches="tight",
        metadata={"Creator": None, "Producer": None, "CreationDate": None},
    )
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
    return png
