"""The counterfactual testbed: a synthetic world with a planted bias, and models trained on it.

No real CLIP or LVLM weights can be had offline, so the book's embedded profile runs on a
*model organism of bias*: rendered scenes whose group composition we plant, vision models
trained on them, joined to two real pretrained language models (all-MiniLM-L6-v2 and
SmolLM2-135M-Instruct). Because the planted bias is known, every method can be checked
against ground truth. Nothing measured here is a measurement of the real world.

The world (:mod:`fairvlm.testbed.world`, :mod:`fairvlm.testbed.scenarios`)
    ``render(scenario, gender, race, scene_seed, size=64) -> PIL.Image`` draws one scene for one
    group. ``scenario`` is one of the 50 PAIRS keys (:data:`SCENARIO_KEYS`; sections
    ``occupations``, ``status``, ``potential_crime``), ``gender`` in ``("man", "woman")``, ``race``
    in ``("black", "white")``. The scene seed fixes everything else (camera, pose, clothes, hair,
    background, clutter, props, noise); the four variants (:data:`VARIANTS`, PAIRS names
    ``black_man`` ...) of a scene differ only on the person: skin tone and gender cues
    (:func:`person_mask` bounds every changed pixel). Same arguments, same bytes.
    :func:`render_variants` draws a counterfactual quadruplet. Splits by scene seed
    (:data:`SPLITS`: ``train`` seeds ``[0, 1e6)``, ``heldout`` seeds ``[1e6, 2e6)``;
    :func:`scene_seeds`, :func:`split_of`). :func:`gallery` lists a balanced held-out gallery
    (every scenario x scene x variant) and :func:`render_rows` renders it.
The bias spec (:mod:`fairvlm.testbed.spec`, file ``data/testbed_bias_spec.yaml``)
    ``load_spec(path=None, strength=None) -> BiasSpec``: per scenario the planted share of each
    group in the training images (``spec.share(k)``, ``spec.share_table()``), planted
    group-word associations for nine So-B-IT words (``spec.word_share(w)``,
    ``spec.word_table()``), caption and description mention rates (``spec.mention_table()``),
    and one ``strength`` knob in [0, 1] (0 = balanced). This file is the ground truth.
Text (:mod:`fairvlm.testbed.captions`)
    ``caption`` (testbed-clip training captions), ``description`` and ``qa_pairs`` (testbed-llava
    targets), ``zero_shot_prompts`` (one neutral prompt per scenario), ``names_scenario`` and
    ``mentions`` (scoring generated text).
Worlds and shipped weights (:mod:`fairvlm.testbed.artifacts`)
    :data:`WORLDS`: ``default`` (the spec as written), ``strength-0.5`` and ``strength-0`` (nothing
    planted: the negative control). ``world=`` on every load, else ``$FAIRVLM_WORLD``, else
    ``default``; :func:`world_spec` is a world's ground truth. The trained deltas of the ``full``
    models of each world ship in ``data/testbed`` with a checksummed manifest, so a load installs
    them instead of training; ``python -m fairvlm.testbed models`` (``make models``) rebuilds them.
The models (:mod:`fairvlm.testbed.train`)
    ``build(size, world=...)`` with ``size`` in ``{"full", "smoke"}`` installs the shipped models or
    trains them, and caches both (``python -m fairvlm.testbed build --size smoke`` does the same);
    ``load_hf("testbed-clip" | "testbed-llava", size="full") -> (hf_model, processor)`` loads them
    (building first when missing); ``fairvlm.models.load("testbed-clip", size=...)`` wraps this.
    testbed-clip is a :class:`~fairvlm.testbed.dual.MeanPooledDualEncoder` (a
    ``VisionTextDualEncoderModel`` whose text features are mean-pooled, as all-MiniLM-L6-v2 was
    trained; a ``CLIPVisionModel`` with 8 heads per layer trained from scratch + the frozen MiniLM
    text tower (LiT's locked tower, on the text side), with counterfactual twins in every batch and an auxiliary group loss
    weighted so that it carries no scenario-group link); testbed-llava a
    ``LlavaForConditionalGeneration`` (that vision tower read at layer -2 + a trained projector +
    SmolLM2-135M-Instruct tuned with a LoRA adapter that is merged into the weights). Prompts for
    it: :func:`llava_prompt`. ``training_log(size)`` returns the build record (timings and
    training curves). The trainer takes the pretrained weights from :mod:`fairvlm.embedded` and
    never imports :mod:`fairvlm.models`, so the layers stack one way.
Measuring (:mod:`fairvlm.testbed.measure`)
    embeddings, zero-shot, probes (on embeddings or on aligned crops of the person), retrieval
    skew against the planted skew with bootstrap intervals, descriptions, and testbed-llava's
    order-balanced "who is more likely" lean (:func:`~fairvlm.testbed.measure.who_lean`).

What the world does not model: two genders and two races as binary categories; race reduced to a
skin tone and gender to hair, lips, a beard and body outline in cartoon form (hidden by design
under the ski mask); no faces, ages, body types, cultures or contexts beyond the 50 drawn
scenarios; tiny vision models (about 1M parameters) trained for minutes; associations that are
taught (testbed-llava's "who is more likely" answers are drawn from the spec), not inferred from
co-occurrence. Results on it show what a method recovers when the bias is known, not how large
any bias is in real data or real models.
"""

from fairvlm.testbed.artifacts import WORLD_ENV, WORLDS, current_world, world_spec
from fairvlm.testbed.captions import (
    caption,
    description,
    mentions,
    names_scenario,
    qa_pairs,
    zero_shot_prompts,
)
from fairvlm.testbed.scenarios import SCENARIO_KEYS, SCENARIOS, SECTIONS, Scenario, keys_by_section, scenario
from fairvlm.testbed.spec import GROUPS, BiasSpec, default_spec_path, load_spec, parse_spec
from fairvlm.testbed.store import build, describe_build, is_built, load_hf, loaded_builds, testbed_dir, training_log
from fairvlm.testbed.train import (
    NAMES,
    SIZES,
    cache_key,
    clip_image_processor,
    llava_prompt,
    pixel_values,
    training_items,
)
from fairvlm.testbed.world import (
    DEFAULT_SIZE,
    GENDERS,
    RACES,
    SPLITS,
    VARIANTS,
    gallery,
    parse_variant,
    person_box,
    person_mask,
    render,
    render_array,
    render_rows,
    render_variants,
    scene_seeds,
    split_of,
    variant_name,
)

__all__ = [
    "BiasSpec", "DEFAULT_SIZE", "GENDERS", "GROUPS", "NAMES", "RACES", "SCENARIOS", "SCENARIO_KEYS", "SECTIONS",
    "SIZES", "SPLITS", "Scenario", "VARIANTS", "WORLDS", "WORLD_ENV", "build", "cache_key", "caption",
    "clip_image_processor", "current_world", "default_spec_path", "describe_build", "description", "gallery", "is_built", "keys_by_section", "llava_prompt", "load_hf", "loaded_builds",
    "load_spec", "mentions", "names_scenario", "parse_spec", "parse_variant", "person_box", "person_mask", "pixel_values",
    "qa_pairs", "render", "render_array", "render_rows", "render_variants", "scenario", "scene_seeds",
    "split_of", "testbed_dir", "training_items", "training_log", "variant_name", "world_spec", "zero_shot_prompts",
]
