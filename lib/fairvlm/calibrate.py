"""Calibration: the book run on a world where nothing is planted.

A verdict protocol earns trust by what it says when there is nothing to find. The testbed
can be built at ``strength: 0`` (every group equally often in every scenario; the groups
stay visible), and a sound protocol must then award **no** "reproduced" to a testbed row
that claims a bias exists or that a method removes one. This module executes the chapters
on that world and on the default one, collects every verdict table they write, and
reports::

    python -m fairvlm.calibrate                       # every chapter, embedded profile
    python -m fairvlm.calibrate --chapters 01,02 --profile smoke
    python -m fairvlm.calibrate --collect-only        # reuse the per-world results already written

Worlds are chosen with ``$FAIRVLM_WORLD`` (``default``, ``strength-0.5``, ``strength-0``),
which every testbed model load honours; each world's results and figures go to their own
folder under ``--work-dir`` (``$FAIRVLM_RESULTS`` / ``$FAIRVLM_FIGURES`` are set for the
kernel), so the default book's ``results/`` is never overwritten.

``results/calibration.json`` holds the false-positive count on the strength-0 world
(reproduced verdicts on testbed rows whose claim asserts a bias or its removal, and, to be
safe, on testbed rows from the older rule that do not say what they assert), the verdict
counts per world, and every chapter that failed. The command exits with status 1 when
the false-positive count is above 0 or a chapter failed.

:func:`paper_vs_book` turns the two worlds' verdicts into the book's *Paper vs this book*
page: every claim in one table with its chapter, effect against control, and the verdict
on each world.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from fairvlm import validate
from fairvlm.errors import FairVLMError, ParameterError, argument_parser, cli_main
from fairvlm.verdicts import ALL_VERDICTS, BIAS_KINDS

#: The environment variable every testbed load reads (see ``fairvlm.testbed``).
WORLD_ENV = "FAIRVLM_WORLD"
#: The world with nothing planted, and the book's default world.
NULL_WORLD, DEFAULT_WORLD = "strength-0", "default"
#: Verdict words in the order a prefix is matched (longest first).
_PREFIXES = sorted(ALL_VERDICTS, key=len, reverse=True)


def _known_worlds() -> tuple[str, ...]:
    from fairvlm.testbed.artifacts import WORLDS

    return tuple(WORLDS)


def normalise_verdict(text) -> str:
    """The protocol word a verdict cell starts with (``"partly (images absent)"`` ->
    ``"partly"``), or ``"unknown"`` (also for an empty cell: None or NaN)."""
    if text is None or isinstance(text, float) and math.isnan(text):
        return "unknown"
    t = validate.text("text", text, empty=True).strip().lower()
    for w in _PREFIXES:
        if t.startswith(w):
            return w
    return "unknown"


# ---------------------------------------------------------------------------------------
# Collecting verdicts from written results
# ---------------------------------------------------------------------------------------


def _chapter_models(results: Path, slug: str) -> list[str]:
    try:
        rec = json.loads((results / f"{slug}.json").read_text())
        return [str(m) for m in rec.get("provenance", {}).get("models", [])]
    except (OSError, ValueError):
        return []


def chapter_commits(results: Path) -> dict[str, str]:
    """``{chapter slug: short git commit}`` of the run that wrote each ``<slug>.json`` under
    ``results`` ("unknown" where the record has none)."""
    results = validate.existing_dir("results", results)
    out = {}
    for rec_path in sorted(Path(results).glob("*.json")):
        try:
            rec = json.loads(rec_path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(rec, dict) and "chapter" in rec:
            out[str(rec["chapter"])] = str(rec.get("git_commit") or "unknown")[:7]
    return out


def collect_verdicts(results: Path) -> pd.DataFrame:
    """Every verdict row the chapters wrote under ``results`` (``<slug>/<table>.csv`` files
    with ``claim`` and ``verdict`` columns), one line per row: ``chapter, table, claim, key,
    verdict, asserts, bias_claim, testbed, effect_vs_control`` plus ``raw`` (the verdict cell
    as written).

    ``testbed``: the row is about a testbed model (a text cell names one, or every model of
    the chapter's provenance is one). ``bias_claim``: True / False from the protocol's row,
    None for rows of the older rule (``asserts`` "unclassified" or absent).
    """
    results = validate.existing_dir("results", results)
    out = []
    for table in sorted(results.glob("*/*.csv")):
        slug = table.parent.name
        try:
            df = pd.read_csv(table)
        except (OSError, ValueError, pd.errors.EmptyDataError):
            continue
        if not {"claim", "verdict"} <= set(df.columns) or df.empty:
            continue
        models = _chapter_models(results, slug)
        all_testbed = bool(models) and all("testbed" in m for m in models)
        seen: dict = {}
        for _, r in df.iterrows():
            cell = str(r.get("cell", "")) if pd.notna(r.get("cell", "")) else ""
            extra = [str(r[c]) for c in ("reading", "model + data", "model", "paper") if c in df.columns
                     and pd.notna(r[c]) and c != "paper"]
            base_key = " | ".join([str(r["claim"]), cell, *extra])
            seen[base_key] = seen.get(base_key, 0) + 1
            key = base_key + (f" #{seen[base_key]}" if seen[base_key] > 1 else "")
            text = " ".join(str(v) for v in r.values if isinstance(v, str))
            asserts = str(r["asserts"]) if "asserts" in df.columns and pd.notna(r.get("asserts")) else "unclassified"
            out.append({"chapter": slug, "table": table.stem, "claim": str(r["claim"]), "cell": cell, "key": key,
                        "verdict": normalise_verdict(r["verdict"] if isinstance(r["verdict"], str) or pd.isna(
                            r["verdict"]) else str(r["verdict"])), "raw": str(r["verdict"]), "asserts": asserts,
                        "bias_claim": (asserts in BIAS_KINDS) if asserts != "unclassified" else None,
                        "testbed": all_testbed or "testbed" in text.lower(),
                        "effect_vs_control": effect_vs_control(r)})
    cols = ["chapter", "table", "claim", "cell", "key", "verdict", "raw", "asserts", "bias_claim", "testbed",
            "effect_vs_control"]
    return pd.DataFrame(out, columns=cols)


def _num(x) -> str:
    try:
        return f"{float(x):.3g}"
    except (TypeError, ValueError):
        return str(x)


def effect_vs_control(r: Mapping) -> str:
    """``effect vs control: difference [interval]`` from a verdict row (protocol or older
    layout); empty when the row has neither."""
    if not isinstance(r, (Mapping, pd.Series)):
        raise ParameterError(f"r={validate.show(r)} is not valid: it must be one verdict row (a dict or a pandas row)")
    def has(c):
        return c in r and pd.notna(r[c]) and str(r[c]) != ""

    if has("effect") and has("control"):
        s = f"{_num(r['effect'])} vs {_num(r['control'])}"
        if has("difference"):
            s += f": {_num(r['difference'])}"
            if has("difference interval") and r["difference interval"] != "n/a":
                s += f" {r['difference interval']}"
        return s
    if has("effect") and has("null"):
        iv = f" {r['interval']}" if has("interval") and r["interval"] != "n/a" else ""
        niv = f" {r['null interval']}" if has("null interval") and r["null interval"] != "n/a" else ""
        return f"{_num(r['effect'])}{iv} vs {_num(r['null'])}{niv}"
    return ""


def false_positives(verdicts: pd.DataFrame) -> pd.DataFrame:
    """The rows of a world with nothing planted that count as false positives: testbed rows
    judged "reproduced" whose claim asserts a bias or its removal, or whose claim does not
    say what it asserts (older rule: counted, to be safe)."""
    _check_verdicts("verdicts", verdicts, ("verdict", "testbed", "bias_claim"))
    if verdicts.empty:
        return verdicts
    bias_or_unknown = verdicts["bias_claim"].map(lambda b: b is None or bool(b))
    return verdicts[(verdicts["verdict"] == "reproduced") & verdicts["testbed"] & bias_or_unknown]


def summarise(worlds: Mapping[str, pd.DataFrame], failures: Mapping[str, Sequence[str]] | None = None,
              *, profile: str = "", chapters: Sequence[str] = ()) -> dict:
    """The record written to ``calibration.json`` from each world's :func:`collect_verdicts`."""
    _check_worlds(worlds)
    profile = validate.text("profile", profile, empty=True)
    chapters = validate.strings("chapters", chapters, empty=True)
    if failures is not None:
        for w, f in validate.mapping("failures", failures, empty=True).items():
            validate.strings(f"failures[{w!r}]", f, empty=True)
    failures = failures or {}
    rec: dict = {"world_env": WORLD_ENV, "null_world": NULL_WORLD, "profile": profile, "chapters": list(chapters),
                 "worlds": {}}
    for world, v in worlds.items():
        rec["worlds"][world] = {
            "n_verdicts": int(len(v)),
            "counts": {w: int(n) for w, n in v["verdict"].value_counts().sort_index().items()},
            "counts_testbed": {w: int(n) for w, n in v.loc[v["testbed"], "verdict"].value_counts().sort_index().items()},
            "per_chapter": {c: {w: int(n) for w, n in g["verdict"].value_counts().sort_index().items()}
                            for c, g in v.groupby("chapter")},
            "failed_chapters": list(failures.get(world, [])),
        }
    zero = worlds.get(NULL_WORLD)
    if zero is not None:
        fp = false_positives(zero)
        rec["false_positives"] = int(len(fp))
        rec["false_positives_unclassified"] = int(fp["bias_claim"].isna().sum()) if len(fp) else 0
        rec["false_positive_rows"] = fp[["chapter", "claim", "cell", "asserts", "effect_vs_control"]].to_dict("records")
    else:
        rec["false_positives"] = None
    if DEFAULT_WORLD in worlds:
        rec["default_counts"] = rec["worlds"][DEFAULT_WORLD]["counts"]
    rec["ok"] = bool(rec["false_positives"] in (0, None) and not any(failures.get(w) for w in worlds))
    return rec


_COLUMNS = ("chapter", "claim", "cell", "key", "verdict", "asserts", "bias_claim", "testbed", "effect_vs_control")


def _check_verdicts(name: str, v, columns=_COLUMNS) -> None:
    validate.frame(name, v, columns=() if isinstance(v, pd.DataFrame) and v.empty and not len(v.columns) else columns)


def _check_worlds(worlds) -> None:
    """``{world name: collect_verdicts() frame}``."""
    for w, v in validate.mapping("worlds", worlds).items():
        if not isinstance(w, str):
            raise ParameterError(f"worlds has the key {w!r}: keys must be world names ({', '.join(_known_worlds())})")
        _check_verdicts(f"worlds[{w!r}]", v)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file beside it, renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------
# The Paper vs this book page
# ---------------------------------------------------------------------------------------

PAGE_HEAD = """# Paper vs this book

This page is generated by `python -m fairvlm.calibrate` from the verdict tables the
chapters write; do not edit it by hand.

Every claim of the four papers is checked by one protocol (`fairvlm.verdicts`): the
effect is measured in the chapter's own run together with a **control** measured by the
same procedure with the causal ingredient removed (a content-free label, shuffled labels,
random heads or latents, the unedited model), and the verdict rests on the bootstrap
interval of their difference:

- **reproduced**: the interval lies beyond the claim's minimum size in the claimed
  direction, and the effect itself points that way;
- **not reproduced**: the interval lies below the minimum size: the claim is ruled out;
- **inconclusive**: neither; the chapter prints the smallest effect its sample could
  have detected;
- **not testable here**: a precondition fails (no bias to remove, a baseline at chance,
  no shown effect before a "nothing else changes" claim, too few units);
- **partly**: only in chapters still on the older rule.

The last column repeats every verdict on the testbed built with **nothing planted**
(strength 0): a claim that a bias exists or that a method removes one must not come out
*reproduced* there. Models and data are named in each chapter's caption; on the embedded
profile, numbers describe the testbed and SmolLM2, not the papers' models.

The chapter <a href="executed/08_head_to_head.html"><em>Head to head</em></a> adds what no paper can: it runs
the methods on one testbed model against the skew the testbed planted, at three planted
strengths, and reads them with one set of measures (share of the planted skew removed,
collateral, utility kept, cost). Its rows below are verdicts about removing that known skew,
not checks of a paper's claim.
"""


def _cell_text(x) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def paper_vs_book(worlds: Mapping[str, pd.DataFrame], *, calibration: Mapping | None = None,
                  not_run: Sequence[str] = ()) -> str:
    """The *Paper vs this book* page (MyST markdown) from the default and the strength-0
    world's :func:`collect_verdicts`: one row per claim and cell, in chapter order, with the
    effect against its control and the verdict on each world ("not run" where a world did
    not produce the row)."""
    _check_worlds(worlds)
    if calibration is not None:
        validate.mapping("calibration", calibration, empty=True)
    not_run = validate.strings("not_run", not_run, empty=True)
    if DEFAULT_WORLD not in worlds:
        raise FairVLMError(f"paper_vs_book needs the {DEFAULT_WORLD!r} world's verdicts")
    d = worlds[DEFAULT_WORLD]
    z = worlds.get(NULL_WORLD, pd.DataFrame(columns=d.columns))
    zmap = {(r.chapter, r.key): r for r in z.itertuples(index=False)}
    lines = [PAGE_HEAD]
    if calibration is not None and calibration.get("produced_by"):
        pb = calibration["produced_by"]
        lines.append(f"Produced by `python -m fairvlm.calibrate` at commit `{pb.get('commit', 'unknown')}` on "
                     f"{pb.get('date', 'an unrecorded date')}, profile `{calibration.get('profile', '?')}`, "
                     f"chapters {', '.join(calibration.get('chapters') or []) or 'none'}. "
                     "Testbed rows describe the testbed; SmolLM2 and MiniLM rows describe those small "
                     "language models; neither is a paper's number.\n")
    if calibration is not None and calibration.get("chapter_commits"):
        per = "; ".join(f"{w}: " + ", ".join(f"{c} at `{k}`" for c, k in sorted(cm.items()))
                        for w, cm in calibration["chapter_commits"].items() if cm)
        if per:
            lines.append(f"Each chapter's rows come from the run recorded in its results: {per}.\n")
    if calibration is not None and calibration.get("false_positives") is not None:
        lines.append(f"On the strength-0 world, **{calibration['false_positives']}** testbed rows that claim a bias "
                     "or its removal come out *reproduced* (the target is 0).\n")
    if not_run:
        lines.append("Chapters not in this calibration run (their verdicts are in their own pages, on the "
                     "default world only, until `python -m fairvlm.calibrate` is run for them): "
                     + ", ".join(not_run) + ".\n")
    lines += ["| chapter | claim | cell | effect vs control (difference [interval]) | default world | "
              "strength-0 world |", "|---|---|---|---|---|---|"]
    seen = set()
    for r in d.itertuples(index=False):
        seen.add((r.chapter, r.key))
        zr = zmap.get((r.chapter, r.key))
        zv = "not run" if zr is None else (zr.verdict if r.testbed else f"{zr.verdict} (no testbed model)")
        lines.append("| " + " | ".join(_cell_text(x) for x in (r.chapter, r.claim, r.cell, r.effect_vs_control,
                                                                  r.verdict, zv)) + " |")
    for r in z.itertuples(index=False):  # rows only the strength-0 world produced
        if (r.chapter, r.key) not in seen:
            lines.append("| " + " | ".join(_cell_text(x) for x in (r.chapter, r.claim, r.cell, r.effect_vs_control,
                                                                      "not run", r.verdict)) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Running the chapters on a world
# ---------------------------------------------------------------------------------------


def run_world(root: Path, world: str, sources: Sequence[Path], params: Mapping, work_dir: Path) -> tuple[Path, list]:
    """Execute ``sources`` on ``world``; results, figures and executed notebooks go under
    ``work_dir / world``. Returns ``(results folder, failed chapter names)``."""
    from fairvlm import bookbuild

    validate.existing_dir("root", root)
    validate.choice("world", world, _known_worlds())
    for i, s in enumerate(validate.sequence("sources", sources)):
        validate.path(f"sources[{i}]", s)
    validate.mapping("params", params, empty=True)
    validate.path("work_dir", work_dir)

    base = Path(work_dir) / world
    results, figures, executed = base / "results", base / "figures", base / "executed"
    failed = []
    with bookbuild._environ(**{WORLD_ENV: world, "FAIRVLM_RESULTS": str(results.resolve()),
                               "FAIRVLM_FIGURES": str(figures.resolve())}):
        for src in sources:
            print(f"[calibrate] {world}: {src.stem}", flush=True)
            try:
                bookbuild.execute(root, src, dict(params), out_dir=executed.resolve())
            except FairVLMError as exc:
                print(f"[calibrate] {world}: {src.stem} failed: {exc}", flush=True)
                failed.append(src.stem)
    return results, failed


def _produced_by(root: Path) -> dict:
    """The commit (``+dirty`` when the checkout has changes) and UTC date of this run."""
    import datetime
    import subprocess

    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    return {"commit": commit, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def main(argv=None) -> int:
    ap = argument_parser(prog="python -m fairvlm.calibrate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--chapters", default="all", help="NN prefixes or slugs, comma-separated (default: all)")
    ap.add_argument("--profile", default="embedded", help="the chapters' PROFILE (default: embedded)")
    ap.add_argument("--worlds", default=f"{NULL_WORLD},{DEFAULT_WORLD}",
                    help=f"comma-separated worlds (default: {NULL_WORLD},{DEFAULT_WORLD})")
    ap.add_argument("--work-dir", default="results/calibration", help="per-world results (default: results/calibration)")
    ap.add_argument("--out", default="results/calibration.json", help="the record (default: results/calibration.json)")
    ap.add_argument("--page", default="book/paper_vs_book.md",
                    help="write the Paper vs this book page here ('' to skip; needs the default world)")
    ap.add_argument("--collect-only", action="store_true", help="do not execute; read the per-world results")
    a = ap.parse_args(argv)

    from fairvlm import bookbuild
    from fairvlm.params import PROFILES

    validate.choice("--profile", a.profile, PROFILES)
    for opt, value in (("--out", a.out), ("--page", a.page)):
        if value and Path(value).is_dir():
            raise ParameterError(f"{opt}={value!r} is a folder; give a file path")

    root = bookbuild.find_root()
    worlds = [w.strip() for w in a.worlds.split(",") if w.strip()]
    known = _known_worlds()
    for w in worlds:
        if w not in known:
            raise FairVLMError(f"unknown world {w!r}; choose from {', '.join(known)}")
    sources = bookbuild.select(bookbuild.chapter_sources(root), a.chapters)
    work = Path(a.work_dir)
    collected, failures, results_of = {}, {}, {}
    for w in worlds:
        if a.collect_only:
            results, failed = work / w / "results", []
            if not results.is_dir():
                raise FairVLMError(f"no results for world {w!r} under {results}; run without --collect-only first")
        else:
            results, failed = run_world(root, w, sources, {"PROFILE": a.profile}, work)
            results.mkdir(parents=True, exist_ok=True)  # every chapter may have failed before writing
        collected[w], failures[w], results_of[w] = collect_verdicts(results), failed, results
    ran = [s.stem for s in sources] if not a.collect_only else \
        sorted(set().union(*(set(v["chapter"]) for v in collected.values())))
    rec = summarise(collected, failures, profile=a.profile, chapters=ran)
    rec["produced_by"] = _produced_by(root)
    # a chapter's rows may come from an earlier run (--collect-only): each names its own commit
    rec["chapter_commits"] = {w: chapter_commits(results_of[w]) for w in worlds}
    out = Path(a.out)
    _write_atomic(out, json.dumps(rec, indent=2, sort_keys=True, default=str) + "\n")
    if a.page and DEFAULT_WORLD in collected:
        everything = [src.stem for src in bookbuild.chapter_sources(root)]
        _write_atomic(Path(a.page), paper_vs_book(collected, calibration=rec,
                                                  not_run=[c for c in everything if c not in rec["chapters"]]))
    print(f"[calibrate] wrote {out}: false positives on {NULL_WORLD}: {rec['false_positives']}; "
          f"default counts: {rec.get('default_counts')}; failed: {failures}", flush=True)
    return 0 if rec["ok"] else 1


if __name__ == "__main__":
    import sys

    sys.exit(cli_main(main))
