"""fairvlm: the library behind the book *Social bias in vision-language models*.

Chapters import and call; this package computes. Modules:

- ``fairvlm.params``   -- notebook parameter validation (``PROFILE``, ``SEED``, ...)
- ``fairvlm.results``  -- headline numbers and per-item tables with provenance
- ``fairvlm.plotting`` -- one theme and one byte-stable ``savefig``
- ``fairvlm.data``     -- PAIRS, SocialCounterfactuals and So-B-IT loaders
- ``fairvlm.models``   -- embedded, tiny and paper models behind one ``load(name)``
- ``fairvlm.hooks``    -- ``capture`` / ``edit`` context managers at named sites
- ``fairvlm.testbed``  -- the counterfactual world with a planted bias
- ``fairvlm.metrics``  -- fairness and utility metrics
- ``fairvlm.confidence`` -- the readings of RES-FAIR's confidence KL, temperature scaling
- ``fairvlm.resfair``  -- the RES-FAIR post-hoc update during generation, fit/eval splits
- ``fairvlm.finetune`` -- LoRA and DPO + KL baselines (trl, peft); ``accelerate launch -m fairvlm.finetune``
- ``fairvlm.utility``  -- general-ability and social-difference checks of chapter 04
"""

from fairvlm.errors import FairVLMError

import warnings as _warnings

# peft (0.21) reads transformers' deprecated ``is_gradient_checkpointing`` whenever it wraps a
# model, and transformers 5 warns on every read. The warning is about peft's code, not the
# reader's; it would otherwise show on stderr under every cell that trains a LoRA adapter.
_warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated",
                         category=FutureWarning)

__version__ = "0.1.0"

__all__ = ["FairVLMError", "__version__", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so the same parameters give the same tables."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return
    torch.manual_seed(seed)
