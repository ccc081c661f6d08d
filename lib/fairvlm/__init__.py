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

import logging as _logging
import warnings as _warnings

# peft (0.21) reads transformers' deprecated ``is_gradient_checkpointing`` whenever it wraps a
# model, and transformers 5 warns on every read. The warning is about peft's code, not the
# reader's; it would otherwise show on stderr under every cell that trains a LoRA adapter.
_warnings.filterwarnings("ignore", message=r".*`is_gradient_checkpointing` is deprecated",
                         category=FutureWarning)


class _DeepSpeedCpuProbe(_logging.Filter):
    """Drops the one warning deepspeed logs when it finds no accelerator and settles on the CPU.

    deepspeed (installed with the test extra, for the scale-out configs) is imported by
    accelerate's ``extract_model_from_parallel`` on every ``save_pretrained``; on a machine
    without a GPU its accelerator probe then prints this warning to stdout, into the output of
    any cell that saves a model. The choice it reports is the right one there; every other
    deepspeed message still shows."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Setting accelerator to CPU")


_logging.getLogger("DeepSpeed").addFilter(_DeepSpeedCpuProbe())

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
