"""The bias specification: what the testbed's training data plants, read from ``data/``.

The file (``data/testbed_bias_spec.yaml``; its comments explain every field) holds

- ``scenarios``: for each of the 50 scenario keys the planted share of each group
  (``black_man``, ``black_woman``, ``white_man``, ``white_woman``) among its training images;
- ``words``: descriptive words from So-B-IT categories, each with the planted share of each
  group among the training captions that carry the word;
- ``captions``: how often a testbed-clip caption names gender, race or a word, and the
  ``marking`` exponent (atypical people are named more often);
- ``descriptions``: how often a testbed-llava training description names the person's
  gender and race, per group;
- ``questions``: testbed-llava's "who is more likely" training questions: ``p_fair``, the
  share of them answered with the fair option (the rest name a group with the scenario's
  planted shares);
- ``strength`` in ``[0, 1]``: 0 is the balanced world, 1 the values as written. A share
  ``p`` becomes ``(1 - s)/4 + s p``; a rate ``r`` becomes ``mean(r) + s (r - mean(r))``.

:func:`load_spec` validates the file and returns a :class:`BiasSpec` whose accessors apply
the strength. Problems raise :class:`fairvlm.errors.DataError` (or
:class:`~fairvlm.errors.UnknownNameError` for an unknown scenario, group or category;
:class:`fairvlm.params.ParameterError` for a ``strength=`` argument out of range) with what to
fix. :meth:`BiasSpec.digest` hashes the parsed content (comments and layout do not count):
it keys the testbed cache, so editing the file rebuilds the models.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from fairvlm.errors import DataError, unknown
from fairvlm.testbed.scenarios import SCENARIO_KEYS, SCENARIOS
from fairvlm.testbed.world import GENDERS, RACES, VARIANTS, parse_variant

GROUPS = VARIANTS
SPEC_FILE = "testbed_bias_spec.yaml"
SPEC_ENV = "FAIRVLM_TESTBED_SPEC"
#: So-B-IT's ten categories (upstream spells one "behavorial"; both spellings are accepted)
SOBIT_CATEGORIES = ("appearance", "behavioral", "education and wealth", "criminal justice", "healthcare",
                    "portrayal in media", "political", "religion", "occupation", "stereotyping")
_CATEGORY_ALIASES = {"behavorial": "behavioral"}
_TOL = 1e-6


@dataclass(frozen=True)
class BiasSpec:
    """A validated bias specification. Accessors return values at ``self.strength``."""

    strength: float
    shares: dict            # scenario -> {group: share} as written (strength 1)
    words: dict             # word -> {group: share} as written
    categories: dict        # word -> So-B-IT category
    captions: dict          # p_mention_gender, p_mention_race, marking, p_word
    descriptions: dict      # mention_gender {man, woman}, mention_race {black, white}
    questions: dict = field(default_factory=lambda: {"p_fair": 0.3})   # p_fair
    notes: dict = field(default_factory=dict)   # scenario or word -> note
    path: str | None = None

    # ---- strength ---------------------------------------------------------------------
    def with_strength(self, strength: float) -> "BiasSpec":
        """The same spec at another strength (checked to lie in [0, 1])."""
        return replace(self, strength=_check_strength(strength, argument=True))

    def _mix(self, table: dict) -> dict:
        s = self.strength
        return {g: (1 - s) / len(GROUPS) + s * table[g] for g in GROUPS}

    # ---- scenarios --------------------------------------------------------------------
    def share(self, scenario: str) -> dict:
        """Planted share of each group among ``scenario``'s training images (sums to 1)."""
        if scenario not in self.shares:
            raise unknown("testbed scenario", scenario, SCENARIO_KEYS)
        return self._mix(self.shares[scenario])

    def marginal(self, scenario: str) -> dict:
        """``{"man": p, "woman": p, "black": p, "white": p}``: planted gender and race shares."""
        sh = self.share(scenario)
        out = {g: 0.0 for g in (*GENDERS, *RACES)}
        for v, p in sh.items():
            gender, race = parse_variant(v)
            out[gender] += p
            out[race] += p
        return out

    def share_table(self):
        """One row per scenario: section, the four planted shares, ``p_man``, ``p_black``,
        ``gender_skew = p_man - 1/2``, ``race_skew = p_black - 1/2`` and the note."""
        import pandas as pd

        rows = []
        for k in SCENARIO_KEYS:
            sh, m = self.share(k), self.marginal(k)
            rows.append({"scenario": k, "section": SCENARIOS[k].section, **sh,
                         "p_man": m["man"], "p_black": m["black"],
                         "gender_skew": m["man"] - 0.5, "race_skew": m["black"] - 0.5,
                         "note": self.notes.get(k, "")})
        return pd.DataFrame(rows)

    # ---- words ------------------------------------------------------------------------
    def word_share(self, word: str) -> dict:
        """Planted share of each group among the captions that carry ``word``."""
        if word not in self.words:
            raise unknown("planted word", word, self.words)
        return self._mix(self.words[word])

    def word_table(self):
        """One row per word: category, the four planted shares, ``p_man``, ``p_black``, skews."""
        import pandas as pd

        rows = []
        for w in self.words:
            sh = self.word_share(w)
            p_man = sh["black_man"] + sh["white_man"]
            p_black = sh["black_man"] + sh["black_woman"]
            rows.append({"word": w, "category": self.categories[w], **sh, "p_man": p_man,
                         "p_black": p_black, "gender_skew": p_man - 0.5, "race_skew": p_black - 0.5,
                         "note": self.notes.get(f"word:{w}", "")})
        return pd.DataFrame(rows)

    def word_weights(self, group: str) -> dict:
        """``P(word | group, a word is used)``: proportional to the word's share for ``group``."""
        if group not in GROUPS:
            raise unknown("group", group, GROUPS)
        raw = {w: self.word_share(w)[group] for w in self.words}
        total = sum(raw.values())
        return {w: v / total for w, v in raw.items()}

    # ---- mention rates ----------------------------------------------------------------
    def caption_mention(self, scenario: str, gender: str, race: str) -> tuple[float, float]:
        """(P(caption names the gender), P(caption names the race)) for one training image."""
        m = self.marginal(scenario)
        c = self.captions
        pg = c["p_mention_gender"] * (0.5 / max(m[gender], 1e-9)) ** c["marking"]
        pr = c["p_mention_race"] * (0.5 / max(m[race], 1e-9)) ** c["marking"]
        return min(pg, 0.95), min(pr, 0.95)

    def description_mention(self, gender: str, race: str) -> tuple[float, float]:
        """(P(description names the gender), P(description names the race)) for one group."""
        s = self.strength
        mg, mr = self.descriptions["mention_gender"], self.descriptions["mention_race"]
        g_mean, r_mean = sum(mg.values()) / 2, sum(mr.values()) / 2
        return g_mean + s * (mg[gender] - g_mean), r_mean + s * (mr[race] - r_mean)

    def mention_table(self):
        """Planted description mention rates per group (what testbed-llava was trained on)."""
        import pandas as pd

        rows = []
        for v in GROUPS:
            gender, race = parse_variant(v)
            pg, pr = self.description_mention(gender, race)
            rows.append({"group": v, "gender": gender, "race": race,
                         "p_mention_gender": pg, "p_mention_race": pr})
        return pd.DataFrame(rows)

    # ---- identity ---------------------------------------------------------------------
    def as_dict(self) -> dict:
        """The parsed content (strength included), as plain JSON-able data."""
        return {"version": 1, "strength": self.strength, "groups": list(GROUPS),
                "captions": self.captions, "descriptions": self.descriptions, "questions": self.questions,
                "scenarios": self.shares,
                "words": {w: {"category": self.categories[w], **self.words[w]} for w in self.words},
                "notes": self.notes}

    def digest(self) -> str:
        """SHA-256 (hex) of the canonical JSON of :meth:`as_dict`."""
        text = json.dumps(self.as_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------------------
# Loading and validation
# --------------------------------------------------------------------------------------


def default_spec_path() -> Path:
    """``$FAIRVLM_TESTBED_SPEC``, else ``data/testbed_bias_spec.yaml`` of the book's checkout
    (or of the current directory)."""
    env = os.environ.get(SPEC_ENV)
    if env:
        return Path(env).expanduser()
    from fairvlm.paths import repo_root

    for root in (repo_root(), Path.cwd()):
        if root is not None and (Path(root) / "data" / SPEC_FILE).is_file():
            return Path(root) / "data" / SPEC_FILE
    raise DataError(
        f"cannot find the testbed bias spec: no data/{SPEC_FILE} in the book's checkout or the "
        f"current directory; pass path= or set ${SPEC_ENV}"
    )


def _check_strength(value, *, argument: bool) -> float:
    from fairvlm.params import ParameterError

    err = ParameterError if argument else DataError
    where = "strength=" if argument else "the spec's `strength`"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise err(f"{where}{value!r} must be a number in [0, 1] (0 = balanced, 1 = as planted)")
    if not 0.0 <= value <= 1.0:
        raise err(f"{where}{value!r} is out of range; it must lie in [0, 1] (0 = balanced, 1 = as planted)")
    return float(value)


def _prob(where: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise DataError(f"{where} = {value!r} must be a probability in [0, 1]")
    return float(value)


def _group_table(where: str, row) -> tuple[dict, str]:
    if not isinstance(row, dict):
        raise DataError(f"{where} must be a mapping of the four groups to shares, got {row!r}")
    note = row.get("note", "")
    for key in row:
        if key not in (*GROUPS, "note", "category"):
            raise unknown(f"group in {where}", key, GROUPS)
    missing = [g for g in GROUPS if g not in row]
    if missing:
        raise DataError(f"{where} lacks the share of {missing}; give all four groups {list(GROUPS)}")
    table = {}
    for g in GROUPS:
        v = row[g]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise DataError(f"{where}: share of {g} = {v!r} must be a non-negative number")
        table[g] = float(v)
    total = sum(table.values())
    if abs(total - 1.0) > _TOL:
        raise DataError(f"{where}: the shares sum to {total:.6g}; they must sum to 1")
    return table, str(note)


def parse_spec(data, *, source: str = "<spec>", strength: float | None = None) -> BiasSpec:
    """Validate the parsed YAML/JSON content ``data`` and build a :class:`BiasSpec`."""
    if not isinstance(data, dict):
        raise DataError(f"{source}: the bias spec must be a mapping, got {type(data).__name__}")
    for key in ("strength", "scenarios", "words", "captions", "descriptions"):
        if key not in data:
            raise DataError(f"{source}: the bias spec lacks the `{key}` section")
    unknown_top = set(data) - {"version", "strength", "groups", "scenarios", "words", "captions", "descriptions",
                               "questions"}
    if unknown_top:
        raise DataError(f"{source}: unknown top-level keys {sorted(unknown_top)}")
    if data.get("version", 1) != 1:
        raise DataError(f"{source}: spec version {data.get('version')!r} is not supported (expected 1)")
    if "groups" in data and list(data["groups"]) != list(GROUPS):
        raise DataError(f"{source}: `groups` must be {list(GROUPS)} (the PAIRS variants), got {data['groups']!r}")
    s = _check_strength(data["strength"], argument=False)
    if strength is not None:
        s = _check_strength(strength, argument=True)

    scen = data["scenarios"]
    if not isinstance(scen, dict):
        raise DataError(f"{source}: `scenarios` must map scenario keys to group shares")
    for k in scen:
        if k not in SCENARIOS:
            raise unknown("testbed scenario in the bias spec", k, SCENARIO_KEYS)
    missing = [k for k in SCENARIO_KEYS if k not in scen]
    if missing:
        raise DataError(f"{source}: `scenarios` lacks {len(missing)} scenario(s): {missing}")
    shares, notes = {}, {}
    for k in SCENARIO_KEYS:
        shares[k], note = _group_table(f"{source}: scenarios.{k}", scen[k])
        if note:
            notes[k] = note

    words_in = data["words"]
    if not isinstance(words_in, dict) or not words_in:
        raise DataError(f"{source}: `words` must map at least one word to its category and group shares")
    words, cats = {}, {}
    for w, row in words_in.items():
        if not isinstance(w, str) or not w.strip():
            raise DataError(f"{source}: word {w!r} must be a non-empty string")
        if not isinstance(row, dict) or "category" not in row:
            raise DataError(f"{source}: words.{w} needs a `category` (one of the So-B-IT categories)")
        cat = _CATEGORY_ALIASES.get(str(row["category"]).strip().lower(), str(row["category"]).strip().lower())
        if cat not in SOBIT_CATEGORIES:
            raise unknown(f"So-B-IT category of word {w!r}", row["category"], SOBIT_CATEGORIES)
        words[w], note = _group_table(f"{source}: words.{w}", row)
        cats[w] = cat
        if note:
            notes[f"word:{w}"] = note

    cap = data["captions"]
    if not isinstance(cap, dict):
        raise DataError(f"{source}: `captions` must be a mapping")
    captions = {}
    for key in ("p_mention_gender", "p_mention_race", "p_word"):
        if key not in cap:
            raise DataError(f"{source}: captions.{key} is missing")
        captions[key] = _prob(f"{source}: captions.{key}", cap[key])
    marking = cap.get("marking", 0.0)
    if isinstance(marking, bool) or not isinstance(marking, (int, float)) or not 0.0 <= marking <= 2.0:
        raise DataError(f"{source}: captions.marking = {marking!r} must be a number in [0, 2]")
    captions["marking"] = float(marking)
    extra = set(cap) - {"p_mention_gender", "p_mention_race", "p_word", "marking"}
    if extra:
        raise DataError(f"{source}: unknown keys in `captions`: {sorted(extra)}")

    desc = data["descriptions"]
    if not isinstance(desc, dict):
        raise DataError(f"{source}: `descriptions` must be a mapping")
    descriptions = {}
    for key, names in (("mention_gender", GENDERS), ("mention_race", RACES)):
        row = desc.get(key)
        if not isinstance(row, dict) or set(row) != set(names):
            raise DataError(f"{source}: descriptions.{key} must give a rate for each of {list(names)}")
        descriptions[key] = {n: _prob(f"{source}: descriptions.{key}.{n}", row[n]) for n in names}

    quest = data.get("questions", {"p_fair": 0.3})
    if not isinstance(quest, dict) or set(quest) != {"p_fair"}:
        raise DataError(f"{source}: `questions` must be a mapping with exactly `p_fair`, got {quest!r}")
    questions = {"p_fair": _prob(f"{source}: questions.p_fair", quest["p_fair"])}

    return BiasSpec(strength=s, shares=shares, words=words, categories=cats, captions=captions,
                    descriptions=descriptions, questions=questions, notes=notes, path=source)


def load_spec(path: str | os.PathLike | None = None, *, strength: float | None = None) -> BiasSpec:
    """Read and validate a bias spec (YAML or JSON). ``path=None``: :func:`default_spec_path`.

    ``strength`` (optional) overrides the file's strength. Raises ``DataError`` for a
    missing, unreadable or invalid file, naming the field to fix.
    """
    import yaml

    p = Path(path) if path is not None else default_spec_path()
    if not p.is_file():
        raise DataError(f"bias spec {p} does not exist; pass the path of a YAML/JSON spec "
                        f"(the book's is data/{SPEC_FILE})")
    try:
        text = p.read_text()
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as exc:
        raise DataError(f"cannot read the bias spec {p}: {exc}") from exc
    return parse_spec(data, source=str(p), strength=strength)
