"""``python -m fairvlm.data``: fetch and verify the book's datasets.

    python -m fairvlm.data fetch NAME [DEST] [--source DIR] [--base-url URL] [--overwrite]
                                 [--if-missing] [--best-effort]
    python -m fairvlm.data fetch-pairs [DEST] [--source DIR] [--overwrite]
    python -m fairvlm.data verify-pairs [ROOT]

NAME is ``pairs``, ``socialcf``, ``sobit`` or ``all``. Every file is pinned to one
upstream commit and checked against its sha256 manifest in ``data/``. For ``all``, DEST
and ``--source`` are parent folders (``DEST/pairs``, ``DEST/socialcounterfactuals``,
``DEST/sobit``). ``--if-missing`` skips a dataset the loaders already find;
``--best-effort`` reports a failed download as a warning and exits 0 (``make data``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fairvlm.data.pairs import PAIRS_COMMIT, PAIRS_URL, fetch_pairs, pairs_root, verify_pairs
from fairvlm.data.sobit import fetch_sobit, sobit_path
from fairvlm.data.socialcf import fetch_socialcf, socialcf_root
from fairvlm.errors import EXIT_BAD_INPUT, FairVLMError, argument_parser, cli_main, unknown


@dataclass(frozen=True)
class Dataset:
    """One dataset as the ``fetch`` command handles it."""

    name: str                           #: NAME on the command line
    title: str                          #: its name in messages
    folder: str                         #: its folder under data/ (and under DEST for ``all``)
    fetch: Callable[..., Path]          #: fetch_*(dest, source, *, base_url=, overwrite=)
    find: Callable[[], Path | None]     #: where the loaders find it; None when nowhere
    without: str                        #: what the book does without it


DATASETS: dict[str, Dataset] = {
    "pairs": Dataset(
        "pairs", "PAIRS", "pairs", fetch_pairs, lambda: pairs_root(required=False),
        "chapter 00 will skip its PAIRS images, and chapters 01-03 cannot run PROFILE=paper"),
    "socialcf": Dataset(
        "socialcf", "SocialCounterfactuals metadata", "socialcounterfactuals", fetch_socialcf,
        lambda: socialcf_root(required=False),
        "chapter 00 will skip its SocialCounterfactuals tables, and chapters 01-03 their "
        "SocialCounterfactuals runs"),
    "sobit": Dataset(
        "sobit", "So-B-IT taxonomy", "sobit", fetch_sobit, lambda: sobit_path(required=False),
        "chapter 00 will skip its So-B-IT table, and chapter 07 will use only the testbed's "
        "planted words"),
}


def _one_line(exc: BaseException) -> str:
    return " ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _fetch(args) -> int:
    name = args.name.strip().lower()
    if name != "all" and name not in DATASETS:
        raise unknown("dataset", args.name, [*DATASETS, "all"])
    if name == "all" and args.base_url:
        raise FairVLMError("--base-url needs one dataset (pairs, socialcf or sobit), not all")
    chosen = list(DATASETS.values()) if name == "all" else [DATASETS[name]]
    failed = 0
    for ds in chosen:
        dest, source = args.dest, args.source
        if name == "all":  # DEST and --source hold one folder per dataset
            dest = Path(dest) / ds.folder if dest else None
            source = Path(source) / ds.folder if source else None
        kwargs = {"overwrite": args.overwrite}
        if args.base_url:
            kwargs["base_url"] = args.base_url
        try:
            if args.if_missing:
                found = ds.find()
                if found is not None:
                    print(f"{ds.title}: found at {found}, not fetched")
                    continue
            path = ds.fetch(dest, source, **kwargs)
            print(f"{ds.title} is at {path} (all files verified)")
        except (FairVLMError, OSError) as exc:
            failed += 1
            if args.best_effort:
                print(f"warning: {ds.title} not fetched ({_one_line(exc)}); {ds.without}. "
                      f"Fetch it later with: python -m fairvlm.data fetch {ds.name}",
                      file=sys.stderr)
            else:
                print(f"error: {exc}", file=sys.stderr)
    return EXIT_BAD_INPUT if failed and not args.best_effort else 0


def main(argv=None) -> int:
    """The command line; returns its exit status (bad input: 2, via :func:`fairvlm.errors.cli_main`)."""
    return cli_main(_run, argv)


def _run(argv=None) -> int:
    ap = argument_parser(prog="python -m fairvlm.data",
                         description="Fetch and verify the datasets of the book.")
    sub = ap.add_subparsers(dest="command", required=True)
    g = sub.add_parser("fetch", help="download one dataset, or all, pinned and sha256-checked",
                       description="Download a dataset (or copy it from a local folder), "
                       "checking every file's sha256 against its manifest in data/.")
    g.add_argument("name", metavar="NAME",
                   help=f"one of {', '.join(DATASETS)}, or all")
    g.add_argument("dest", nargs="?", default=None,
                   help="where to put it (default: data/<name> in the book's checkout); for "
                   "all, the parent folder of pairs/, socialcounterfactuals/ and sobit/")
    g.add_argument("--source", help="copy from this folder (the dataset's folder or a clone "
                   "of its repository; for all, their parent folder) instead of downloading")
    g.add_argument("--base-url", help="download from this URL instead of the pinned GitHub "
                   "one (a mirror, or file://...); one dataset only")
    g.add_argument("--overwrite", action="store_true",
                   help="replace an existing DEST (only after the new copy is verified)")
    g.add_argument("--if-missing", action="store_true",
                   help="skip a dataset the loaders already find ($FAIRVLM_*, data/<name>, "
                   "../shared/data/<name>)")
    g.add_argument("--best-effort", action="store_true",
                   help="a failed fetch is a warning saying what the book will skip; exit 0")
    f = sub.add_parser("fetch-pairs", help=f"download PAIRS ({PAIRS_URL} at {PAIRS_COMMIT[:7]}) "
                       "or copy it from a local folder, checking every file's sha256")
    f.add_argument("dest", nargs="?", default=None,
                   help="where to put the tree (default: data/pairs in the book's checkout)")
    f.add_argument("--source", help="copy from this folder (the PAIRS data/ folder or a clone "
                   "of the repository) instead of downloading")
    f.add_argument("--overwrite", action="store_true",
                   help="replace an existing DEST (only after the new copy is verified)")
    v = sub.add_parser("verify-pairs", help="check a PAIRS tree against data/pairs.sha256")
    v.add_argument("root", nargs="?", default=None,
                   help="the tree (default: found as load_pairs finds it)")
    args = ap.parse_args(argv)
    if args.command == "fetch":
        return _fetch(args)
    if args.command == "fetch-pairs":
        dest = fetch_pairs(args.dest, args.source, overwrite=args.overwrite)
        print(f"PAIRS is at {dest} (all files verified)")
    else:
        root = pairs_root(args.root)
        n = verify_pairs(root)
        print(f"{root}: all {n} files match the manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
