"""One wall-clock timer with an A/A noise check, for every "this method costs little" claim.

:func:`time_ab` runs three conditions interleaved ``repeats`` times in this process:
``plain`` (the unedited computation), ``method`` and ``plain`` again (the A/A run). Two
identical runs differ by the machine's noise, so a method's extra cost means something only
beside that difference. Both readings a chapter needs come from the same measurement:

- the **ratio** of medians, method / plain, with a bootstrap interval over repeats, and the
  A/A ratio (plain again / plain) with its interval; ``valid`` is False when the method is
  *faster* than plain beyond the A/A band (an added step cannot speed a run up, so such a
  timing measures the machine);
- the **extra seconds per 1,000 inputs** (median difference, with its interval) and the A/A
  difference in the same unit.

Chapter 07 (``fairvlm.retrieval.time_edits``) judges the ratio; chapter 08
(``fairvlm.headtohead.time_per_1000``) tabulates seconds per 1,000 inputs. Both call
:func:`time_ab`. Wall-clock numbers on a shared machine are noisy: report the A/A column.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from fairvlm.params import ParameterError

__all__ = ["time_ab"]


def _median_boot(a: np.ndarray, b: np.ndarray, fn, n_boot: int, rng) -> tuple[float, float]:
    n = len(a)
    vals = [fn(np.median(a[rng.integers(0, n, n)]), np.median(b[rng.integers(0, n, n)])) for _ in range(n_boot)]
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def time_ab(plain: Callable[[], object], method: Callable[[], object], *, repeats: int = 5,
            n_inputs: int | None = None, warmup: bool = True, n_boot: int = 1000, seed: int = 0,
            clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time ``method`` against ``plain`` with an A/A run of ``plain`` (see the module).

    ``n_inputs``: how many inputs one call processes (for the per-1,000 columns; None leaves
    them out). ``warmup`` runs ``plain`` once before timing. Returns ``{"times"`` (the raw
    seconds per condition: ``plain``, ``method``, ``again``), ``"median_plain_s"``,
    ``"median_method_s"``, ``"median_again_s"``, ``"ratio"``, ``"interval"`` (its 95%
    bootstrap interval, widened to hold the estimate), ``"noise"`` (A/A ratio),
    ``"noise_interval"``, ``"valid"``, ``"repeats"``, and with ``n_inputs``:
    ``"plain_s_per_1000"``, ``"extra_s_per_1000"``, ``"extra_lo"``, ``"extra_hi"``,
    ``"noise_s_per_1000"``, ``"noise_lo"``, ``"noise_hi"``, ``"n_inputs"``}``.
    """
    if not callable(plain) or not callable(method):
        raise ParameterError("plain and method must be callables that run the computation once")
    if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 3:
        raise ParameterError(f"repeats={repeats!r} must be an integer of at least 3")
    if n_inputs is not None and (isinstance(n_inputs, bool) or not isinstance(n_inputs, (int, np.integer))
                                 or n_inputs < 1):
        raise ParameterError(f"n_inputs={n_inputs!r} must be a positive count (or None)")
    times: dict[str, list] = {"plain": [], "method": [], "again": []}
    if warmup:
        plain()
    for _ in range(int(repeats)):
        for key, fn in (("plain", plain), ("method", method), ("again", plain)):
            t0 = clock()
            fn()
            times[key].append(clock() - t0)
    p, m, g = (np.asarray(times[k], dtype=float) for k in ("plain", "method", "again"))
    rng = np.random.default_rng(seed)
    ratio = float(np.median(m) / np.median(p))
    noise = float(np.median(g) / np.median(p))
    r_lo, r_hi = _median_boot(m, p, lambda x, y: x / y, n_boot, rng)
    n_lo, n_hi = _median_boot(g, p, lambda x, y: x / y, n_boot, rng)
    out = {"times": {k: list(map(float, v)) for k, v in times.items()},
           "median_plain_s": float(np.median(p)), "median_method_s": float(np.median(m)),
           "median_again_s": float(np.median(g)),
           "ratio": ratio, "interval": (min(r_lo, ratio), max(r_hi, ratio)),
           "noise": noise, "noise_interval": (min(n_lo, noise), max(n_hi, noise)),
           "valid": bool(ratio >= min(n_lo, noise)), "repeats": int(repeats)}
    if n_inputs is not None:
        k = 1000.0 / int(n_inputs)
        extra = float(np.median(m) - np.median(p)) * k
        a_noise = float(np.median(g) - np.median(p)) * k
        e_lo, e_hi = (x * k for x in _median_boot(m, p, lambda x, y: x - y, n_boot, rng))
        g_lo, g_hi = (x * k for x in _median_boot(g, p, lambda x, y: x - y, n_boot, rng))
        out.update({"plain_s_per_1000": float(np.median(p)) * k, "extra_s_per_1000": extra,
                    "extra_lo": float(min(e_lo, extra)), "extra_hi": float(max(e_hi, extra)),
                    "noise_s_per_1000": a_noise, "noise_lo": float(min(g_lo, a_noise)),
                    "noise_hi": float(max(g_hi, a_noise)), "n_inputs": int(n_inputs)})
    return out
