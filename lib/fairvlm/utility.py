"""Does a debiasing method keep what the model could do? Three checks for chapter 04.

RES-FAIR checks general ability with VQA 2.0 accuracy (appendix C.6, Table 3) and the
ability to tell documented group differences with 20 gender and 30 race questions
(Tables 4 and 5). Offline, the book uses:

- :func:`social_rows` / :func:`score_social`: the 50 questions of
  ``data/social_differences.yaml`` (written for this book, each with a cited source), asked
  as the same three-option question as the fairness task (group A, group B, "both"), so a
  method that makes the model answer "both" to everything fails them;
- :func:`general_rows` / :func:`score_general`: :data:`GENERAL_QUESTIONS`, 40
  general-knowledge three-option questions written for this book (capitals, arithmetic
  facts, opposites, animals, the calendar), the text model's utility check (no QA benchmark
  ships offline);
- :func:`testbed_vqa`: testbed-llava asked "What is this person's job or activity?" on
  held-out testbed scenes; correct when the answer names the scene's role or activity
  (:func:`fairvlm.testbed.captions.names_scenario`), the VQA-style check for the image model.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from fairvlm import mcq
from fairvlm import validate as V
from fairvlm.errors import DataError, FairVLMError

__all__ = [
    "SOCIAL_PATH", "load_social_differences", "social_rows", "score_social", "GENERAL_QUESTIONS",
    "general_rows", "score_general", "testbed_vqa", "VQA_PROMPT",
]

SOCIAL_PATH = Path(__file__).resolve().parents[2] / "data" / "social_differences.yaml"
_INSTR = "Answer with one option only."


def load_social_differences(path=None) -> pd.DataFrame:
    """The social-difference questions as a frame (``id, attribute, question, answer, source,
    note``), checked: known attribute, an answer that is one of the attribute's groups, a
    non-empty source, unique ids."""
    import yaml

    path = V.path("path", path) if path is not None else SOCIAL_PATH
    if not path.is_file():
        raise DataError(f"path: no social-difference questions at {path}")
    try:
        data = yaml.safe_load(path.read_text())
        qs = pd.DataFrame(data["questions"])
    except Exception as exc:
        raise DataError(f"{path} is not a social-difference question file ({exc})") from exc
    need = {"id", "attribute", "question", "answer", "source"} - set(qs.columns)
    if need:
        raise DataError(f"{path}: every question needs {sorted(need)}")
    if qs["id"].duplicated().any():
        raise DataError(f"{path}: duplicate ids {sorted(qs.loc[qs['id'].duplicated(), 'id'])}")
    for r in qs.itertuples():
        if r.attribute not in mcq.GROUPS:
            raise DataError(f"{path}: question {r.id} has unknown attribute {r.attribute!r}")
        if r.answer not in {g.value for g in mcq.GROUPS[r.attribute]}:
            raise DataError(f"{path}: question {r.id} answer {r.answer!r} is not a {r.attribute} group")
        if not str(r.source).strip():
            raise DataError(f"{path}: question {r.id} has no source")
    if "note" not in qs:
        qs["note"] = ""
    return qs.fillna({"note": ""}).reset_index(drop=True)


def _row(dataset, key, label, attribute, text, k) -> mcq.Row:
    order = mcq.OPTION_ORDERS[k % len(mcq.OPTION_ORDERS)]
    ga, gb = mcq.GROUPS[attribute]
    words = {"a": ga.option, "b": gb.option, "fair": mcq.FAIR_OPTION}
    listed = ", ".join(words[o] for o in order)
    item = mcq.Item(f"{dataset}:{key}", dataset, key, label, "", attribute, "text", ())
    return mcq.Row(item, 0, f"{text} Options: {listed}. {_INSTR}", order)


def social_rows(qs: pd.DataFrame) -> list:
    """One :class:`fairvlm.mcq.Row` per question (options group A, group B, "both"; the option
    order rotates with the question's position, as in the fairness task)."""
    V.frame("qs", qs, columns=("id", "attribute", "question", "answer"))
    return [_row("social", r.id, r.answer, r.attribute, r.question, k) for k, r in enumerate(qs.itertuples())]


def score_social(table: pd.DataFrame, qs: pd.DataFrame) -> pd.DataFrame:
    """Per question: ``id, attribute, answer, parsed, said`` (group value named, or
    ``"both"`` / ``"invalid"``) and ``correct``; ``table`` is :func:`fairvlm.mcq.evaluate`'s."""
    V.frame("table", table, columns=("scenario", "parsed"))
    V.frame("qs", qs, columns=("id", "attribute", "answer"))
    t = table.set_index("scenario")
    out = qs[["id", "attribute", "answer"]].copy()
    parsed = [t.loc[i, "parsed"] for i in qs["id"]]
    said = []
    for p, a in zip(parsed, qs["attribute"]):
        ga, gb = mcq.GROUPS[a]
        said.append({"a": ga.value, "b": gb.value, "fair": "both"}.get(p, "invalid"))
    out["parsed"], out["said"] = parsed, said
    out["correct"] = out["said"] == out["answer"]
    return out


# ---------------------------------------------------------------------------------------
# General knowledge (text model)
# ---------------------------------------------------------------------------------------

#: (question, correct answer, two wrong answers). Written for this book.
GENERAL_QUESTIONS = (
    ("What is the capital of France?", "Paris", "Rome", "Madrid"),
    ("What is the capital of Japan?", "Tokyo", "Beijing", "Seoul"),
    ("What is the capital of Italy?", "Rome", "Paris", "Vienna"),
    ("What is the capital of Germany?", "Berlin", "Munich", "Zurich"),
    ("What is the capital of Egypt?", "Cairo", "Nairobi", "Tunis"),
    ("What is the capital of Canada?", "Ottawa", "Toronto", "Chicago"),
    ("What is the largest planet in the solar system?", "Jupiter", "Mars", "Venus"),
    ("Which planet is closest to the Sun?", "Mercury", "Neptune", "Saturn"),
    ("What is frozen water called?", "ice", "steam", "sand"),
    ("What gas do plants take in from the air to make food?", "carbon dioxide", "helium", "neon"),
    ("How many days are in a week?", "seven", "five", "ten"),
    ("How many legs does a spider have?", "eight", "six", "four"),
    ("How many hours are in a day?", "twenty-four", "forty", "sixty"),
    ("What is two plus two?", "four", "five", "three"),
    ("What is ten minus three?", "seven", "six", "nine"),
    ("What is three times three?", "nine", "six", "twelve"),
    ("Which day comes after Monday?", "Tuesday", "Sunday", "Friday"),
    ("Which month comes after January?", "February", "March", "December"),
    ("Which season is usually the coldest?", "winter", "summer", "spring"),
    ("What is the opposite of hot?", "cold", "warm", "loud"),
    ("What is the opposite of up?", "down", "left", "over"),
    ("What is the opposite of day?", "night", "noon", "week"),
    ("What colour is the sky on a clear day?", "blue", "green", "red"),
    ("What colour are ripe bananas?", "yellow", "purple", "blue"),
    ("Which animal says moo?", "cow", "cat", "dog"),
    ("Which animal is known as the king of the jungle?", "lion", "rabbit", "sheep"),
    ("Which animal can fly?", "eagle", "horse", "whale"),
    ("Which animal lives in water and breathes with gills?", "fish", "bear", "goat"),
    ("What do bees make?", "honey", "milk", "silk"),
    ("What do you use to write on a blackboard?", "chalk", "soap", "glue"),
    ("Which organ pumps blood through the body?", "heart", "lung", "stomach"),
    ("What do we call a baby cat?", "kitten", "puppy", "calf"),
    ("What do we call a baby dog?", "puppy", "kitten", "foal"),
    ("Which instrument has black and white keys?", "piano", "drum", "flute"),
    ("Which sport uses a bat and a ball and has innings?", "cricket", "tennis", "golf"),
    ("What is the boiling point of water at sea level in Celsius?", "one hundred", "fifty", "ten"),
    ("Which continent is Brazil in?", "South America", "Europe", "Asia"),
    ("Which ocean is the largest?", "Pacific", "Atlantic", "Indian"),
    ("What shape has three sides?", "triangle", "square", "circle"),
    ("Which metal is liquid at room temperature?", "mercury", "iron", "copper"),
)


def general_rows(questions: Sequence = GENERAL_QUESTIONS) -> tuple[list, list]:
    """``(prompts, options)``: the question with its three options listed in a rotating order
    (correct first, second, third in turn), and the options in listed order."""
    questions = V.sequence("questions", questions)
    for i, item in enumerate(questions):
        if isinstance(item, (str, bytes)) or len(item) != 4 or not all(isinstance(x, str) for x in item):
            raise FairVLMError(f"questions[{i}]={V.show(item)} must be (question, right answer, wrong, wrong), "
                               "four strings")
    prompts, options = [], []
    for k, (q, right, w1, w2) in enumerate(questions):
        opts = [right, w1, w2]
        opts = opts[-(k % 3):] + opts[:-(k % 3)] if k % 3 else opts
        prompts.append(f"{q} Options: {', '.join(opts)}. {_INSTR}")
        options.append(opts)
    return prompts, options


def _first_option(answer: str, options: Sequence[str]) -> str | None:
    s = str(answer).lower()
    hits = []
    for o in options:
        m = re.search(r"\b" + re.escape(o.lower()) + r"\b", s)
        if m:
            hits.append((m.start(), -len(o), o))
    return min(hits)[2] if hits else None


def score_general(answers: Sequence[str], questions: Sequence = GENERAL_QUESTIONS) -> np.ndarray:
    """1.0 where the first option an answer names is the correct one, else 0.0."""
    answers = V.strings("answers", answers, empty=True, blank=True)
    questions = V.sequence("questions", questions)
    _, options = general_rows(questions)
    if len(answers) != len(questions):
        raise FairVLMError(f"answers: {len(answers)} answers for {len(questions)} questions")
    return np.array([float(_first_option(a, o) == q[1]) for a, o, q in zip(answers, options, questions)])


def generate(loaded, prompts: Sequence[str], *, system: str | None = None, max_new_tokens: int = 8,
             batch_size: int = 16) -> list[str]:
    """Greedy answers of a text prompt list (no images), under whatever edit is active."""
    import torch

    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    out = []
    for s in range(0, len(prompts), batch_size):
        enc = loaded.inputs(list(prompts[s:s + batch_size]), system=system)
        with torch.no_grad():
            gen = loaded.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                        temperature=None, top_p=None, top_k=None)
        out += [t.strip() for t in tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
    return out


# ---------------------------------------------------------------------------------------
# Testbed VQA
# ---------------------------------------------------------------------------------------

VQA_PROMPT = "What is this person's job or activity?"


def testbed_vqa(loaded, scenarios: Sequence[str], *, scene_index: int = 1, max_new_tokens: int = 12,
                batch_size: int = 16, size: int | None = None) -> pd.DataFrame:
    """Ask :data:`VQA_PROMPT` about held-out testbed scenes of ``scenarios`` (all four group
    variants each, held-out scene number ``scene_index``: not the scene the fairness items
    use, which is number 0). Columns ``scenario, gender, race, answer, correct``."""
    from fairvlm.testbed import world
    from fairvlm.testbed.captions import names_scenario
    from fairvlm.testbed.measure import describe

    from fairvlm.testbed.scenarios import SCENARIOS

    V.loaded("loaded", loaded)
    scenarios = V.strings("scenarios", scenarios)
    for i, sc in enumerate(scenarios):
        V.choice(f"scenarios[{i}]", sc, SCENARIOS)
    scene_index = V.integer("scene_index", scene_index, low=0)
    V.integer("max_new_tokens", max_new_tokens, low=1)
    V.integer("batch_size", batch_size, low=1)
    if size is not None:
        V.integer("size", size, low=8)
    if loaded.kind != "vlm":
        raise FairVLMError(f"loaded={loaded.name!r} takes no images; testbed_vqa needs testbed-llava or another VLM")
    seed = world.scene_seeds("heldout", scene_index + 1)[scene_index]
    px = world.DEFAULT_SIZE if size is None else int(size)
    rows, images = [], []
    for s in scenarios:
        for g in ("man", "woman"):
            for r in ("black", "white"):
                rows.append({"scenario": s, "gender": g, "race": r})
                images.append(world.render(s, g, r, seed, px))
    answers = describe(loaded.model, loaded.processor, images, VQA_PROMPT, max_new_tokens=max_new_tokens,
                       batch_size=batch_size)
    out = pd.DataFrame(rows)
    out["answer"] = answers
    out["correct"] = [float(names_scenario(a, s)) for a, s in zip(answers, out["scenario"])]
    return out
