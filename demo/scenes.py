"""Procedural scenes with compositional prompts: the training data of the proxy FLUX model (:mod:`.proxy`).

Why: the 8-photo demo model memorises its images and snaps to one of them within the first steps, so its denoising
trajectory is unlike a text-to-image model's. Here every image is drawn from a prompt over a small compositional
language (sky palette, ground, 1-3 objects with shape, colour, size and an absolute place or a relation), so a model
trained on them must *generalise*: the layout follows from the prompt early in denoising, the details (edges, shading,
texture, stars) come late.

A scene is a :class:`SceneSpec` (pure data); :func:`render` / :func:`render_batch` draw specs (vectorised torch, on any
device; supersampled x2 and box-filtered for antialiasing), :func:`sample_specs` draws random specs from a
``torch.Generator`` (deterministic), :func:`tokenize` maps a prompt to word ids of :data:`VOCAB`. Everything that is
not said in the prompt (exact positions, horizon height, textures, star field) varies per scene, derived from the
spec's ``seed``, so one prompt has many valid images. No network, no dependencies beyond torch and numpy.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

#: Training resolution in pixels (latent 16x16 at the codec's 8 px per cell).
IMAGE_SIZE = 128
SUPERSAMPLE = 2

SHAPES = ("circle", "square", "triangle", "star", "ring", "diamond", "cross")
#: name -> linear-ish RGB in 0..1
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.13, 0.11), "orange": (0.96, 0.52, 0.10), "yellow": (0.96, 0.86, 0.16),
    "green": (0.16, 0.62, 0.22), "blue": (0.14, 0.30, 0.86), "purple": (0.52, 0.20, 0.70),
    "pink": (0.97, 0.52, 0.72), "white": (0.95, 0.95, 0.94), "black": (0.09, 0.09, 0.10),
}
#: size word -> radius as a fraction of the image side
SIZES: dict[str, float] = {"small": 0.075, "medium": 0.12, "large": 0.18}
#: place word -> (anchor x, anchor y) in 0..1, y down; the prompt says e.g. "on the left"
PLACES: dict[str, tuple[float, float]] = {
    "left": (0.24, 0.5), "right": (0.76, 0.5), "top": (0.5, 0.24), "bottom": (0.5, 0.76), "centre": (0.5, 0.5)}
PLACE_PHRASES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
                 "centre": "in the centre"}
#: relation -> unit direction from the second object to the first ("A left of B": A is at B + (-1, 0) * distance)
RELATIONS: dict[str, tuple[float, float]] = {
    "left of": (-1.0, 0.0), "right of": (1.0, 0.0), "above": (0.0, -1.0), "below": (0.0, 1.0)}
#: sky -> (zenith colour, horizon colour)
SKIES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "day": ((0.22, 0.45, 0.85), (0.70, 0.84, 0.96)),
    "sunset": ((0.30, 0.18, 0.45), (0.98, 0.58, 0.25)),
    "night": ((0.02, 0.03, 0.10), (0.10, 0.14, 0.30)),
    "overcast": ((0.52, 0.54, 0.58), (0.78, 0.79, 0.80)),
}
#: ground phrase -> (colour at the horizon, colour at the bottom edge)
GROUNDS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "grassy ground": ((0.40, 0.58, 0.25), (0.16, 0.40, 0.10)),
    "sandy ground": ((0.88, 0.78, 0.56), (0.76, 0.62, 0.38)),
    "snowy ground": ((0.90, 0.93, 0.97), (0.78, 0.84, 0.93)),
    "calm water": ((0.34, 0.52, 0.66), (0.08, 0.22, 0.38)),
}

MAX_TOKENS = 32
PAD = "<pad>"
#: Every word any prompt can use; a word's id is its index (0 = padding).
VOCAB: tuple[str, ...] = (
    PAD, "a", "and", "on", "in", "at", "the", "of", "sky", "ground",
    "left", "right", "top", "bottom", "centre", "above", "below",
    *SIZES, *COLOURS, *SHAPES, *SKIES, "grassy", "sandy", "snowy", "calm", "water",
)
_WORD_ID = {w: i for i, w in enumerate(VOCAB)}


@dataclass(frozen=True)
class ObjectSpec:
    """One object: what it is (said in the prompt) and where its centre is (x, y in 0..1, y down)."""

    shape: str
    colour: str
    size: str
    x: float
    y: float
    place: str | None = None  # the PLACES word said for it, or None when a relation places it

    @property
    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape}"


@dataclass(frozen=True)
class SceneSpec:
    """A whole scene. ``relation`` (if set) says ``objects[0] <relation> objects[1]``; ``seed`` fixes what the
    prompt does not say (textures, stars)."""

    sky: str
    ground: str
    horizon: float  # y of the horizon, 0..1 from the top
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None
    seed: int = 0

    @property
    def prompt(self) -> str:
        objs = self.objects
        if self.relation is not None:
            parts = [f"{objs[0].phrase} {self.relation} {objs[1].phrase}"]
            parts += [f"{o.phrase} {PLACE_PHRASES[o.place]}" for o in objs[2:]]
        else:
            parts = [f"{o.phrase} {PLACE_PHRASES[o.place]}" for o in objs]
        things = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return f"{things}, {self.sky} sky, {self.ground}"


def tokenize(prompt: str, max_tokens: int = MAX_TOKENS) -> list[int]:
    """Word ids of ``prompt`` (lower-cased, punctuation dropped), padded with 0 / truncated to ``max_tokens``.
    Raises KeyError for a word outside :data:`VOCAB`."""
    words = re.findall(r"[a-z]+", prompt.lower())
    unknown = [w for w in words if w not in _WORD_ID]
    if unknown:
        raise KeyError(f"words outside the proxy vocabulary: {unknown}")
    ids = [_WORD_ID[w] for w in words][:max_tokens]
    return ids + [0] * (max_tokens - len(ids))


# -- random specs ------------------------------------------------------------------------------------------------

def _random_object(rng: np.random.Generator, x: float, y: float, place: str | None, size: str | None = None
                   ) -> ObjectSpec:
    return ObjectSpec(str(rng.choice(SHAPES)), str(rng.choice(list(COLOURS))),
                      size or str(rng.choice(list(SIZES))), float(x), float(y), place)


def _jittered(rng: np.random.Generator, place: str, amount: float = 0.06) -> tuple[float, float]:
    ax, ay = PLACES[place]
    return ax + rng.uniform(-amount, amount), ay + rng.uniform(-amount, amount)


def random_spec(rng: np.random.Generator) -> SceneSpec:
    """One random scene: 1-3 objects (45/35/20%); with two or more, 40% place the first relative to the second."""
    sky, ground = str(rng.choice(list(SKIES))), str(rng.choice(list(GROUNDS)))
    horizon = float(rng.uniform(0.52, 0.80))
    count = int(rng.choice([1, 2, 3], p=[0.45, 0.35, 0.20]))
    relation = str(rng.choice(list(RELATIONS))) if count >= 2 and rng.random() < 0.4 else None
    places = [str(p) for p in rng.permutation(list(PLACES))]
    objects: list[ObjectSpec] = []
    if relation is not None:
        a_size, b_size = (str(s) for s in rng.choice(list(SIZES), 2))
        dx, dy = RELATIONS[relation]
        gap = SIZES[a_size] + SIZES[b_size] + rng.uniform(0.04, 0.12)
        bx, by = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7)
        ax = bx + dx * gap + (rng.uniform(-0.04, 0.04) if dx == 0 else 0.0)
        ay = by + dy * gap + (rng.uniform(-0.04, 0.04) if dy == 0 else 0.0)
        # shift the pair so that both centres stay inside the frame
        ra, rb = 1.1 * SIZES[a_size] + 0.02, 1.1 * SIZES[b_size] + 0.02  # keep both shapes inside the frame
        lo = min(ax - ra, bx - rb), min(ay - ra, by - rb)
        hi = max(ax + ra, bx + rb), max(ay + ra, by + rb)
        sx = max(0.0, -lo[0]) - max(0.0, hi[0] - 1.0)
        sy = max(0.0, -lo[1]) - max(0.0, hi[1] - 1.0)
        objects += [_random_object(rng, ax + sx, ay + sy, None, a_size),
                    _random_object(rng, bx + sx, by + sy, None, b_size)]
        places = places[:count - 2]
    else:
        places = places[:count]
    objects += [_random_object(rng, *_jittered(rng, p), p) for p in places]
    return SceneSpec(sky, ground, horizon, tuple(objects), relation, int(rng.integers(0, 2 ** 31 - 1)))


def sample_specs(count: int, generator: torch.Generator) -> list[SceneSpec]:
    """``count`` random scenes, deterministic given the state of ``generator`` (it seeds a numpy PCG64 stream)."""
    seed = int(torch.randint(0, 2 ** 62, (), generator=generator))
    rng = np.random.default_rng(seed)
    return [random_spec(rng) for _ in range(count)]


def sample_scenes(count: int, size: int = IMAGE_SIZE, generator: torch.Generator | None = None,
                  device: str | torch.device = "cpu") -> tuple[torch.Tensor, list[str]]:
    """``count`` random scenes rendered: (images (count, size, size, 3) float 0..1 on ``device``, prompts)."""
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    specs = sample_specs(count, generator)
    return render_batch(specs, size, device=device), [s.prompt for s in specs]


# -- the fixed evaluation prompts ------------------------------------------------------------------------------------

def _eval_object(shape: str, colour: str, size: str, place: str | None = None,
                 at: tuple[float, float] | None = None) -> ObjectSpec:
    x, y = at if at is not None else PLACES[place]
    return ObjectSpec(shape, colour, size, x, y, place)


#: Fixed, varied scenes (every sky and ground, 1-3 objects, both relation kinds) whose renders are the references
#: benchmarks and tests compare samples with.
EVAL_SPECS: tuple[SceneSpec, ...] = (
    SceneSpec("day", "grassy ground", 0.66, (_eval_object("circle", "red", "large", "centre"),), seed=1),
    SceneSpec("sunset", "calm water", 0.62, (_eval_object("star", "yellow", "medium", "left"),
                                             _eval_object("square", "blue", "small", "right")), seed=2),
    SceneSpec("night", "snowy ground", 0.70, (_eval_object("ring", "white", "large", at=(0.30, 0.42)),
                                              _eval_object("triangle", "orange", "small", at=(0.62, 0.42))),
              relation="left of", seed=3),
    SceneSpec("overcast", "sandy ground", 0.58, (_eval_object("diamond", "purple", "medium", "top"),
                                                 _eval_object("cross", "green", "medium", "bottom"),
                                                 _eval_object("circle", "pink", "small", "left")), seed=4),
    SceneSpec("day", "calm water", 0.74, (_eval_object("triangle", "green", "large", at=(0.5, 0.30)),
                                          _eval_object("square", "black", "medium", at=(0.5, 0.64))),
              relation="above", seed=5),
    SceneSpec("sunset", "grassy ground", 0.68, (_eval_object("square", "white", "large", "right"),), seed=6),
    SceneSpec("night", "sandy ground", 0.60, (_eval_object("star", "pink", "large", "centre"),
                                              _eval_object("circle", "yellow", "small", "top"),
                                              _eval_object("ring", "blue", "medium", "bottom")), seed=7),
    SceneSpec("overcast", "snowy ground", 0.76, (_eval_object("cross", "red", "small", "left"),
                                                 _eval_object("diamond", "blue", "large", "right")), seed=8),
)
EVAL_PROMPTS: list[str] = [s.prompt for s in EVAL_SPECS]


def eval_references(size: int = IMAGE_SIZE) -> torch.Tensor:
    """The reference render of every EVAL_PROMPT: (len(EVAL_PROMPTS), size, size, 3)."""
    return render_batch(list(EVAL_SPECS), size)


# -- rendering -------------------------------------------------------------------------------------------------------

def _box(px: torch.Tensor, py: torch.Tensor, bx: float | torch.Tensor, by: float | torch.Tensor) -> torch.Tensor:
    qx, qy = px.abs() - bx, py.abs() - by
    outside = torch.sqrt(qx.clamp_min(0) ** 2 + qy.clamp_min(0) ** 2)
    return outside + torch.maximum(qx, qy).clamp_max(0)


_K1 = (0.809016994375, -0.587785252292)  # cos/sin of the star's 36-degree fold


def _star(px: torch.Tensor, py: torch.Tensor, r: torch.Tensor, inner: float = 0.45) -> torch.Tensor:
    """Signed distance to a 5-pointed star pointing up (Inigo Quilez's sdStar5, y flipped to point up)."""
    x, y = px.abs(), -py
    for kx, ky in (_K1, (-_K1[0], _K1[1])):
        d = (kx * x + ky * y).clamp_min(0)
        x, y = x - 2 * d * kx, y - 2 * d * ky
    x, y = x.abs(), y - r
    bax, bay = -inner * _K1[1], inner * _K1[0] - 1.0
    h = ((x * bax + y * bay) / (bax * bax + bay * bay)).clamp(min=0).minimum(r)
    return torch.sqrt((x - bax * h) ** 2 + (y - bay * h) ** 2) * torch.sign(y * bax - x * bay)


def shape_sdf(shape: str, px: torch.Tensor, py: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Signed distance (negative inside, image units) from the object centre offset (px, py) to ``shape`` of
    radius ``r`` (broadcast over batch)."""
    if shape == "circle":
        return torch.sqrt(px * px + py * py) - r
    if shape == "square":
        return _box(px, py, 0.78 * r, 0.78 * r) - 0.04 * r
    if shape == "triangle":  # equilateral, pointing up, centroid at the centre, circumradius 1.2 r
        n = 0.6 * r
        return torch.maximum(py - n, torch.maximum(0.866 * px - 0.5 * py, -0.866 * px - 0.5 * py) - n)
    if shape == "star":
        return _star(px, py, 1.15 * r)
    if shape == "ring":
        return (torch.sqrt(px * px + py * py) - 0.72 * r).abs() - 0.28 * r
    if shape == "diamond":
        return (px.abs() + py.abs() - 1.1 * r) * 0.7071
    if shape == "cross":
        return torch.minimum(_box(px, py, 0.95 * r, 0.3 * r), _box(px, py, 0.3 * r, 0.95 * r))
    raise ValueError(f"unknown shape {shape!r}")


NOISE_CELLS = (5, 14, 40)  # low, mid and fine texture grids
STARS = 40


def _unsaid(spec: SceneSpec, side: int) -> list[torch.Tensor]:
    """What the prompt leaves open, drawn from the spec's seed in a fixed order (so a scene renders the same in any
    batch): the noise grids, the sun's x, the star pixels and their brightness."""
    g = torch.Generator().manual_seed(spec.seed)
    grids = [torch.randn(1, n, n, generator=g) for n in NOISE_CELLS]
    return grids + [0.2 + 0.6 * torch.rand(1, generator=g), torch.randint(0, side * side, (STARS,), generator=g),
                    0.4 + 0.6 * torch.rand(STARS, generator=g)]


def _upsample(grid: torch.Tensor, side: int) -> torch.Tensor:
    """Smooth value noise: (B, 1, n, n) normal grids bicubically upsampled to (B, side, side)."""
    return F.interpolate(grid, size=(side, side), mode="bicubic", align_corners=False)[:, 0]


def _table(specs: list[SceneSpec], field: str, table: dict, device: torch.device) -> torch.Tensor:
    return torch.tensor([table[getattr(s, field)] for s in specs], device=device, dtype=torch.float32)


def render_batch(specs: list[SceneSpec], size: int = IMAGE_SIZE, device: str | torch.device = "cpu",
                 chunk: int = 256) -> torch.Tensor:
    """Draw ``specs``: (len(specs), size, size, 3) float32 in 0..1 on ``device``, in chunks of ``chunk`` scenes."""
    device = torch.device(device)
    out = [_render_chunk(specs[i:i + chunk], size, device) for i in range(0, len(specs), chunk)]
    return torch.cat(out) if out else torch.zeros(0, size, size, 3, device=device)


def render(spec: SceneSpec, size: int = IMAGE_SIZE) -> torch.Tensor:
    """One scene as a ComfyUI IMAGE batch: (1, size, size, 3)."""
    return render_batch([spec], size)


def _render_chunk(specs: list[SceneSpec], size: int, device: torch.device) -> torch.Tensor:
    b, side = len(specs), size * SUPERSAMPLE
    draws = [_unsaid(s, side) for s in specs]
    low, mid, fine, sun_x, star_idx, star_val = (torch.stack([d[k] for d in draws]) for k in range(6))
    coords = (torch.arange(side, device=device, dtype=torch.float32) + 0.5) / side
    u, v = coords.view(1, 1, side), coords.view(1, side, 1)  # x across, y down
    px = 1.0 / side  # one supersampled pixel, in image units
    horizon = torch.tensor([s.horizon for s in specs], device=device).view(b, 1, 1)
    low, mid, fine = (_upsample(grid.to(device), side) for grid in (low, mid, fine))

    # sky: zenith -> horizon gradient, cloud-like low-frequency noise (strong when overcast)
    zenith = _table(specs, "sky", {k: c[0] for k, c in SKIES.items()}, device).view(b, 3, 1, 1)
    near = _table(specs, "sky", {k: c[1] for k, c in SKIES.items()}, device).view(b, 3, 1, 1)
    t = (v / horizon).clamp(0, 1).unsqueeze(1) ** 0.8
    cloud = torch.tensor([0.10 if s.sky == "overcast" else 0.025 for s in specs], device=device).view(b, 1, 1, 1)
    sky = zenith + (near - zenith) * t + cloud * (0.7 * low + 0.3 * mid).unsqueeze(1)
    sunset = torch.tensor([s.sky == "sunset" for s in specs], device=device).view(b, 1, 1, 1)
    if sunset.any():  # a low sun with a glow
        sun_x = sun_x.to(device).view(b, 1, 1)
        dist = torch.sqrt((u - sun_x) ** 2 + (v - horizon + 0.06) ** 2)
        glow = (torch.exp(-dist / 0.12) * 0.45 + torch.sigmoid((0.05 - dist) / px)).unsqueeze(1)
        sky = torch.where(sunset, sky + glow * torch.tensor([1.0, 0.75, 0.35], device=device).view(1, 3, 1, 1), sky)
    night = [i for i, s in enumerate(specs) if s.sky == "night"]
    if night:  # a star field: single bright supersampled pixels, a little blurred
        stars = torch.zeros(b, side * side)
        for i in night:
            stars[i, star_idx[i]] = star_val[i]
        stars = F.avg_pool2d(stars.view(b, 1, side, side).to(device), 3, 1, 1) * 3.0
        sky = sky + stars * (v < horizon - 0.02).unsqueeze(1)

    # ground: horizon -> bottom gradient, textures per kind, soft horizon line
    g_near = _table(specs, "ground", {k: c[0] for k, c in GROUNDS.items()}, device).view(b, 3, 1, 1)
    g_far = _table(specs, "ground", {k: c[1] for k, c in GROUNDS.items()}, device).view(b, 3, 1, 1)
    depth = ((v - horizon) / (1 - horizon)).clamp(0, 1).unsqueeze(1)
    ground = g_near + (g_far - g_near) * depth
    fine = fine.unsqueeze(1)
    texture = torch.tensor([{"grassy ground": 0.07, "sandy ground": 0.04, "snowy ground": 0.025,
                             "calm water": 0.02}[s.ground] for s in specs], device=device).view(b, 1, 1, 1)
    ground = ground + texture * (0.6 * mid.unsqueeze(1) + 0.6 * fine)
    water = torch.tensor([s.ground == "calm water" for s in specs], device=device).view(b, 1, 1, 1)
    if water.any():  # ripples, denser towards the horizon, and the horizon's sky colour reflected
        phase = 2.5 / (depth + 0.08) + 1.5 * mid.unsqueeze(1)
        ripples = 0.05 * torch.sin(phase) * (1 - 0.5 * depth)
        reflect = near * 0.35 * (1 - depth) ** 2
        ground = torch.where(water, ground * (1 - 0.35 * (1 - depth) ** 2) + reflect + ripples, ground)
    land = torch.sigmoid((v - horizon) / (0.6 * px)).unsqueeze(1)
    image = sky * (1 - land) + ground * land

    # objects in order: a soft shadow to the lower right first, then the shaded shape
    night_dim = torch.tensor([0.5 if s.sky == "night" else 1.0 for s in specs], device=device).view(b, 1, 1, 1)
    for k in range(max(len(s.objects) for s in specs)):
        for shape in SHAPES:
            rows = [i for i, s in enumerate(specs) if len(s.objects) > k and s.objects[k].shape == shape]
            if not rows:
                continue
            objs = [specs[i].objects[k] for i in rows]
            n = len(rows)
            r = torch.tensor([SIZES[o.size] for o in objs], device=device).view(n, 1, 1)
            cx = torch.tensor([o.x for o in objs], device=device).view(n, 1, 1)
            cy = torch.tensor([o.y for o in objs], device=device).view(n, 1, 1)
            colour = torch.tensor([COLOURS[o.colour] for o in objs], device=device).view(n, 3, 1, 1)
            ox, oy = u - cx, v - cy
            shadow_d = shape_sdf(shape, ox - 0.25 * r, oy - 0.30 * r, r)
            shadow = (0.35 * torch.sigmoid(-shadow_d / (0.12 * r))).unsqueeze(1) * night_dim[rows]
            d = shape_sdf(shape, ox, oy, r)
            alpha = (0.5 - d / px).clamp(0, 1).unsqueeze(1)
            light = torch.sqrt((ox + 0.35 * r) ** 2 + (oy + 0.35 * r) ** 2) / (1.6 * r)
            shade = (1.25 - 0.55 * light.clamp(0, 1)).unsqueeze(1)
            rim = 1 - 0.25 * (1 + d / (0.08 * r)).clamp(0, 1).unsqueeze(1)
            fill = (colour * shade * rim * (0.55 + 0.45 * night_dim[rows])).clamp(0, 1)
            sub = image[rows] * (1 - shadow)
            image[rows] = sub * (1 - alpha) + fill * alpha
    image = F.avg_pool2d(image.clamp(0, 1), SUPERSAMPLE)
    return image.permute(0, 2, 3, 1).contiguous()


def psnr(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of ``images`` against ``references`` (both BHWC, 0..1)."""
    mse = ((images.float() - references.float()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    return -10 * torch.log10(mse)

