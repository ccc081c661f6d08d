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

from fairvlm.errors import FairVLMError, cli_main


def main(argv=None) -> int:
    """The command line; returns its exit status (bad input: 2, via :func:`fairvlm.errors.cli_main`)."""
    return cli_main(_run, argv)


def _run(argv=None) -> int:
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
        image = testbed.render(args.scenario, gender, race, args.scene_seed, args.size)
        _save_png(image, args.out)
        print(args.out)
    return 0


def _save_png(image, out: str) -> None:
    """Write ``image`` to ``out`` atomically (a temp file beside it, then a rename); an
    unwritable or invalid ``out`` is a :class:`FairVLMError` naming it."""
    import os
    import tempfile
    from pathlib import Path

    target = Path(out)
    if target.is_dir():
        raise FairVLMError(f"out={out!r} is a folder; give a file name such as {out.rstrip('/')}/scene.png")
    if target.suffix.lower() != ".png":
        raise FairVLMError(f"out={out!r} must be a .png file name")
    folder = target.parent
    if not folder.is_dir():
        raise FairVLMError(f"cannot write {out!r}: its folder {str(folder)!r} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise FairVLMError(f"cannot write {out!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except OSError as exc:
        raise FairVLMError(f"cannot write {out!r}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


if __name__ == "__main__":
    sys.exit(main())
