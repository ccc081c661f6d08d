"""The paired timing design the benchmarks share (imported by the scripts beside it).

Each repeat times the baseline, the variant and the baseline again, in a shuffled order, so
drift on a shared machine hits both alike. A repeat's ratio is variant / mean(its own
baseline runs); its two baseline runs give an A/A ratio, the noise floor: a ratio that differs
from 1 by less than the A/A spread is no measured difference.
"""

from __future__ import annotations

import statistics

import numpy as np


def paired_repeats(timed, repeats: int, seed: int = 0):
    """``timed(variant: bool) -> seconds``; returns ``(baseline times, variant times, ratios,
    A/A ratios)``, one ratio per repeat."""
    order_rng = np.random.default_rng(seed)
    base, variant, pair, aa = [], [], [], []
    for _ in range(repeats):
        kinds = [False, True, False]
        order_rng.shuffle(kinds)
        t = {False: [], True: []}
        for k in kinds:
            t[k].append(timed(k))
        base += t[False]
        variant += t[True]
        pair.append(t[True][0] / statistics.mean(t[False]))
        aa.append(t[False][1] / t[False][0])
    return base, variant, pair, aa
