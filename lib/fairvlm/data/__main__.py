"""``python -m fairvlm.data``: fetch and verify the PAIRS images.

    python -m fairvlm.data fetch-pairs [DEST] [--source DIR] [--overwrite]
    python -m fairvlm.data verify-pairs [ROOT]
"""

from __future__ import annotations

import argparse
import sys

from fairvlm.data.pairs import PAIRS_COMMIT, PAIRS_URL, fetch_pairs, pairs_root, verify_pairs
from fairvlm.errors import FairVLMError


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fairvlm.data",
                                 description="Fetch and verify the datasets of the book.")
    sub = ap.add_subparsers(dest="command", required=True)
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
    try:
        if args.command == "fetch-pairs":
            dest = fetch_pairs(args.dest, args.source, overwrite=args.overwrite)
            print(f"PAIRS is at {dest} (all files verified)")
        else:
            root = pairs_root(args.root)
            n = verify_pairs(root)
            print(f"{root}: all {n} files match the manifest")
    except FairVLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
