"""The scenes of the synthetic data set: a screw and a woven fabric, and the defects drawn on them.

What :mod:`anomaly.synthetic` renders and writes: each category's scene renderer and defect
functions (:data:`SCENES`), drawn with vectorised numpy at ``SUPERSAMPLE`` x the image size and
box-downsampled; every defect edit moves each pixel it touches by at least ``MIN_CHANGE`` so its
mask is solid. See :mod:`anomaly.synthetic` for the categories and their MVTec AD models.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
from scipy.ndimage import gaussian_filter

DEFECT_TYPES = {
    "screw_like": ("scratch_head", "scratch_neck", "thread_side", "thread_top", "manipulated_front"),
    "screw_aligned": ("scratch_head", "scratch_neck", "thread_side", "thread_top", "manipulated_front"),
    "texture": ("color_spot", "cut", "hole", "contamination", "thread"),
}
SUPERSAMPLE = 2  # images are drawn at 2x and box-downsampled
MIN_CHANGE = 0.06  # the least change (in [0, 1] units) a defect makes to a pixel it touches

Scene = dict  # the layers of one drawn scene at supersampled resolution (see the _render_* functions)


# ----------------------------------------------------------------------------- shared drawing helpers

def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    ramp = np.arange(n, dtype=np.float32) + 0.5
    return ramp[None, :], ramp[:, None]  # pixel-centre x (1, N) and y (N, 1), broadcasting to (N, N)


def _downsample(image: np.ndarray) -> np.ndarray:
    """Box filter by SUPERSAMPLE: (N, N, ...) -> (N / f, N / f, ...)."""
    f = SUPERSAMPLE
    return sum(image[a::f, b::f] for a in range(f) for b in range(f)) * np.float32(1 / f ** 2)


def finish(image: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """Box-downsample, add sensor noise, quantise to uint8."""
    return np.floor(np.clip(_downsample(image) + noise, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _edit(image: np.ndarray, region: np.ndarray, target: np.ndarray | float) -> np.ndarray:
    """Replace ``image`` by ``target`` inside ``region``, moving every touched pixel by >= MIN_CHANGE."""
    out = image.copy()
    old = image[region]
    new = np.broadcast_to(target, image.shape)[region].astype(np.float32)
    delta = new - old
    size = np.abs(delta).max(axis=-1) if delta.ndim == 2 else np.abs(delta)
    weak = size < MIN_CHANGE
    if weak.any():  # push weak edits away from the old value (darker on bright pixels, lighter on dark)
        level = old[weak].mean(axis=-1) if old.ndim == 2 else old[weak]
        push = np.where(level > 0.5, -MIN_CHANGE, MIN_CHANGE).astype(np.float32)
        new[weak] = old[weak] + (push[:, None] if old.ndim == 2 else push)
    out[region] = np.clip(new, 0.0, 1.0)
    return out


def _px(n: int) -> float:
    """Supersampled pixels per pixel of a 256-px image (line widths scale with size, >= 1 output px)."""
    return max(1.0, n / (256 * SUPERSAMPLE)) * SUPERSAMPLE


def _window(n: int, cx: float, cy: float, radius: float) -> tuple[slice, slice]:
    r = int(np.ceil(radius)) + 2
    return slice(max(int(cy) - r, 0), min(int(cy) + r, n)), slice(max(int(cx) - r, 0), min(int(cx) + r, n))


def _blob(n: int, cx: float, cy: float, r0: float, rng: np.random.Generator, rough: float = 0.25,
          harmonics: int = 6) -> np.ndarray:
    """Irregular star-shaped region: radius ``r0 * (1 + sum_k a_k cos(k phi + p_k))``; (N, N) bool."""
    amp = rng.normal(0.0, rough, harmonics) / np.arange(1, harmonics + 1) ** 0.8
    phase = rng.uniform(0, 2 * np.pi, harmonics)
    ys, xs = _window(n, cx, cy, r0 * (1 + np.abs(amp).sum()))
    yy, xx = np.mgrid[ys, xs].astype(np.float32) + 0.5
    phi = np.arctan2(yy - cy, xx - cx)[..., None]
    radius = r0 * (1 + (amp * np.cos(np.arange(1, harmonics + 1) * phi + phase)).sum(-1))
    out = np.zeros((n, n), bool)
    out[ys, xs] = np.hypot(xx - cx, yy - cy) <= np.maximum(radius, 0.3 * r0)
    return out


def _curve(p0: np.ndarray, p1: np.ndarray, p2: np.ndarray, k: int = 16) -> np.ndarray:
    t = np.linspace(0, 1, k)[:, None]
    return (1 - t) ** 2 * p0 + 2 * t * (1 - t) * p1 + t ** 2 * p2  # (k, 2) quadratic Bezier


def _polyline_distance(n: int, pts: np.ndarray, pad: float) -> np.ndarray:
    """Distance from every pixel centre to the polyline ``pts`` (k, 2) in (x, y); inf beyond ``pad``."""
    lo, hi = pts.min(0) - pad - 2, pts.max(0) + pad + 2
    ys = slice(max(int(lo[1]), 0), min(int(hi[1]) + 1, n))
    xs = slice(max(int(lo[0]), 0), min(int(hi[0]) + 1, n))
    yy, xx = np.mgrid[ys, xs].astype(np.float32) + 0.5
    dist = np.full(yy.shape, np.inf, np.float32)
    for a, b in zip(pts[:-1], pts[1:]):
        seg = b - a
        t = np.clip(((xx - a[0]) * seg[0] + (yy - a[1]) * seg[1]) / max(float(seg @ seg), 1e-6), 0, 1)
        dist = np.minimum(dist, np.hypot(xx - a[0] - t * seg[0], yy - a[1] - t * seg[1]))
    out = np.full((n, n), np.inf, np.float32)
    out[ys, xs] = dist
    return out


def _lighting(rng: np.random.Generator, n: int, level: float, spread: float) -> np.ndarray:
    """Illumination: level + linear gradient - vignetting + faint smooth blotches; (N, N) float32."""
    xx, yy = _grid(n)
    x, y = xx / n - 0.5, yy / n - 0.5  # (1, N), (N, 1)
    angle = rng.uniform(0, 2 * np.pi)
    light = level + spread * (np.cos(angle) * x + np.sin(angle) * y) - 1.4 * spread * (x ** 2 + y ** 2)
    k = np.arange(1, 4)[:, None]  # blotches: sums of products of smooth 1-D cosine series
    for _ in range(2):
        fx = (rng.normal(0, 1, (3, 1)) / k * np.cos(np.pi * k * x + rng.uniform(0, 6.3, (3, 1)))).sum(0)
        fy = (rng.normal(0, 1, (3, 1)) / k * np.cos(np.pi * k * y.T + rng.uniform(0, 6.3, (3, 1)))).sum(0)
        light = light + 0.06 * spread * fy[:, None] * fx[None, :]
    return light.astype(np.float32)


# ----------------------------------------------------------------------------- screw_like

def _render_screw(rng: np.random.Generator, n: int, aligned: bool = False) -> Scene:
    """A screw lying on a light table; returns the layers that the screw defects edit.

    ``aligned``: centred with its axis horizontal (the pose is still drawn, then overridden, so every
    other random choice -- length, lighting, thread -- is the same as the unaligned scene's).
    """
    xx, yy = _grid(n)
    length = n * rng.uniform(0.70, 0.78)
    cx, cy = (float(t) for t in n * (0.5 + rng.uniform(-0.06, 0.06, 2)))
    theta = rng.uniform(0, 2 * np.pi)
    if aligned:
        cx, cy, theta = n / 2, n / 2, 0.0
    c, s = float(np.cos(theta)), float(np.sin(theta))
    g = dict(length=length, cx=cx, cy=cy, c=c, s=s, head_len=0.10 * length, r_head=0.115 * length,
             r_neck=0.042 * length, r_core=0.033 * length, depth=0.022 * length, t0=0.45 * length,
             t1=0.87 * length, pitch=0.046 * length, face=0.028 * length)
    u = (xx - cx) * c + (yy - cy) * s + length / 2  # (N, N) along the axis: 0 at the head face, `length` at the tip
    v = -(xx - cx) * s + (yy - cy) * c  # (N, N) across the axis
    near = (u > -g["face"]) & (u < length) & (np.abs(v) < g["r_head"])  # only these pixels can be screw
    inside_n, metal_n, flat_n = _draw_screw(rng, g, u[near], v[near])
    inside, metal, flat = np.zeros((n, n), bool), np.zeros((n, n), np.float32), np.zeros((n, n), np.float32)
    inside[near], metal[near], flat[near] = inside_n, metal_n, flat_n

    back = _lighting(rng, n, rng.uniform(0.76, 0.84), 0.10)
    k = SUPERSAMPLE
    shadow = gaussian_filter(np.roll(_downsample(inside.astype(np.float32)), (2, 1), axis=(0, 1)), 0.012 * n / k + 0.5)
    back *= 1 - 0.25 * shadow.repeat(k, 0).repeat(k, 1)
    return dict(image=np.where(inside, metal, back), back=back, metal=metal, flat=flat, inside=inside,
                u=u, v=v, geom=g, noise=0.012)


def _draw_screw(rng: np.random.Generator, g: dict, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, ...]:
    """Silhouette and metal shading at screw coordinates ``u, v`` (M,): (inside, metal, flat-metal)."""
    r_out = g["r_core"] + g["depth"]
    phase = (u - g["t0"]) / g["pitch"] + 0.25 * v / r_out + rng.uniform(0, 1)  # helix: sides half a pitch apart
    crest = 1 - np.abs(2 * (phase % 1.0) - 1)  # 0 in the groove, 1 on the crest
    ramp = np.clip((u - g["t0"]) / g["pitch"], 0, 1)
    taper = np.clip((g["length"] - u) / (g["length"] - g["t1"]), 0, 1) ** 0.9
    head = g["r_head"] - (g["r_head"] - g["r_neck"]) * np.clip(u / g["head_len"], 0, 1) ** 0.6
    radius = np.where(u < g["head_len"], head, g["r_neck"])
    thread = (g["r_core"] + (g["r_neck"] - g["r_core"]) * (1 - ramp) + g["depth"] * crest * ramp) * taper
    radius = np.where(u >= g["t0"], thread, radius)
    face = (u / g["face"]) ** 2 + (v / g["r_head"]) ** 2 <= 1
    inside = ((u >= 0) & (np.abs(v) <= radius)) | face

    nrm = np.clip(v / np.maximum(radius, 1e-3), -1, 1)  # position across the cylinder, -1..1
    side = float(rng.choice([-1.0, 1.0]))
    flat = (0.16 + 0.30 * np.sqrt(1 - nrm ** 2) + 0.08 * side * nrm
            + 0.32 * np.exp(-((nrm - 0.35 * side) / 0.22) ** 2))  # diffuse + specular stripe
    streaks = rng.normal(0, 0.025, 257).astype(np.float32)[(nrm * 128 + 128).astype(np.int32)]  # machining marks
    flat = (flat + streaks) * rng.uniform(0.92, 1.08)
    grooves = 0.62 + 0.38 * crest ** 0.7 + 0.07 * np.sin(2 * np.pi * phase) * side
    metal = np.where(u >= g["t0"], flat * (1 - ramp + ramp * grooves), flat)
    recess = ((u - 0.3 * g["face"]) / (0.5 * g["face"])) ** 2 + (v / (0.3 * g["r_head"])) ** 2 <= 1
    metal = np.where(face, 0.50 - 0.12 * side * v / g["r_head"], metal)
    metal = np.where(face & recess, 0.24, metal)
    return inside, metal, flat


def _uv_to_xy(g: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    du = np.asarray(u) - g["length"] / 2
    return np.stack([g["cx"] + du * g["c"] - np.asarray(v) * g["s"], g["cy"] + du * g["s"] + np.asarray(v) * g["c"]],
                    -1)


def _scratch(sc: Scene, rng: np.random.Generator, u_range: tuple[float, float], v_half: float,
             length: float, zone: np.ndarray) -> np.ndarray:
    """A thin bright or dark curved line inside ``zone`` of the screw."""
    g, n = sc["geom"], sc["image"].shape[0]
    u0 = rng.uniform(*u_range)
    v0 = rng.uniform(-v_half, v_half)
    ang = rng.uniform(0, 2 * np.pi)
    ends = np.array([[u0 - 0.5 * length * np.cos(ang), v0 - 0.5 * length * np.sin(ang)],
                     [u0 + 0.5 * length * np.cos(ang), v0 + 0.5 * length * np.sin(ang)]])
    bend = ends.mean(0) + rng.normal(0, 0.15 * length, 2)
    pts = _uv_to_xy(g, *_curve(ends[0], bend, ends[1]).T)
    width = rng.uniform(1.4, 2.4) * _px(n)
    region = (_polyline_distance(n, pts, width) <= width / 2) & zone & sc["inside"]
    bright = rng.random() < 0.6
    target = np.clip(sc["metal"] + (0.30 if bright else -0.22), 0.05, 0.95)
    return _edit(sc["image"], region, target)


def _scratch_head(sc: Scene, rng: np.random.Generator) -> np.ndarray:
    g = sc["geom"]
    zone = sc["u"] < g["head_len"] * 0.95
    return _scratch(sc, rng, (0.15 * g["head_len"], 0.8 * g["head_len"]), 0.6 * g["r_head"],
                    rng.uniform(0.6, 1.1) * g["r_head"], zone)


def _scratch_neck(sc: Scene, rng: np.random.Generator) -> np.ndarray:
    g = sc["geom"]
    zone = (sc["u"] > g["head_len"]) & (sc["u"] < g["t0"])
    return _scratch(sc, rng, (g["head_len"] + g["r_neck"], g["t0"] - g["r_neck"]), 0.6 * g["r_neck"],
                    rng.uniform(0.08, 0.18) * g["length"], zone)


def _thread_side(sc: Scene, rng: np.random.Generator) -> np.ndarray:
    """Material missing from the thread flank, or a burr pushed out of it."""
    g, n = sc["geom"], sc["image"].shape[0]
    u0 = rng.uniform(g["t0"] + g["pitch"], g["t1"])
    side = rng.choice([-1.0, 1.0])
    r = max(rng.uniform(0.8, 1.3) * g["pitch"], 1.2 * SUPERSAMPLE)
    if rng.random() < 0.6:  # chipped: metal replaced by the (shadowed) background
        (cx, cy), = _uv_to_xy(g, [u0], [side * (g["r_core"] + g["depth"] + 0.25 * r)])
        region = _blob(n, cx, cy, r, rng, rough=0.2) & sc["inside"]
        return _edit(sc["image"], region, sc["back"])
    (cx, cy), = _uv_to_xy(g, [u0], [side * (g["r_core"] + g["depth"])])
    region = _blob(n, cx, cy, 0.7 * r, rng, rough=0.3) & ~sc["inside"]
    return _edit(sc["image"], region, 0.30 + 0.1 * np.abs(np.sin(sc["u"])))


def _thread_top(sc: Scene, rng: np.random.Generator) -> np.ndarray:
    """Crushed thread crests on the visible face of the thread: grooves flattened, metal polished."""
    g, n = sc["geom"], sc["image"].shape[0]
    u0 = rng.uniform(g["t0"] + g["pitch"], g["t1"] - 0.5 * g["pitch"])
    (cx, cy), = _uv_to_xy(g, [u0], [rng.uniform(-0.4, 0.4) * g["r_core"]])
    region = _blob(n, cx, cy, max(rng.uniform(0.7, 1.2) * g["pitch"], 1.2 * SUPERSAMPLE), rng) & sc["inside"]
    return _edit(sc["image"], region, np.clip(sc["flat"] * rng.uniform(1.25, 1.5), 0, 0.95))


def _manipulated_front(sc: Scene, rng: np.random.Generator) -> np.ndarray:
    """Tip cut off along a slanted plane."""
    g = sc["geom"]
    tip = g["length"] - g["t1"]
    cut = g["length"] - max(rng.uniform(0.4, 0.9) * tip, 1.5 * SUPERSAMPLE)
    region = sc["inside"] & (sc["u"] + np.tan(rng.uniform(-0.6, 0.6)) * sc["v"] > cut)
    return _edit(sc["image"], region, sc["back"])


# ----------------------------------------------------------------------------- texture

_YARN = np.array([[0.62, 0.50, 0.36], [0.55, 0.44, 0.31]], np.float32)  # warp, weft: a beige carpet-like weave


def _render_texture(rng: np.random.Generator, n: int) -> Scene:
    """A plain-weave fabric: yarns alternate over/under, each with its own tint and twisted fibres."""
    xx, yy = _grid(n)
    pitch = n * 0.036 * rng.uniform(0.97, 1.03)
    ang = rng.uniform(-0.04, 0.04)
    ca, sa = float(np.cos(ang)) / pitch, float(np.sin(ang)) / pitch
    a = xx * ca + yy * sa + rng.uniform(0, 2)  # (N, N) across the warp (vertical) yarns, in yarn pitches
    b = yy * ca - xx * sa + rng.uniform(0, 2)  # (N, N) across the weft (horizontal) yarns
    i, j = np.floor(a).astype(np.int32), np.floor(b).astype(np.int32)
    fa, fb = a - i, b - j
    warp_on_top = (i + j) & 1 == 0
    across = np.where(warp_on_top, fa, fb)  # position across the top yarn, 0..1
    along = np.where(warp_on_top, fb, fa)  # position along it within the crossing, 0..1
    height = np.sqrt(np.maximum(1 - ((2 * across - 1) / 0.88) ** 2, 0)) * (0.75 + 0.25 * np.sin(np.pi * along))
    m = 64  # yarn tints and fibre tables repeat every m yarns
    yarn = np.where(warp_on_top, i & (m - 1), m + (j & (m - 1)))  # (N, N) which yarn is on top
    twist = (np.where(warp_on_top, b, a) * 12 + across * 4).astype(np.int32) & 255  # fibres wind along the yarn
    fibre = gaussian_filter(rng.normal(0, 1, (2 * m, 256)), (0, 1.0), mode="wrap").astype(np.float32)
    colour = np.concatenate([_YARN[0] * (1 + 0.05 * rng.normal(0, 1, (m, 1))),
                             _YARN[1] * (1 + 0.05 * rng.normal(0, 1, (m, 1)))]).astype(np.float32)
    shade = (0.25 + 0.75 * height + 0.09 * fibre[yarn, twist]) * _lighting(rng, n, 1.0, 0.12)
    image = np.empty((n, n, 3), np.float32)
    for k in range(3):
        np.multiply(np.take(colour[:, k], yarn), shade, out=image[..., k])  # (N, N, 3)
    return dict(image=image, height=height, noise=0.01)


def _spot_centre(n: int, rng: np.random.Generator, margin: float = 0.15) -> tuple[float, float]:
    cx, cy = n * rng.uniform(margin, 1 - margin, 2)
    return float(cx), float(cy)


def _color_spot(sc: Scene, rng: np.random.Generator) -> np.ndarray:
    n = sc["image"].shape[0]
    region = _blob(n, *_spot_centre(n, rng), max(rng.uniform(0.03, 0.06) * n, 2 * SUPERSAMPLE), rng)
    stains = np.array([[0.75, 0.55, 0.45], [1.15, 0.85, 0.75], [0.70, 0.75, 0.85], [0.6, 0.6, 0.55]], np.float32)
    return _edit(sc["image"], region, sc["image"] * stains[rng.integers(len(stains))])


def _cut(sc: Scene, rng: np.random.Generator) -> np.ndarray:
    n = sc["image"].shape[0]
    p0 = np.array(_spot_centre(n, rng, 0.2))
    ang, length = rng.uniform(0, np.pi), rng.uniform(0.08, 0.2) * n
    d = length * np.array([np.cos(ang), np.sin(ang)])
    pts = _curve(p0 - d / 2, p0 + rng.normal(0, 0.08 * length, 2), p0 + d / 2)
    width = rng.uniform(1.0, 2.0) * _px(n)
    region = _polyline_distance(n, pts, width) <= width / 2
    return _edit(sc["image"], region, 0.25 * sc["image"] + 0.03)


def _hole(sc: Scene, rng: np.random.Generator) -> np.ndarray:
    n = sc["image"].shape[0]
    region = _blob(n, *_spot_centre(n, rng), max(rng.uniform(0.02, 0.045) * n, 1.5 * SUPERSAMPLE), rng, 0.35, 9)
    return _edit(sc["image"], region, 0.06 + 0.12 * sc["image"] * sc["height"][..., None])


def _contamination(sc: Scene, rng: np.random.Generator) -> np.ndarray:
    n = sc["image"].shape[0]
    region = _blob(n, *_spot_centre(n, rng), max(rng.uniform(0.015, 0.035) * n, 1.5 * SUPERSAMPLE), rng, 0.45, 8)
    stuff = np.array([[0.88, 0.86, 0.80], [0.12, 0.11, 0.10], [0.35, 0.42, 0.25]], np.float32)[rng.integers(3)]
    grain = gaussian_filter(rng.normal(0, 1, (n, n)), 1.5).astype(np.float32)[..., None]
    return _edit(sc["image"], region, np.clip(0.8 * stuff + 0.2 * sc["image"] + 0.12 * grain, 0, 1))


def _stray_thread(sc: Scene, rng: np.random.Generator) -> np.ndarray:
    n = sc["image"].shape[0]
    p0, p2 = n * rng.uniform(0.15, 0.85, (2, 2))
    p2 = p0 + (p2 - p0) * rng.uniform(0.25, 0.5) * n / max(np.linalg.norm(p2 - p0), 1.0)
    pts = _curve(p0, (p0 + p2) / 2 + rng.normal(0, 0.08 * n, 2), p2, 24)
    width = rng.uniform(2.0, 3.5) * _px(n)
    dist = _polyline_distance(n, pts, width)
    region = dist <= width / 2
    across = np.sqrt(np.clip(1 - (2 * dist / width) ** 2, 0, 1))[..., None]
    colour = np.array([[0.30, 0.22, 0.15], [0.85, 0.78, 0.65], [0.45, 0.20, 0.15]], np.float32)[rng.integers(3)]
    return _edit(sc["image"], region, colour * (0.55 + 0.45 * across))


_Defect = Callable[[Scene, np.random.Generator], np.ndarray]
SCENES: dict[str, tuple[Callable[[np.random.Generator, int], Scene], dict[str, _Defect]]] = {
    "screw_like": (_render_screw, dict(zip(DEFECT_TYPES["screw_like"], (
        _scratch_head, _scratch_neck, _thread_side, _thread_top, _manipulated_front)))),
    "screw_aligned": (partial(_render_screw, aligned=True), dict(zip(DEFECT_TYPES["screw_aligned"], (
        _scratch_head, _scratch_neck, _thread_side, _thread_top, _manipulated_front)))),
    "texture": (_render_texture, dict(zip(DEFECT_TYPES["texture"], (
        _color_spot, _cut, _hole, _contamination, _stray_thread)))),
}
