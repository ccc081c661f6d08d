"""Command line: ``python -m fairvlm.testbed build --size smoke`` (or ``full``), ``... where``, ``... models``.

``build`` makes both testbed models of one world and caches them: it installs the shipped
weights when they match the current code and spec, else trains (nothing happens when the cache
entry exists; ``--force`` trains anew). ``where`` prints the cache folder of a build and whether
it exists. ``models`` (what ``make models`` runs) trains every shipped world from scratch
(``--worlds`` for some of them) and writes their deltas and the manifest into ``data/testbed``.
``render`` writes one PNG (for a quick look).
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
        p.add_argument("--world", default=None, choices=list(testbed.WORLDS),
                       help=f"testbed world (default: ${testbed.WORLD_ENV} or 'default')")
    b.add_argument("--force", action="store_true", help="train even if cached or shipped")
    m = sub.add_parser("models", help="train the shipped worlds from scratch and write data/testbed")
    m.add_argument("--worlds", default="all",
                   help="comma-separated worlds to rebuild (default: all of " + ", ".join(testbed.WORLDS) + ")")
    m.add_argument("--dest", default=None, help="folder to write (default: data/testbed of the checkout)")
    r = sub.add_parser("render", help="render one scene to a PNG file")
    r.add_argument("scenario")
    r.add_argument("variant", choices=testbed.VARIANTS)
    r.add_argument("scene_seed", type=int)
    r.add_argument("out")
    r.add_argument("--size", type=int, default=testbed.DEFAULT_SIZE)
    args = parser.parse_args(argv)
    if args.command == "build":
        t0 = time.time()
        root = testbed.build(args.size, seed=args.seed, spec_path=args.spec, world=args.world, force=args.force)
        log = json.loads((root / "build.json").read_text())
        print(f"testbed ({args.size}) ready in {root} [{testbed.describe_build(root)}; "
              f"this call {time.time() - t0:.0f} s; training took {log['seconds']:.0f} s; "
              f"held-out zero-shot accuracy during training {log['clip']['final_heldout_acc']:.2f}]")
    elif args.command == "where":
        spec = testbed.world_spec(args.world, args.spec)
        root = testbed.testbed_dir(args.size, seed=args.seed, spec=spec)
        built = testbed.is_built(args.size, seed=args.seed, spec=spec)
        print(f"{root} ({'built' if built else 'not built'})")
    elif args.command == "models":
        _models(args.worlds, args.dest)
    else:
        gender, race = testbed.parse_variant(args.variant)
        image = testbed.render(args.scenario, gender, race, args.scene_seed, args.size)
        _save_png(image, args.out)
        print(args.out)
    return 0


def _models(worlds: str, dest) -> None:
    """Train each shipped world from scratch and export its deltas and manifest entry."""
    from pathlib import Path

    from fairvlm import testbed
    from fairvlm.testbed import artifacts

    chosen = [w.strip() for w in worlds.split(",") if w.strip()] if worlds.strip() != "all" else list(testbed.WORLDS)
    if not chosen:
        raise FairVLMError("--worlds names no world; give e.g. --worlds default,strength-0")
    for w in chosen:
        artifacts.check_world(w)
    todo = [(w, size, seed) for (w, size, seed) in artifacts.SHIPPED if w in chosen]
    t_all = time.time()
    for i, (w, size, seed) in enumerate(todo, 1):
        t0 = time.time()
        print(f"[models] {i}/{len(todo)}: training the {size} testbed of world {w!r} (seed {seed}) from scratch",
              flush=True)
        root = testbed.build(size, seed=seed, world=w, force=True)
        spec = testbed.world_spec(w)
        art = artifacts.export(root, world=w, size=size, seed=seed, strength=spec.strength,
                               spec_digest=spec.digest(), build_key=testbed.cache_key(spec, size, seed),
                               dest=Path(dest) if dest else None)
        mb = sum(f["bytes"] for f in art.files.values()) / 1e6
        print(f"[models]   {art.name}: {mb:.1f} MB shipped in {art.folder} ({time.time() - t0:.0f} s)", flush=True)
    print(f"[models] done: {len(todo)} world(s) in {(time.time() - t_all) / 60:.1f} min", flush=True)


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
