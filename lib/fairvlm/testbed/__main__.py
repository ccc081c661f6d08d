"""Command line: ``python -m fairvlm.testbed build --size smoke`` (or ``full``), ``... where``.

``build`` trains and caches both testbed models (nothing happens when the cache entry for the
current spec, code, size and seed exists; ``--force`` rebuilds). ``where`` prints the cache
folder of a build and whether it exists. ``render`` writes one PNG (for a quick look).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from fairvlm.errors import FairVLMError


def main(argv=None) -> int:
    from fairvlm import testbed

    parser = argparse.ArgumentParser(prog="python -m fairvlm.testbed", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="train and cache testbed-clip and testbed-llava")
    w = sub.add_parser("where", help="print the cache folder of a build")
    for p in (b, w):
        p.add_argument("--size", default="full", choices=sorted(testbed.SIZES))
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--spec", default=None, help="bias spec file (default: data/testbed_bias_spec.yaml)")
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    r = sub.add_parser("render", help="render one scene to a PNG file")
    r.add_argument("scenario")
    r.add_argument("variant", choices=testbed.VARIANTS)
    r.add_argument("scene_seed", type=int)
    r.add_argument("out")
    r.add_argument("--size", type=int, default=testbed.DEFAULT_SIZE)
    args = parser.parse_args(argv)
    try:
        if args.command == "build":
            t0 = time.time()
            root = testbed.build(args.size, seed=args.seed, spec_path=args.spec, force=args.force)
            log = json.loads((root / "build.json").read_text())
            print(f"testbed ({args.size}) ready in {root} "
                  f"[this call {time.time() - t0:.0f} s; build took {log['seconds']:.0f} s; "
                  f"held-out zero-shot accuracy during training {log['clip']['final_heldout_acc']:.2f}]")
        elif args.command == "where":
            spec = testbed.load_spec(args.spec)
            root = testbed.testbed_dir(args.size, seed=args.seed, spec=spec)
            built = testbed.is_built(args.size, seed=args.seed, spec=spec)
            print(f"{root} ({'built' if built else 'not built'})")
        else:
            gender, race = testbed.parse_variant(args.variant)
            testbed.render(args.scenario, gender, race, args.scene_seed, args.size).save(args.out)
            print(args.out)
    except FairVLMError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
