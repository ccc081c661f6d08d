"""Rendering the testbed world: one scene seed, four counterfactual people.

A *scene* is a scenario key (one of the 50 PAIRS keys, :mod:`fairvlm.testbed.scenarios`) and
an integer ``scene_seed``. The seed fixes everything in the picture except the person's group:
camera (person position and scale, mirror flip), pose, clothing colours, hair colour and
style for each gender, the two skin tones (one per race), background colours and clutter,
the props' placement, photometric jitter and pixel noise. :func:`render` then draws one of
the four PAIRS variants (``black_man``, ``black_woman``, ``white_man``, ``white_woman``):

- race changes only the skin tone (face, neck, hands, bare arms);
- gender changes only the gender cues: hair (short for men, long for women), a beard on some
  men, lip colour, and the torso outline (shoulders, waist, hips).

So the four variants of a scene differ only on the person: :func:`person_mask` returns the
union of the person's silhouettes over the four variants, and every pixel that differs
between two variants lies inside it (``tests/test_testbed.py`` checks this on many scenes).
Renders are deterministic: the same arguments give the same bytes (PIL drawing without
anti-aliasing, then a box-filter downsample of a 4x supersampled canvas, then NumPy noise
from a seeded generator).

Splits are by scene seed (:data:`SPLITS`): training scenes use seeds in
``[0, 1_000_000)``, held-out scenes seeds in ``[1_000_000, 2_000_000)``, so a model
evaluated on held-out scenes has never seen that layout, pose, colouring or clutter.
:func:`gallery` lists a balanced held-out gallery (every scenario x scene x variant).

Conventions: images are RGB ``PIL.Image`` of ``size x size`` pixels (default 64, the
testbed models' input size); coordinates inside this module are fractions of the image
side, ``x`` to the right and ``y`` down.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from fairvlm.errors import FairVLMError, unknown
from fairvlm.testbed.scenarios import SCENARIO_KEYS, SCENARIOS, scenario

GENDERS = ("man", "woman")
RACES = ("black", "white")
#: PAIRS variant names, in PAIRS order
VARIANTS = ("black_man", "black_woman", "white_man", "white_woman")
#: scene-seed ranges (half-open) of the two splits
SPLITS = {"train": (0, 1_000_000), "heldout": (1_000_000, 2_000_000)}
SUPERSAMPLE = 4
HEAD = 1.55   # head size relative to the body (larger than life, so the cues survive 64 x 64)
DEFAULT_SIZE = 64

SKIN = {
    "black": [(84, 53, 36), (99, 64, 43), (114, 75, 50), (128, 86, 58), (74, 47, 33), (106, 70, 46)],
    "white": [(240, 208, 186), (232, 195, 168), (224, 184, 154), (246, 220, 202), (219, 176, 146),
              (236, 202, 178)],
}
# hair colours far from both skin palettes (a mid-brown would vanish against dark skin)
HAIR = [(18, 14, 12), (32, 22, 18), (48, 30, 22), (160, 70, 30), (200, 160, 80), (225, 195, 120)]
CLOTH = [(200, 40, 40), (40, 80, 170), (60, 130, 70), (230, 200, 60), (120, 60, 140), (230, 120, 40),
         (90, 90, 90), (220, 220, 220), (40, 40, 40), (150, 100, 60), (80, 160, 200), (200, 110, 150)]
TROUSERS = [(40, 50, 80), (30, 30, 35), (90, 80, 70), (60, 70, 100), (110, 100, 80), (70, 70, 70)]


def variant_name(gender: str, race: str) -> str:
    """``("woman", "black") -> "black_woman"`` (PAIRS file stem); checks both names."""
    if gender not in GENDERS:
        raise unknown("gender", gender, GENDERS)
    if race not in RACES:
        raise unknown("race", race, RACES)
    return f"{race}_{gender}"


def parse_variant(variant: str) -> tuple[str, str]:
    """``"black_woman" -> ("woman", "black")`` (gender, race)."""
    if variant not in VARIANTS:
        raise unknown("variant", variant, VARIANTS)
    race, gender = variant.split("_")
    return gender, race


def split_of(scene_seed: int) -> str:
    """The split (``"train"`` or ``"heldout"``) a scene seed belongs to."""
    _check_seed(scene_seed)
    for name, (lo, hi) in SPLITS.items():
        if lo <= scene_seed < hi:
            return name
    raise FairVLMError(f"scene_seed={scene_seed} lies outside every split {SPLITS}")


def scene_seeds(split: str, n: int, *, start: int = 0) -> list[int]:
    """``n`` consecutive scene seeds of ``split`` beginning at offset ``start`` within it."""
    if split not in SPLITS:
        raise unknown("split", split, SPLITS)
    lo, hi = SPLITS[split]
    if n < 0 or start < 0 or lo + start + n > hi:
        raise FairVLMError(f"cannot take {n} seeds from offset {start} of split {split!r} {SPLITS[split]}")
    return list(range(lo + start, lo + start + n))


def _check_seed(scene_seed) -> int:
    if isinstance(scene_seed, bool) or not isinstance(scene_seed, (int, np.integer)) or scene_seed < 0:
        raise FairVLMError(f"scene_seed={scene_seed!r} must be a non-negative integer")
    return int(scene_seed)


def _check_size(size) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not 16 <= size <= 1024:
        raise FairVLMError(f"size={size!r} must be an integer number of pixels in [16, 1024]")
    return int(size)


# --------------------------------------------------------------------------------------
# The scene layout: every random choice, drawn before the group is known
# --------------------------------------------------------------------------------------


@dataclass
class Layout:
    """All random choices of one scene (independent of gender and race by construction)."""

    rng_state: dict
    flip: bool
    cx: float            # person's centre line
    hy: float            # head centre
    u: float             # person scale (height of head-to-feet is about 0.92 u)
    pose: str
    hand_jitter: np.ndarray
    leg_spread: float
    shirt: tuple
    trousers: tuple
    shoes: tuple
    long_sleeves: bool
    accent: tuple        # tie / jersey / vest colour
    hair: tuple
    skin: dict           # race -> rgb
    woman_hair_len: float
    woman_hair_width: float
    man_hair: str        # "short" | "buzz" | "curly"
    earrings: bool       # women wear earrings in this scene
    beard: bool
    bg_jitter: np.ndarray
    floor_y: float
    clutter: list
    prop_jitter: np.ndarray
    contrast: float
    brightness: float
    noise_sigma: float
    noise_seed: int


_RANDOM_POSES = ("down", "hips", "crossed", "down_wide")


def layout(key: str, scene_seed: int) -> Layout:
    """Draw the scene's random choices from ``(scene_seed, crc32(key))``."""
    sc = scenario(key)
    scene_seed = _check_seed(scene_seed)
    rng = np.random.default_rng([scene_seed, zlib.crc32(key.encode())])
    pick = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
    u = float(rng.uniform(1.0, 1.3))
    hy = float(rng.uniform(0.16, 0.24))
    cx = float(rng.uniform(0.36, 0.64))
    pose = pick(_RANDOM_POSES)
    if sc.pose is not None:
        pose = sc.pose
    clutter = []
    for _ in range(int(rng.integers(0, 4))):
        clutter.append((pick(("rect", "circle", "plant")), float(rng.uniform(0.02, 0.9)),
                        float(rng.uniform(0.02, 0.5)), float(rng.uniform(0.05, 0.14)),
                        tuple(int(c) for c in rng.integers(30, 230, 3))))
    return Layout(
        rng_state={"seed": scene_seed, "key": key},
        flip=bool(rng.integers(2)),
        cx=cx, hy=hy, u=u, pose=pose,
        hand_jitter=rng.uniform(-0.025, 0.025, 8),
        leg_spread=float(rng.uniform(0.05, 0.1)),
        shirt=pick(CLOTH), trousers=pick(TROUSERS),
        shoes=pick([(30, 25, 20), (80, 50, 30), (200, 200, 200), (20, 20, 20)]),
        long_sleeves=bool(rng.integers(2)),
        accent=pick([(180, 30, 40), (30, 60, 150), (40, 120, 60), (220, 180, 40), (120, 40, 120)]),
        hair=pick(HAIR),
        skin={"black": pick(SKIN["black"]), "white": pick(SKIN["white"])},
        woman_hair_len=float(rng.uniform(0.3, 0.42)),
        woman_hair_width=float(rng.uniform(0.15, 0.19)),
        earrings=bool(rng.random() < 0.5),
        man_hair=pick(("short", "buzz", "curly")),
        beard=bool(rng.random() < 0.5),
        bg_jitter=rng.integers(-22, 23, 12),
        floor_y=float(rng.uniform(0.6, 0.78)),
        clutter=clutter,
        prop_jitter=rng.uniform(-1, 1, 8),
        contrast=float(rng.uniform(0.85, 1.15)),
        brightness=float(rng.uniform(-18, 18)),
        noise_sigma=float(rng.uniform(1.5, 7.0)),
        noise_seed=int(rng.integers(2**31)),
    )


# --------------------------------------------------------------------------------------
# A small painter over a supersampled canvas (fractions of the side -> pixels)
# --------------------------------------------------------------------------------------


def _clip(rgb) -> tuple:
    return tuple(int(min(255, max(0, c))) for c in rgb)


def _shade(rgb, f: float) -> tuple:
    return _clip([c * f for c in rgb])


def _mix(a, b, t: float) -> tuple:
    return _clip([x * (1 - t) + y * t for x, y in zip(a, b)])


class _Painter:
    """Draws on an RGB canvas and, for the person's pixels, on a mask canvas too."""

    def __init__(self, n: int, want_mask: bool):
        self.n = n
        self.img = Image.new("RGB", (n, n))
        self.d = ImageDraw.Draw(self.img)
        self.mask = Image.new("L", (n, n)) if want_mask else None
        self.m = ImageDraw.Draw(self.mask) if want_mask else None
        self.person = False

    def _p(self, x, y):
        return (x * self.n, y * self.n)

    def _box(self, x0, y0, x1, y1):
        return [min(x0, x1) * self.n, min(y0, y1) * self.n, max(x0, x1) * self.n, max(y0, y1) * self.n]

    def rect(self, x0, y0, x1, y1, fill):
        self.d.rectangle(self._box(x0, y0, x1, y1), fill=fill)
        if self.person and self.m:
            self.m.rectangle(self._box(x0, y0, x1, y1), fill=255)

    def ellipse(self, x0, y0, x1, y1, fill):
        self.d.ellipse(self._box(x0, y0, x1, y1), fill=fill)
        if self.person and self.m:
            self.m.ellipse(self._box(x0, y0, x1, y1), fill=255)

    def circle(self, x, y, r, fill):
        self.ellipse(x - r, y - r, x + r, y + r, fill)

    def poly(self, pts, fill):
        q = [self._p(x, y) for x, y in pts]
        self.d.polygon(q, fill=fill)
        if self.person and self.m:
            self.m.polygon(q, fill=255)

    def line(self, pts, fill, w):
        q = [self._p(x, y) for x, y in pts]
        width = max(1, int(round(w * self.n)))
        self.d.line(q, fill=fill, width=width, joint="curve")
        if self.person and self.m:
            self.m.line(q, fill=255, width=width, joint="curve")
        # round caps
        for x, y in pts:
            self.d.ellipse(self._box(x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=fill)
            if self.person and self.m:
                self.m.ellipse(self._box(x - w / 2, y - w / 2, x + w / 2, y + w / 2), fill=255)

    def pie(self, x0, y0, x1, y1, start, end, fill):
        self.d.pieslice(self._box(x0, y0, x1, y1), start, end, fill=fill)
        if self.person and self.m:
            self.m.pieslice(self._box(x0, y0, x1, y1), start, end, fill=255)

    def vgrad(self, y0, y1, top, bottom, x0=0.0, x1=1.0, steps=16):
        for i in range(steps):
            a, b = y0 + (y1 - y0) * i / steps, y0 + (y1 - y0) * (i + 1) / steps
            self.rect(x0, a, x1, b + 1.0 / self.n, _mix(top, bottom, i / max(1, steps - 1)))


# --------------------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------------------


def _j(rgb, L: Layout, i: int, scale: float = 1.0) -> tuple:
    """Jitter a colour with the scene's background jitter ``i`` (3 values)."""
    k = (3 * i) % 12
    return _clip([c + scale * L.bg_jitter[k + t] for t, c in enumerate(rgb)])


def _wall_floor(P: _Painter, L: Layout, wall, floor, wall2=None):
    P.vgrad(0, L.floor_y, _j(wall, L, 0), _j(wall2 or _shade(wall, 0.85), L, 0))
    P.vgrad(L.floor_y, 1.0, _j(floor, L, 1), _j(_shade(floor, 0.8), L, 1), steps=8)


def _sky_ground(P, L, sky, ground):
    P.vgrad(0, L.floor_y, _j(sky, L, 0), _j(_mix(sky, (255, 255, 255), 0.6), L, 0))
    P.vgrad(L.floor_y, 1.0, _j(ground, L, 1), _j(_shade(ground, 0.8), L, 1), steps=8)


def _bg_tiles(P, L, wall, line, step=0.08):
    for i in range(int(1 / step) + 1):
        P.rect(i * step, 0, i * step + 0.006, L.floor_y, line)
        if i * step < L.floor_y:
            P.rect(0, i * step, 1, i * step + 0.006, line)


def _bg_windows(P, L, y0, y1, colour, n=4, frame=(200, 200, 200)):
    w = 1.0 / n
    for i in range(n):
        P.rect(i * w + 0.02, y0, (i + 1) * w - 0.02, y1, frame)
        P.rect(i * w + 0.035, y0 + 0.015, (i + 1) * w - 0.035, y1 - 0.015, _j(colour, L, 2))


def _bg_buildings(P, L, base_y, colours, lit=(250, 230, 140)):
    x = -0.05 + 0.05 * L.prop_jitter[0]
    i = 0
    while x < 1.0:
        w = 0.12 + 0.06 * abs(L.prop_jitter[i % 8])
        h = 0.25 + 0.25 * abs(L.prop_jitter[(i + 3) % 8])
        c = _j(colours[i % len(colours)], L, 3)
        P.rect(x, base_y - h, x + w, base_y, c)
        for wy in np.arange(base_y - h + 0.03, base_y - 0.02, 0.06):
            for wx in np.arange(x + 0.02, x + w - 0.02, 0.04):
                P.rect(wx, wy, wx + 0.015, wy + 0.025, lit if (int(wx * 97 + wy * 31) % 3) else _shade(c, 0.7))
        x += w + 0.01
        i += 1


def _paint_setting(P: _Painter, L: Layout, setting: str):
    fy = L.floor_y
    if setting == "airfield":
        _sky_ground(P, L, (120, 170, 225), (120, 120, 125))
        P.rect(0, fy + 0.08, 1, fy + 0.09, (230, 230, 90))
    elif setting == "kitchen":
        _wall_floor(P, L, (225, 228, 230), (150, 150, 155))
        _bg_tiles(P, L, None, _j((180, 185, 190), L, 2))
        P.rect(0, fy - 0.1, 1, fy, _j((170, 175, 180), L, 3))
    elif setting == "bank":
        _wall_floor(P, L, (190, 185, 170), (140, 130, 115))
        for y in np.arange(0.05, fy, 0.1):
            P.rect(0, y, 1, y + 0.006, _j((160, 155, 140), L, 2))
    elif setting == "cafe":
        _wall_floor(P, L, (110, 50, 40), (70, 45, 30))
        P.circle(0.2 + 0.05 * L.prop_jitter[1], 0.12, 0.05, (250, 210, 120))
        P.circle(0.8 + 0.05 * L.prop_jitter[2], 0.12, 0.05, (250, 210, 120))
    elif setting == "classroom":
        _wall_floor(P, L, (205, 215, 190), (150, 110, 70))
    elif setting == "warehouse":
        _wall_floor(P, L, (150, 150, 145), (110, 110, 105))
        for x in (0.05, 0.35, 0.65, 0.95):
            P.rect(x - 0.01, 0.05, x + 0.01, fy, _j((70, 90, 140), L, 2))
        for y in (0.2, 0.4):
            P.rect(0, y, 1, y + 0.015, _j((200, 120, 40), L, 3))
    elif setting == "office_dark":
        _wall_floor(P, L, (45, 55, 75), (35, 35, 45))
        for i in range(3):
            P.rect(0.1 + 0.3 * i, 0.08, 0.22 + 0.3 * i, 0.1, (200, 220, 255))
    elif setting == "office":
        _wall_floor(P, L, (215, 200, 170), (110, 110, 120))
    elif setting == "clinic":
        _wall_floor(P, L, (185, 215, 230), (235, 240, 240))
        P.rect(0, fy - 0.25, 1, fy - 0.23, _j((120, 170, 200), L, 2))
    elif setting == "callcenter":
        _wall_floor(P, L, (120, 140, 170), (80, 80, 90))
        for x in (0.0, 0.33, 0.66):
            P.rect(x + 0.02, fy - 0.2, x + 0.3, fy, _j((150, 150, 160), L, 2))
    elif setting == "lab":
        _wall_floor(P, L, (235, 240, 245), (190, 200, 205))
        P.rect(0, fy - 0.08, 1, fy, _j((60, 60, 70), L, 2))
    elif setting == "law_office":
        _wall_floor(P, L, (95, 60, 35), (60, 40, 25))
        for x in np.arange(0, 1, 0.2):
            P.rect(x, 0, x + 0.01, fy, _j((70, 45, 25), L, 2))
    elif setting == "hallway":
        _wall_floor(P, L, (230, 220, 170), (190, 180, 150))
        P.poly([(0.3, 0), (0.7, 0), (0.6, fy), (0.4, fy)], _j((210, 200, 150), L, 2))
        P.rect(0.45, 0.2, 0.55, fy, _j((150, 110, 70), L, 3))
    elif setting == "garden":
        _sky_ground(P, L, (140, 190, 235), (80, 150, 60))
        P.rect(0, fy - 0.15, 1, fy, _j((40, 100, 40), L, 2))
    elif setting == "restaurant":
        _wall_floor(P, L, (150, 90, 55), (90, 55, 35))
        for x in (0.15, 0.5, 0.85):
            P.line([(x, 0), (x, 0.1)], (40, 30, 20), 0.008)
            P.pie(x - 0.06, 0.07, x + 0.06, 0.17, 180, 360, (250, 200, 100))
    elif setting == "hospital":
        _wall_floor(P, L, (200, 230, 215), (225, 230, 230))
        P.rect(0, fy - 0.3, 1, fy - 0.27, _j((90, 160, 150), L, 2))
    elif setting == "library":
        _wall_floor(P, L, (120, 80, 50), (90, 60, 40))
    elif setting == "street":
        _sky_ground(P, L, (150, 185, 220), (105, 105, 110))
        _bg_buildings(P, L, fy, [(170, 160, 150), (140, 150, 170), (190, 170, 140)])
        P.rect(0, fy, 1, fy + 0.05, _j((170, 170, 170), L, 4))
    elif setting == "road":
        _sky_ground(P, L, (160, 190, 220), (70, 70, 75))
        for x in np.arange(-0.05, 1.05, 0.25):
            P.rect(x, fy + 0.15, x + 0.12, fy + 0.17, (240, 240, 240))
    elif setting == "dark":
        P.vgrad(0, 1, _j((35, 35, 40), L, 0, 0.4), _j((12, 12, 15), L, 1, 0.3))
    elif setting == "alley":
        _wall_floor(P, L, (70, 55, 50), (40, 38, 38))
        for y in np.arange(0.03, fy, 0.07):
            P.rect(0, y, 1, y + 0.008, (50, 40, 38))
    elif setting == "store":
        _wall_floor(P, L, (235, 235, 230), (200, 200, 195))
        for x in (0.2, 0.5, 0.8):
            P.rect(x - 0.08, 0.02, x + 0.08, 0.04, (255, 255, 240))
    elif setting == "courtroom":
        _wall_floor(P, L, (200, 185, 150), (110, 70, 40))
        P.rect(0, fy - 0.22, 1, fy, _j((120, 75, 40), L, 2))
    elif setting == "concrete":
        _wall_floor(P, L, (160, 160, 155), (120, 120, 118))
        for x in np.arange(0.0, 1, 0.25):
            P.rect(x, 0, x + 0.008, fy, (130, 130, 125))
        P.rect(0.72, 0.15, 0.92, fy, _j((100, 110, 115), L, 2))
    elif setting == "court":
        _sky_ground(P, L, (130, 180, 230), (190, 100, 60))
        for x in np.arange(0, 1, 0.05):
            P.line([(x, fy - 0.3), (x + 0.05, fy)], (150, 150, 150), 0.004)
            P.line([(x + 0.05, fy - 0.3), (x, fy)], (150, 150, 150), 0.004)
        P.rect(0, fy + 0.1, 1, fy + 0.115, (240, 240, 240))
    elif setting == "brick":
        _wall_floor(P, L, (160, 70, 50), (100, 100, 100))
        for r, y in enumerate(np.arange(0, fy, 0.05)):
            P.rect(0, y, 1, y + 0.008, (200, 190, 180))
            for x in np.arange(0.05 * (r % 2), 1, 0.1):
                P.rect(x, y, x + 0.008, y + 0.05, (200, 190, 180))
    elif setting == "bus":
        _wall_floor(P, L, (200, 200, 195), (90, 90, 95))
        _bg_windows(P, L, 0.1, 0.4, (150, 190, 220), n=3, frame=(60, 60, 60))
    elif setting == "patio":
        _sky_ground(P, L, (245, 235, 215), (200, 180, 150))
        for x in (0.08, 0.92):
            P.circle(x, fy - 0.12, 0.1, _j((60, 140, 60), L, 2))
    elif setting == "city":
        _sky_ground(P, L, (170, 200, 230), (110, 110, 115))
        _bg_buildings(P, L, fy, [(90, 100, 120), (120, 120, 130), (70, 80, 100)])
    elif setting == "home_kitchen":
        _wall_floor(P, L, (235, 215, 150), (160, 120, 80))
        for x in np.arange(0, 1, 0.25):
            P.rect(x + 0.01, 0.05, x + 0.23, 0.3, _j((170, 120, 70), L, 2))
    elif setting == "park":
        _sky_ground(P, L, (150, 200, 235), (90, 160, 70))
        for x in (0.05, 0.3, 0.7, 0.95):
            P.rect(x - 0.015, fy - 0.25, x + 0.015, fy, (90, 60, 40))
            P.circle(x, fy - 0.32, 0.12, _j((50, 120, 50), L, 2))
    elif setting == "stage":
        P.vgrad(0, 1, (10, 10, 25), (30, 20, 40))
        P.poly([(0.45, 0), (0.55, 0), (0.85, 1), (0.15, 1)], _j((70, 60, 100), L, 2))
    elif setting == "plain_red":
        P.vgrad(0, 1, _j((140, 30, 40), L, 0), _j((80, 15, 25), L, 1))
    elif setting == "studio":
        P.vgrad(0, 1, _j((140, 150, 165), L, 0), _j((90, 95, 110), L, 1))
    elif setting == "shops":
        _sky_ground(P, L, (200, 210, 225), (170, 165, 160))
        cols = [(200, 60, 60), (60, 120, 200), (240, 180, 50), (60, 160, 100)]
        for i, x in enumerate(np.arange(0, 1, 0.25)):
            P.rect(x, 0.2, x + 0.24, fy, _j((220, 215, 205), L, 2))
            P.rect(x, 0.2, x + 0.24, 0.28, cols[(i + int(L.prop_jitter[0] * 2)) % 4])
            P.rect(x + 0.03, 0.33, x + 0.21, fy - 0.05, (120, 160, 190))
    elif setting == "plain_warm":
        P.vgrad(0, 1, _j((250, 190, 120), L, 0), _j((220, 140, 80), L, 1))
    elif setting == "path":
        _sky_ground(P, L, (160, 205, 235), (100, 170, 80))
        P.poly([(0.4, fy), (0.6, fy), (1.0, 1), (0.0, 1)], _j((210, 190, 150), L, 2))
        P.circle(0.1, fy - 0.2, 0.14, (50, 120, 50))
        P.circle(0.9, fy - 0.2, 0.14, (50, 120, 50))
    elif setting == "tattoo_shop":
        _wall_floor(P, L, (50, 45, 55), (30, 28, 30))
        for i, x in enumerate((0.08, 0.3, 0.55, 0.78)):
            P.rect(x, 0.1, x + 0.14, 0.28, (200, 190, 160))
            P.line([(x + 0.03, 0.14), (x + 0.11, 0.24)], (40, 40, 40), 0.01)
    elif setting == "forest":
        _sky_ground(P, L, (120, 160, 140), (90, 75, 50))
        for i, x in enumerate(np.arange(0, 1.1, 0.16)):
            P.poly([(x, 0.05 + 0.05 * (i % 2)), (x - 0.1, fy), (x + 0.1, fy)], _j((30, 80, 40), L, 2))
    elif setting == "platform":
        _wall_floor(P, L, (170, 175, 180), (130, 130, 135))
        P.rect(0, fy + 0.04, 1, fy + 0.06, (240, 210, 40))
    elif setting == "campus":
        _sky_ground(P, L, (150, 195, 235), (80, 160, 70))
    elif setting == "plain_grey":
        P.vgrad(0, 1, _j((200, 200, 200), L, 0), _j((150, 150, 150), L, 1))
    elif setting == "cellar":
        _wall_floor(P, L, (90, 40, 35), (60, 40, 30))
        for x in (0.12, 0.88):
            P.ellipse(x - 0.12, fy - 0.25, x + 0.12, fy, _j((120, 80, 45), L, 2))
            P.rect(x - 0.12, fy - 0.14, x + 0.12, fy - 0.12, (60, 50, 40))
    elif setting == "house_wall":
        _wall_floor(P, L, (200, 195, 180), (90, 110, 80))
        for y in np.arange(0.03, fy, 0.05):
            P.rect(0, y, 1, y + 0.006, (160, 155, 140))
    else:  # pragma: no cover - every scenario names a known setting (tested)
        raise FairVLMError(f"no painter for setting {setting!r}")


def _paint_clutter(P: _Painter, L: Layout):
    for kind, x, y, s, col in L.clutter:
        if kind == "rect":
            P.rect(x, y, x + s, y + s * 0.7, col)
        elif kind == "circle":
            P.circle(x, y, s / 2, col)
        else:
            P.rect(x - 0.01, y + s * 0.3, x + 0.01, y + s, (90, 60, 40))
            P.circle(x, y + s * 0.2, s * 0.4, (50, 130, 60))


# --------------------------------------------------------------------------------------
# The person
# --------------------------------------------------------------------------------------


@dataclass
class _Body:
    """Anchor points of the person (gender-independent except where noted)."""

    cx: float
    hy: float
    u: float
    sy: float       # shoulder line
    py: float       # hip line
    fy: float       # feet
    hands: tuple    # ((xl, yl), (xr, yr))
    elbows_out: float


def _body(L: Layout) -> _Body:
    u, cx, hy = L.u, L.cx, L.hy
    sy, py, fy = hy + 0.11 * u, hy + 0.47 * u, hy + 0.93 * u
    j = L.hand_jitter * u
    poses = {  # hand offsets from (cx, sy), in units of u; elbow outward push
        "down": ((-0.15, 0.36), (0.15, 0.36), 0.02),
        "down_wide": ((-0.2, 0.33), (0.2, 0.33), 0.04),
        "hips": ((-0.1, 0.31), (0.1, 0.31), 0.12),
        "crossed": ((0.06, 0.19), (-0.06, 0.2), 0.1),
        "hold": ((-0.03, 0.22), (0.05, 0.22), 0.07),
        "point": ((-0.15, 0.36), (0.3, -0.04), 0.03),
        "phone": ((-0.15, 0.36), (0.075, -0.1), 0.1),
        "mic": ((-0.15, 0.36), (0.04, -0.01), 0.09),
        "smoke": ((-0.15, 0.36), (0.035, -0.05), 0.1),
        "up": ((-0.2, -0.24), (0.2, -0.24), 0.05),
        "mop": ((0.12, 0.14), (0.17, 0.3), 0.04),
        "run": ((-0.21, 0.14), (0.18, 0.33), 0.05),
        "guitar": ((-0.22, 0.2), (0.05, 0.3), 0.05),
        "bat": ((0.1, 0.02), (0.13, 0.05), 0.08),
        "carry": ((-0.19, 0.4), (0.19, 0.4), 0.02),
        "push": ((0.2, 0.3), (0.26, 0.3), 0.05),
    }
    (lx, ly), (rx, ry), eo = poses[L.pose]
    hands = ((cx + lx * u + j[0], sy + ly * u + j[1]), (cx + rx * u + j[2], sy + ry * u + j[3]))
    return _Body(cx, hy, u, sy, py, fy, hands, eo * u)


def _outfit_colours(sc, L: Layout):
    """(top, sleeve, bottom, long_sleeves) for the scenario's outfit."""
    o = sc.outfit
    navy = (25, 35, 70)
    table = {
        "pilot": (navy, navy, navy, True),
        "suit": ((35, 40, 55), (35, 40, 55), (35, 40, 55), True),
        "suit_tie": ((30, 30, 40), (30, 30, 40), (30, 30, 40), True),
        "blazer": (_j((120, 95, 70), L, 5), _j((120, 95, 70), L, 5), L.trousers, True),
        "dentist": ((150, 200, 230), (150, 200, 230), (150, 200, 230), False),
        "scrubs": ((30, 130, 130), (30, 130, 130), (30, 130, 130), False),
        "jumpsuit": ((240, 110, 20), (240, 110, 20), (240, 110, 20), True),
        "hoodie": ((130, 130, 135), (130, 130, 135), L.trousers, True),
        "white_shirt": ((245, 245, 245), (245, 245, 245), L.trousers, True),
        "tshirt": ((240, 240, 235), (240, 240, 235), (60, 90, 150), False),
        "tank": (_j((70, 75, 70), L, 5), None, (60, 90, 150), False),
        "jersey": (L.accent, None, L.accent, False),
        "lab_coat": (L.shirt, (245, 245, 245), L.trousers, True),
    }
    if o in table:
        return table[o]
    return L.shirt, L.shirt, L.trousers, L.long_sleeves


def _paint_person(P: _Painter, sc, L: Layout, gender: str, race: str):
    B = _body(L)
    u, cx, hy = B.u, B.cx, B.hy
    h = HEAD * u          # head-sized features
    skin = L.skin[race]
    woman = gender == "woman"
    top, sleeve, bottom, long_sleeves = _outfit_colours(sc, L)
    P.person = True
    # long hair behind the head and shoulders (women)
    if woman and sc.hat not in ("ski_mask",):
        hw, hl = L.woman_hair_width * u, L.woman_hair_len * u
        P.ellipse(cx - hw, hy - 0.09 * h, cx + hw, hy + 0.04 * h, L.hair)
        P.rect(cx - hw, hy, cx + hw, hy + hl, L.hair)
        P.ellipse(cx - hw, hy + hl - 0.04 * u, cx + hw, hy + hl + 0.03 * u, L.hair)
    if sc.hat == "hood":
        P.ellipse(cx - 0.1 * h, hy - 0.11 * h, cx + 0.1 * h, hy + 0.12 * h, _shade(top, 0.9))
    # legs and shoes
    spread = L.leg_spread * u * (2.2 if L.pose == "run" else 1.0)
    for s in (-1, 1):
        fx = cx + s * spread + (0.06 * u if (L.pose == "run" and s > 0) else 0)
        fy = B.fy - (0.08 * u if (L.pose == "run" and s > 0) else 0)
        P.line([(cx + s * 0.055 * u, B.py - 0.02 * u), (fx, fy)], bottom, 0.075 * u)
        P.ellipse(fx - 0.05 * u, fy - 0.01 * u, fx + 0.05 * u, fy + 0.035 * u, L.shoes)
    # neck
    P.rect(cx - 0.028 * u, hy + 0.04 * u, cx + 0.028 * u, B.sy + 0.02 * u, skin)
    # torso: gender changes the outline
    sw, ww, pw = (0.1, 0.072, 0.118) if woman else (0.135, 0.112, 0.105)
    wy = hy + 0.33 * u
    torso = [(cx - sw * u, B.sy), (cx + sw * u, B.sy), (cx + ww * u, wy), (cx + pw * u, B.py),
             (cx - pw * u, B.py), (cx - ww * u, wy)]
    if sc.outfit == "lab_coat":  # the coat hangs to the knees
        P.poly([(cx - 0.12 * u, B.sy), (cx + 0.12 * u, B.sy), (cx + 0.14 * u, B.py + 0.2 * u),
                (cx - 0.14 * u, B.py + 0.2 * u)], (245, 245, 245))
    P.poly(torso, top)
    for s in (-1, 1):
        P.circle(cx + s * (sw - 0.03) * u, B.sy + 0.03 * u, 0.035 * u, sleeve or skin)
    if sc.outfit in ("jumpsuit", "overalls", "scrubs", "dentist"):
        P.rect(cx - pw * u, B.py - 0.03 * u, cx + pw * u, B.py + 0.03 * u, bottom)
    # arms: shoulder -> elbow -> hand
    for k, s in enumerate((-1, 1)):
        shx, shy = cx + s * (sw - 0.035) * u, B.sy + 0.035 * u
        hx, hy_ = B.hands[k]
        ex = (shx + hx) / 2 + s * B.elbows_out
        ey = (shy + hy_) / 2 + 0.02 * u
        upper = sleeve or skin
        lower = sleeve if (long_sleeves and sleeve is not None) else skin
        P.line([(shx, shy), (ex, ey)], upper, 0.058 * u)
        P.line([(ex, ey), (hx, hy_)], lower, 0.052 * u)
        if sc.key == "tattoo":  # tattoos: identical ink on every variant
            for t in (0.3, 0.6):
                tx, ty = ex + (hx - ex) * t, ey + (hy_ - ey) * t
                P.circle(tx, ty, 0.017 * u, (35, 60, 70))
            P.circle((shx + ex) / 2, (shy + ey) / 2, 0.02 * u, (35, 60, 70))
        P.circle(hx, hy_, 0.03 * u, skin)
    # head
    P.ellipse(cx - 0.062 * h, hy - 0.075 * h, cx + 0.062 * h, hy + 0.075 * h, skin)
    # hair on top (both genders; style depends on gender)
    if sc.hat not in ("ski_mask", "chef_hat", "pilot_cap"):
        if woman:
            P.pie(cx - 0.075 * h, hy - 0.095 * h, cx + 0.075 * h, hy + 0.04 * h, 180, 360, L.hair)
            P.rect(cx - 0.075 * h, hy - 0.03 * h, cx - 0.05 * h, hy + 0.06 * h, L.hair)
            P.rect(cx + 0.05 * h, hy - 0.03 * h, cx + 0.075 * h, hy + 0.06 * h, L.hair)
        elif L.man_hair == "curly":
            for dx in (-0.04, 0.0, 0.04):
                P.circle(cx + dx * h, hy - 0.065 * h, 0.03 * h, L.hair)
        elif L.man_hair == "short":
            P.pie(cx - 0.066 * h, hy - 0.085 * h, cx + 0.066 * h, hy + 0.02 * h, 180, 360, L.hair)
        else:  # buzz: a thin cap
            P.pie(cx - 0.063 * h, hy - 0.078 * h, cx + 0.063 * h, hy + 0.0 * h, 185, 355, L.hair)
    # face
    if not woman and L.beard:
        P.pie(cx - 0.058 * h, hy - 0.03 * h, cx + 0.058 * h, hy + 0.076 * h, 0, 180, _shade(L.hair, 1.1))
    eye = (25, 20, 20)
    for s in (-1, 1):
        P.circle(cx + s * 0.025 * h, hy - 0.008 * h, 0.009 * h, eye)
    mouth = (200, 40, 60) if woman else _shade(skin, 0.7)
    if woman and L.earrings and sc.hat not in ("ski_mask", "hood"):
        for s in (-1, 1):
            P.circle(cx + s * 0.068 * h, hy + 0.03 * h, 0.014 * h, (235, 200, 60))
    if sc.key == "smiling":
        P.pie(cx - 0.03 * h, hy + 0.005 * h, cx + 0.03 * h, hy + 0.05 * h, 0, 180, (250, 250, 250))
        P.line([(cx - 0.03 * h, hy + 0.028 * h), (cx + 0.03 * h, hy + 0.028 * h)], mouth, 0.008 * h)
    else:
        P.line([(cx - (0.025 if woman else 0.02) * h, hy + 0.035 * h),
                (cx + (0.025 if woman else 0.02) * h, hy + 0.035 * h)], mouth, (0.024 if woman else 0.009) * h)
    _paint_outfit_details(P, sc, L, B, top)
    if woman and sc.hat != "ski_mask":
        # long hair falls from below the ears in front of both shoulders to the chest: a cue
        # of several patches' area, seen against any shirt, background or skin
        hl = L.woman_hair_len * u
        for s in (-1, 1):
            x0, x1 = cx + s * 0.045 * u, cx + s * (L.woman_hair_width + 0.01) * u
            P.rect(x0, hy + 0.05 * h, x1, hy + 0.72 * hl, L.hair)
            P.ellipse(x0, hy + 0.62 * hl, x1, hy + 0.82 * hl, L.hair)
    _paint_hat(P, sc, L, B)
    P.person = False


def _paint_outfit_details(P, sc, L, B, top):
    """Overlays on the clothes (gender-independent geometry, narrower than any torso)."""
    u, cx = B.u, B.cx
    o = sc.outfit
    if o in ("suit", "suit_tie", "pilot", "blazer"):
        P.poly([(cx - 0.04 * u, B.sy), (cx + 0.04 * u, B.sy), (cx, B.sy + 0.13 * u)], (245, 245, 245))
        if o in ("suit_tie", "pilot"):
            P.poly([(cx - 0.012 * u, B.sy + 0.01 * u), (cx + 0.012 * u, B.sy + 0.01 * u),
                    (cx, B.sy + 0.14 * u)], L.accent if o == "suit_tie" else (20, 20, 30))
        if o == "pilot":
            for s in (-1, 1):
                P.rect(cx + s * 0.06 * u, B.sy + 0.02 * u, cx + s * 0.1 * u, B.sy + 0.035 * u, (220, 180, 60))
    elif o in ("apron", "black_apron"):
        col = (225, 200, 160) if o == "apron" else (25, 25, 28)
        P.rect(cx - 0.07 * u, B.sy + 0.12 * u, cx + 0.07 * u, B.py + 0.15 * u, col)
        P.rect(cx - 0.045 * u, B.sy, cx + 0.045 * u, B.sy + 0.13 * u, col)
        if o == "apron":
            P.rect(cx - 0.08 * u, B.sy + 0.2 * u, cx + 0.08 * u, B.sy + 0.22 * u, (210, 180, 140))
    elif o == "overalls":
        P.rect(cx - 0.075 * u, B.sy + 0.14 * u, cx + 0.075 * u, B.py, (60, 90, 150))
        for s in (-1, 1):
            P.rect(cx + s * 0.05 * u - 0.012 * u, B.sy, cx + s * 0.05 * u + 0.012 * u, B.sy + 0.15 * u,
                   (60, 90, 150))
    elif o == "vest":
        col = (210, 240, 40) if L.prop_jitter[3] > 0 else (250, 130, 20)
        P.rect(cx - 0.085 * u, B.sy + 0.01 * u, cx + 0.085 * u, B.py - 0.02 * u, col)
        P.rect(cx - 0.02 * u, B.sy, cx + 0.02 * u, B.py - 0.02 * u, top)
        for y in (0.2, 0.28):
            P.rect(cx - 0.085 * u, B.sy + y * u, cx + 0.085 * u, B.sy + (y + 0.025) * u, (220, 220, 220))
    elif o == "lab_coat":
        P.rect(cx - 0.03 * u, B.sy, cx + 0.03 * u, B.py, top)
    elif o == "jersey":
        P.rect(cx - 0.04 * u, B.sy + 0.1 * u, cx + 0.04 * u, B.sy + 0.18 * u, (245, 245, 245))
    elif o == "scrubs" or o == "dentist":
        P.poly([(cx - 0.035 * u, B.sy), (cx + 0.035 * u, B.sy), (cx, B.sy + 0.07 * u)], _shade(top, 0.75))


def _paint_hat(P, sc, L, B):
    u, cx, hy = B.u, B.cx, B.hy
    h = HEAD * u
    hat = sc.hat
    if hat == "pilot_cap":
        P.rect(cx - 0.07 * h, hy - 0.11 * h, cx + 0.07 * h, hy - 0.05 * h, (25, 35, 70))
        P.rect(cx - 0.075 * h, hy - 0.055 * h, cx + 0.075 * h, hy - 0.04 * h, (15, 15, 20))
        P.circle(cx, hy - 0.08 * h, 0.014 * h, (220, 180, 60))
    elif hat == "chef_hat":
        P.rect(cx - 0.06 * h, hy - 0.15 * h, cx + 0.06 * h, hy - 0.05 * h, (250, 250, 250))
        P.circle(cx, hy - 0.16 * h, 0.065 * h, (250, 250, 250))
    elif hat == "headset":
        P.line([(cx - 0.068 * h, hy), (cx - 0.06 * h, hy - 0.08 * h), (cx + 0.06 * h, hy - 0.08 * h),
                (cx + 0.068 * h, hy)], (30, 30, 30), 0.014 * h)
        P.circle(cx - 0.068 * h, hy, 0.025 * h, (30, 30, 30))
        P.circle(cx + 0.068 * h, hy, 0.025 * h, (30, 30, 30))
        P.line([(cx - 0.068 * h, hy + 0.01 * h), (cx - 0.02 * h, hy + 0.05 * h)], (30, 30, 30), 0.008 * h)
    elif hat == "bandanna":
        red = (200, 30, 35)
        P.pie(cx - 0.07 * h, hy - 0.09 * h, cx + 0.07 * h, hy + 0.02 * h, 180, 360, red)
        P.rect(cx - 0.07 * h, hy - 0.04 * h, cx + 0.07 * h, hy - 0.025 * h, red)
        P.poly([(cx - 0.07 * h, B.sy - 0.02 * h), (cx + 0.07 * h, B.sy - 0.02 * h),
                (cx, B.sy + 0.07 * h)], red)
    elif hat == "ski_mask":
        black = (22, 22, 25)
        P.ellipse(cx - 0.072 * h, hy - 0.09 * h, cx + 0.072 * h, hy + 0.085 * h, black)
        P.rect(cx - 0.06 * h, hy + 0.03 * h, cx + 0.06 * h, B.sy + 0.02 * h, black)
        # the eye opening is painted by _paint_ski_mask_eyes
    elif hat == "hood":
        col = (120, 120, 125)
        P.pie(cx - 0.09 * h, hy - 0.11 * h, cx + 0.09 * h, hy + 0.03 * h, 180, 360, col)
        for s in (-1, 1):
            P.rect(cx + s * 0.07 * h - 0.02 * h, hy - 0.04 * h, cx + s * 0.07 * h + 0.02 * h, hy + 0.1 * h, col)


def _paint_ski_mask_eyes(P, L, race, B):
    """The eye opening of the ski mask: the one patch of skin it leaves."""
    u, cx, hy = B.u, B.cx, B.hy
    h = HEAD * u
    P.person = True
    P.rect(cx - 0.045 * h, hy - 0.025 * h, cx + 0.045 * h, hy + 0.01 * h, L.skin[race])
    for s in (-1, 1):
        P.circle(cx + s * 0.025 * h, hy - 0.008 * h, 0.009 * h, (25, 20, 20))
    P.person = False


# --------------------------------------------------------------------------------------
# Props
# --------------------------------------------------------------------------------------


def _paint_prop(P: _Painter, name: str, L: Layout, B: _Body):
    u, cx, hy, fy = B.u, B.cx, B.hy, L.floor_y
    j = L.prop_jitter
    (lx, ly), (rx, ry) = B.hands
    side = 1 if j[0] >= 0 else -1
    if name == "airplane":
        y = 0.2 + 0.08 * j[1]
        P.ellipse(-0.3, y, 1.3, y + 0.26, (235, 238, 242))
        for x in np.arange(0.0, 1.0, 0.09):
            P.rect(x, y + 0.07, x + 0.04, y + 0.11, (60, 80, 110))
        P.poly([(0.05 + 0.05 * j[2], y + 0.2), (0.35, y + 0.2), (0.05, y + 0.45)], (210, 212, 218))
        P.ellipse(0.6 + 0.1 * j[3], y + 0.2, 0.85 + 0.1 * j[3], y + 0.33, (180, 185, 195))
    elif name == "shelf_pots":
        y = 0.25 + 0.05 * j[1]
        P.rect(0, y, 1, y + 0.02, (120, 120, 125))
        for x in np.arange(0.05 + 0.05 * j[2], 1, 0.18):
            P.rect(x, y - 0.08, x + 0.1, y, (150, 150, 160))
    elif name == "columns":
        for x in np.arange(0.08 + 0.05 * j[1], 1, 0.28):
            P.rect(x - 0.05, 0.05, x + 0.05, L.floor_y, (225, 220, 210))
            P.rect(x - 0.07, 0.03, x + 0.07, 0.08, (235, 230, 220))
            for dx in (-0.025, 0, 0.025):
                P.rect(x + dx - 0.003, 0.08, x + dx + 0.003, L.floor_y, (195, 190, 180))
    elif name == "blackboard":
        x0 = 0.02 + 0.06 * j[1]
        P.rect(x0, 0.06, x0 + 0.96 - 0.08, 0.5, (150, 100, 60))
        P.rect(x0 + 0.02, 0.08, x0 + 0.94 - 0.08, 0.48, (35, 75, 50))
        for k in range(4):
            y = 0.14 + 0.08 * k
            P.line([(x0 + 0.06, y), (x0 + 0.3 + 0.1 * abs(j[k]), y + 0.01)], (230, 230, 220), 0.008)
    elif name == "dental_chair":
        x = 0.5 - side * 0.32
        P.poly([(x - 0.15, fy + 0.05), (x + 0.15, fy + 0.05), (x + 0.12, fy - 0.15), (x - 0.05, fy - 0.35),
                (x - 0.12, fy - 0.3)], (120, 180, 210))
        P.line([(x + 0.1, 0.05), (x, 0.2)], (200, 200, 200), 0.015)
    elif name == "lamp":
        x = 0.5 - side * 0.32
        P.ellipse(x - 0.08, 0.17, x + 0.06, 0.25, (240, 240, 220))
    elif name == "pinboard":
        x0 = 0.05 + 0.5 * (j[1] > 0)
        P.rect(x0, 0.08, x0 + 0.38, 0.35, (190, 150, 100))
        for k in range(5):
            px = x0 + 0.03 + 0.07 * k
            P.rect(px, 0.12 + 0.05 * (k % 2), px + 0.05, 0.2 + 0.05 * (k % 2),
                   [(250, 250, 120), (250, 250, 250), (150, 200, 250)][k % 3])
    elif name == "flasks":
        y = 0.3 + 0.05 * j[1]
        P.rect(0, y, 1, y + 0.02, (170, 170, 180))
        for k, x in enumerate(np.arange(0.05, 1, 0.12)):
            col = [(80, 180, 220), (220, 80, 120), (120, 220, 100)][k % 3]
            P.poly([(x, y), (x + 0.08, y), (x + 0.05, y - 0.07), (x + 0.03, y - 0.07)], col)
            P.rect(x + 0.03, y - 0.12, x + 0.05, y - 0.07, (220, 230, 235))
    elif name == "bookshelf":
        for y in np.arange(0.05, L.floor_y - 0.1, 0.14):
            P.rect(0, y + 0.12, 1, y + 0.14, (80, 50, 30))
            x = 0.0
            k = 0
            while x < 1:
                w = 0.025 + 0.015 * ((k * 7 + int(5 * j[2])) % 3)
                col = [(150, 40, 40), (40, 70, 130), (40, 110, 60), (180, 150, 60),
                       (90, 40, 90)][(k + int(3 * j[1])) % 5]
                P.rect(x, y + 0.03 + 0.01 * (k % 2), x + w, y + 0.12, col)
                x += w + 0.005
                k += 1
    elif name == "rake":
        x = cx + side * 0.25
        P.line([(x, fy + 0.2), (x + side * 0.05, 0.15)], (130, 90, 50), 0.015)
        P.rect(x + side * 0.05 - 0.06, 0.12, x + side * 0.05 + 0.06, 0.15, (90, 90, 90))
    elif name == "tables":
        for x in (0.12, 0.88):
            P.rect(x - 0.12, fy - 0.08, x + 0.12, fy - 0.04, (245, 245, 240))
            P.rect(x - 0.1, fy - 0.04, x + 0.1, fy + 0.05, (230, 225, 220))
    elif name == "taxi":
        x0 = 0.5 + side * 0.05 - 0.45
        y0 = fy - 0.2 + 0.03 * j[1]
        P.rect(x0, y0, x0 + 0.9, y0 + 0.22, (245, 200, 30))
        P.rect(x0 + 0.15, y0 - 0.12, x0 + 0.7, y0, (240, 195, 30))
        P.rect(x0 + 0.2, y0 - 0.1, x0 + 0.65, y0 - 0.01, (50, 60, 80))
        for k in range(9):
            P.rect(x0 + 0.1 * k, y0 + 0.08, x0 + 0.1 * k + 0.05, y0 + 0.1, (20, 20, 20))
        for wx in (x0 + 0.18, x0 + 0.72):
            P.circle(wx, y0 + 0.22, 0.07, (25, 25, 25))
    elif name == "store_shelves":
        for x in (0.0, 0.68):
            P.rect(x, 0.08, x + 0.32, L.floor_y, (210, 210, 215))
            for y in np.arange(0.12, L.floor_y - 0.05, 0.1):
                for k, bx in enumerate(np.arange(x + 0.01, x + 0.3, 0.045)):
                    col = [(230, 50, 50), (50, 120, 230), (250, 200, 40), (40, 170, 80), (240, 130, 30)][
                        (k + int(10 * y) + int(3 * j[1])) % 5]
                    P.rect(bx, y, bx + 0.035, y + 0.07, col)
    elif name == "bench":
        P.rect(0.1, 0.25 + 0.05 * j[1], 0.9, L.floor_y, (110, 65, 35))
        P.rect(0.08, 0.23 + 0.05 * j[1], 0.92, 0.27 + 0.05 * j[1], (140, 90, 50))
        P.circle(0.5, 0.12, 0.06, (200, 170, 80))
    elif name == "flying_bills":
        for k in range(8):
            x = (0.1 + 0.12 * k + 0.05 * j[k % 8]) % 1.0
            y = 0.05 + 0.06 * ((k * 5) % 7)
            P.poly([(x, y), (x + 0.07, y + 0.01), (x + 0.065, y + 0.045), (x - 0.005, y + 0.035)], (110, 170, 100))
    elif name == "window":
        x0 = cx - 0.2 + 0.05 * j[1]
        P.rect(x0, 0.02, x0 + 0.4, 0.45, (240, 240, 235))
        P.rect(x0 + 0.03, 0.05, x0 + 0.37, 0.42, (120, 170, 210))
        P.rect(x0 + 0.19, 0.05, x0 + 0.21, 0.42, (240, 240, 235))
        P.rect(x0 + 0.03, 0.22, x0 + 0.37, 0.24, (240, 240, 235))
    elif name == "bus_poles":
        for x in (0.1 + 0.05 * j[1], 0.9 - 0.05 * j[2]):
            P.rect(x - 0.012, 0, x + 0.012, 1, (240, 200, 40))
        P.rect(0, 0.42, 1, 0.45, (60, 60, 60))
    elif name == "tent":
        x = cx + side * 0.3
        col = (230, 120, 40) if j[2] > 0 else (60, 130, 80)
        P.poly([(x - 0.3, fy + 0.05), (x + 0.3, fy + 0.05), (x, fy - 0.38)], col)
        P.poly([(x - 0.06, fy + 0.05), (x + 0.06, fy + 0.05), (x, fy - 0.2)], _shade(col, 0.5))
    elif name == "train":
        y0 = 0.1 + 0.05 * j[1]
        P.rect(0, y0, 1, L.floor_y + 0.02, (190, 195, 205))
        P.rect(0, L.floor_y - 0.1, 1, L.floor_y - 0.06, (200, 40, 40))
        for x in np.arange(0.03 + 0.03 * j[2], 1, 0.2):
            P.rect(x, y0 + 0.08, x + 0.13, y0 + 0.25, (60, 80, 100))
    elif name == "campus_building":
        y0 = 0.15 + 0.05 * j[1]
        P.rect(0, y0, 1, L.floor_y, (170, 80, 60))
        P.poly([(0.2, y0), (0.8, y0), (0.5, y0 - 0.14)], (235, 230, 220))
        for x in np.arange(0.05, 1, 0.15):
            P.rect(x, y0 + 0.08, x + 0.07, y0 + 0.2, (240, 240, 230))
    elif name == "counter":
        y = 0.72 + 0.04 * j[1]
        P.rect(0, y, 1, 1, (55, 40, 30))
        P.rect(0, y, 1, y + 0.03, (90, 70, 55))
        x = 0.5 + side * 0.3
        P.rect(x - 0.08, y - 0.16, x + 0.08, y, (150, 150, 155))
        P.rect(x - 0.05, y - 0.06, x + 0.05, y - 0.02, (30, 30, 30))
    elif name == "clipboard":
        x, y = (lx + rx) / 2, (ly + ry) / 2
        P.rect(x - 0.06 * u, y - 0.09 * u, x + 0.06 * u, y + 0.06 * u, (150, 110, 60))
        P.rect(x - 0.05 * u, y - 0.075 * u, x + 0.05 * u, y + 0.05 * u, (250, 250, 250))
        for k in range(3):
            y0 = y - 0.05 * u + 0.03 * k * u
            P.rect(x - 0.04 * u, y0, x + 0.03 * u, y0 + 0.005 * u, (60, 60, 60))
    elif name == "mug":
        x, y = rx, ry
        P.rect(x - 0.035 * u, y - 0.06 * u, x + 0.035 * u, y + 0.02 * u, (240, 240, 240))
        P.rect(x + 0.035 * u, y - 0.045 * u, x + 0.05 * u, y - 0.01 * u, (240, 240, 240))
        for dx in (-0.015, 0.015):
            P.line([(x + dx * u, y - 0.08 * u), (x + (dx + 0.01) * u, y - 0.14 * u)], (200, 200, 200), 0.008 * u)
    elif name == "desk":
        y = 0.66 + 0.05 * j[1]
        P.rect(0, y, 1, 1, (140, 100, 65))
        P.rect(0, y, 1, y + 0.03, (170, 125, 85))
    elif name == "monitor":
        y = 0.66 + 0.05 * j[1]
        x = 0.5 + side * 0.28
        P.rect(x - 0.17, y - 0.25, x + 0.17, y - 0.04, (20, 20, 25))
        P.rect(x - 0.15, y - 0.23, x + 0.15, y - 0.06, (40, 90, 160))
        for k in range(4):
            P.rect(x - 0.12, y - 0.2 + 0.035 * k, x - 0.02 + 0.03 * k, y - 0.19 + 0.035 * k, (150, 220, 150))
        P.rect(x - 0.02, y - 0.04, x + 0.02, y, (20, 20, 25))
    elif name == "papers":
        y = 0.66 + 0.05 * j[1]
        x = 0.5 - side * 0.25
        P.rect(x - 0.1, y + 0.02, x + 0.08, y + 0.1, (250, 250, 250))
        P.rect(x - 0.06, y + 0.03, x + 0.12, y + 0.11, (235, 235, 240))
    elif name == "mop":
        P.line([(lx, ly - 0.05 * u), (rx + 0.05 * u, 0.97)], (190, 160, 110), 0.02 * u)
        P.ellipse(rx - 0.05 * u, 0.94, rx + 0.15 * u, 1.0, (200, 200, 190))
    elif name == "bucket":
        x = cx - 0.3 * u * side
        P.poly([(x - 0.07, 0.82), (x + 0.07, 0.82), (x + 0.055, 0.97), (x - 0.055, 0.97)], (240, 210, 30))
    elif name == "plate":
        x, y = rx, ry
        P.ellipse(x - 0.08 * u, y - 0.02 * u, x + 0.08 * u, y + 0.03 * u, (250, 250, 250))
        P.ellipse(x - 0.04 * u, y - 0.025 * u, x + 0.04 * u, y + 0.01 * u, (200, 120, 60))
    elif name == "stethoscope":
        P.line([(cx - 0.05 * u, B.sy), (cx - 0.04 * u, B.sy + 0.12 * u), (cx + 0.02 * u, B.sy + 0.16 * u)],
               (30, 30, 35), 0.012 * u)
        P.line([(cx + 0.05 * u, B.sy), (cx + 0.04 * u, B.sy + 0.1 * u)], (30, 30, 35), 0.012 * u)
        P.circle(cx + 0.03 * u, B.sy + 0.17 * u, 0.02 * u, (180, 180, 190))
    elif name == "book":
        y = 0.66 + 0.05 * j[1]
        P.poly([(cx - 0.18, y + 0.02), (cx, y + 0.04), (cx, y + 0.12), (cx - 0.18, y + 0.1)], (250, 250, 245))
        P.poly([(cx + 0.18, y + 0.02), (cx, y + 0.04), (cx, y + 0.12), (cx + 0.18, y + 0.1)], (240, 240, 235))
    elif name == "cone":
        x = cx + side * 0.28
        P.poly([(x - 0.07, 0.96), (x + 0.07, 0.96), (x + 0.015, 0.72), (x - 0.015, 0.72)], (250, 110, 20))
        P.rect(x - 0.045, 0.83, x + 0.045, 0.86, (250, 250, 250))
    elif name == "bat":
        P.line([(rx, ry), (rx + 0.12 * u, ry - 0.38 * u)], (190, 150, 100), 0.035 * u)
    elif name == "cash_pile":
        for k in range(6):
            x = 0.08 + 0.15 * k + 0.02 * j[k % 8]
            y = 0.85 - 0.05 * (k % 3)
            P.rect(x, y, x + 0.14, y + 0.08, (120, 170, 110))
            P.rect(x + 0.05, y, x + 0.09, y + 0.08, (230, 230, 220))
        P.rect(lx - 0.06 * u, ly - 0.04 * u, rx + 0.06 * u, ry + 0.03 * u, (110, 165, 100))
    elif name == "cigarette":
        P.line([(rx, ry), (rx + 0.06 * u, ry - 0.01 * u)], (245, 245, 240), 0.012 * u)
        for k in range(3):
            P.circle(rx + 0.07 * u + 0.02 * k * u, ry - 0.05 * u - 0.05 * k * u, 0.02 * u, (170, 170, 175))
    elif name == "basketball":
        x, y = (lx + rx) / 2, (ly + ry) / 2
        P.circle(x, y, 0.09 * u, (220, 110, 30))
        P.line([(x - 0.09 * u, y), (x + 0.09 * u, y)], (40, 20, 10), 0.008 * u)
        P.line([(x, y - 0.09 * u), (x, y + 0.09 * u)], (40, 20, 10), 0.008 * u)
    elif name == "stove":
        P.rect(0, 0.74 + 0.03 * j[1], 1, 1, (230, 230, 230))
        y = 0.74 + 0.03 * j[1]
        x = cx + side * 0.15
        P.rect(x - 0.1, y - 0.09, x + 0.1, y, (110, 110, 120))
        P.rect(x - 0.12, y - 0.1, x + 0.12, y - 0.08, (80, 80, 90))
        for k in range(3):
            P.line([(x - 0.05 + 0.05 * k, y - 0.12), (x - 0.04 + 0.05 * k, y - 0.2)], (225, 225, 225), 0.008)
    elif name == "guitar":
        bx, by = cx + 0.02 * u, B.sy + 0.31 * u
        P.line([(bx, by), (lx - 0.02 * u, ly - 0.01 * u)], (90, 55, 30), 0.025 * u)
        P.ellipse(bx - 0.11 * u, by - 0.08 * u, bx + 0.11 * u, by + 0.1 * u, (190, 120, 50))
        P.circle(bx, by, 0.025 * u, (50, 30, 15))
    elif name == "mic":
        P.line([(rx, ry + 0.02 * u), (rx, 1.0)], (40, 40, 45), 0.015 * u)
        P.circle(rx, ry - 0.01 * u, 0.025 * u, (90, 90, 100))
    elif name == "phone":
        P.rect(rx - 0.015 * u, ry - 0.04 * u, rx + 0.015 * u, ry + 0.03 * u, (20, 20, 25))
    elif name == "bags":
        for k, (x, y) in enumerate(B.hands):
            col = [(220, 60, 90), (240, 180, 40)][k] if j[4] > 0 else [(60, 140, 220), (200, 90, 40)][k]
            P.rect(x - 0.06 * u, y + 0.02 * u, x + 0.06 * u, y + 0.16 * u, col)
            handle = [(x - 0.03 * u, y + 0.02 * u), (x, y - 0.01 * u), (x + 0.03 * u, y + 0.02 * u)]
            P.line(handle, (40, 40, 40), 0.008 * u)
    elif name == "stroller":
        x, y = rx + 0.12 * u, ry + 0.08 * u
        P.line([(rx, ry), (x, y)], (40, 40, 40), 0.012 * u)
        P.pie(x - 0.02 * u, y - 0.05 * u, x + 0.26 * u, y + 0.2 * u, 180, 360, (60, 70, 120))
        P.rect(x - 0.02 * u, y + 0.07 * u, x + 0.26 * u, y + 0.16 * u, (60, 70, 120))
        for wx in (x + 0.03 * u, x + 0.22 * u):
            P.circle(wx, y + 0.2 * u, 0.035 * u, (25, 25, 25))
    elif name == "wine_glass":
        P.poly([(rx - 0.03 * u, ry - 0.1 * u), (rx + 0.03 * u, ry - 0.1 * u), (rx, ry - 0.03 * u)], (150, 20, 40))
        P.line([(rx, ry - 0.03 * u), (rx, ry + 0.02 * u)], (220, 220, 230), 0.008 * u)
    elif name == "bottle":
        x = cx - side * 0.28
        P.rect(x - 0.035, 0.62, x + 0.035, 0.9, (30, 70, 40))
        P.rect(x - 0.012, 0.55, x + 0.012, 0.62, (30, 70, 40))
        P.rect(x - 0.03, 0.7, x + 0.03, 0.78, (230, 220, 190))
        P.rect(0, 0.9, 1, 1, (80, 45, 30))
    else:  # pragma: no cover - every prop a scenario names has a painter (tested)
        raise FairVLMError(f"no painter for prop {name!r}")


# --------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------


def _draw(key: str, gender: str, race: str, scene_seed: int, size: int, want_mask: bool):
    sc = scenario(key)
    variant_name(gender, race)
    size = _check_size(size)
    L = layout(key, scene_seed)
    n = size * SUPERSAMPLE
    P = _Painter(n, want_mask)
    _paint_setting(P, L, sc.setting)
    _paint_clutter(P, L)
    B = _body(L)
    for name in sc.back:
        _paint_prop(P, name, L, B)
    _paint_person(P, sc, L, gender, race)
    if sc.hat == "ski_mask":
        _paint_ski_mask_eyes(P, L, race, B)
    for name in sc.front:
        _paint_prop(P, name, L, B)
    img, mask = P.img, P.mask
    if L.flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        mask = mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if mask is not None else None
    img = img.resize((size, size), Image.Resampling.BOX)
    arr = np.asarray(img, dtype=np.float32)
    arr = (arr - 128.0) * L.contrast + 128.0 + L.brightness
    noise = np.random.default_rng(L.noise_seed).normal(0.0, L.noise_sigma, arr.shape).astype(np.float32)
    arr = np.clip(np.rint(arr + noise), 0, 255).astype(np.uint8)
    out = Image.fromarray(arr, "RGB")
    if mask is not None:
        # a downsampled pixel can change only if one of its sub-pixels is the person's
        mask = np.asarray(mask.resize((size, size), Image.Resampling.BOX)) > 0
    return out, mask


def render(scenario_key: str, gender: str, race: str, scene_seed: int, size: int = DEFAULT_SIZE) -> Image.Image:
    """Render one scene for one group as an RGB ``PIL.Image`` of ``size x size`` pixels.

    ``scenario_key`` is a PAIRS key (``"airplane"``), ``gender`` in :data:`GENDERS`, ``race``
    in :data:`RACES`, ``scene_seed`` a non-negative integer (its :func:`split_of` says which
    split it belongs to). Deterministic: the same arguments give the same bytes.
    """
    return _draw(scenario_key, gender, race, scene_seed, size, False)[0]


def render_variants(scenario_key: str, scene_seed: int, size: int = DEFAULT_SIZE) -> dict:
    """The four PAIRS variants of one scene: ``{"black_man": Image, ...}`` in PAIRS order."""
    out = {}
    for v in VARIANTS:
        gender, race = parse_variant(v)
        out[v] = render(scenario_key, gender, race, scene_seed, size)
    return out


def person_mask(scenario_key: str, scene_seed: int, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Boolean ``(size, size)`` mask: the union of the person's pixels over the four variants.

    Every pixel that differs between two variants of the scene lies inside this mask.
    """
    masks = [_draw(scenario_key, *parse_variant(v), scene_seed, size, True)[1] for v in VARIANTS]
    return np.logical_or.reduce(masks)


def gallery(n_scenes: int, *, split: str = "heldout", scenarios=None, start: int = 0):
    """A balanced gallery: every scenario x ``n_scenes`` scenes x the four variants.

    Returns a ``pandas.DataFrame`` with one row per image and the columns ``scenario``,
    ``section``, ``scene_seed``, ``variant``, ``gender``, ``race`` (ordered by scenario,
    scene, variant). The four variants of a scene share its seed, so the gallery is made of
    counterfactual quadruplets and every group appears equally often in every scenario.
    Render the rows with :func:`render_rows`.
    """
    import pandas as pd

    if isinstance(n_scenes, bool) or not isinstance(n_scenes, int) or n_scenes < 1:
        raise FairVLMError(f"n_scenes={n_scenes!r} must be a positive integer")
    keys = list(SCENARIO_KEYS) if scenarios is None else list(scenarios)
    for k in keys:
        scenario(k)
    rows = []
    for k in keys:
        for s in scene_seeds(split, n_scenes, start=start):
            for v in VARIANTS:
                g, r = parse_variant(v)
                rows.append({"scenario": k, "section": SCENARIOS[k].section, "scene_seed": s,
                             "variant": v, "gender": g, "race": r})
    return pd.DataFrame(rows)


def render_rows(rows, size: int = DEFAULT_SIZE, *, progress: bool = False) -> list:
    """Render every row of a table with ``scenario``, ``gender``, ``race``, ``scene_seed``."""
    from tqdm.auto import tqdm

    it = rows[["scenario", "gender", "race", "scene_seed"]].itertuples(index=False)
    if progress:
        it = tqdm(it, total=len(rows), desc="rendering", leave=False)
    return [render(k, g, r, int(s), size) for k, g, r, s in it]


def render_array(items, size: int = DEFAULT_SIZE) -> np.ndarray:
    """Render ``(scenario, gender, race, scene_seed)`` tuples into a ``(n, size, size, 3)`` uint8 array."""
    out = np.empty((len(items), size, size, 3), dtype=np.uint8)
    for i, (k, g, r, s) in enumerate(items):
        out[i] = np.asarray(render(k, g, r, int(s), size))
    return out


def person_box(scenario_key: str, scene_seed: int) -> tuple[float, float, float, float]:
    """``(x0, y0, x1, y1)`` in fractions of the side: a box around the person's head and
    shoulders, scaled with the person (mirror flip applied). Cropping every image to its box
    aligns the people, so a reader of the crops is not confused by where the scene put them
    (``fairvlm.testbed.measure.aligned_crops``)."""
    L = layout(scenario_key, scene_seed)
    B = _body(L)
    half = 0.26 * B.u
    x0, x1 = B.cx - half, B.cx + half
    if L.flip:
        x0, x1 = 1 - x1, 1 - x0
    return (x0, B.hy - 0.16 * B.u, x1, B.hy - 0.16 * B.u + 2 * half)
