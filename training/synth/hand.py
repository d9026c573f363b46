"""Hand views (SYNTHETIC_DATA.md B.6): a signed-distance-field hand on a plain background.

The hand is built in a canonical frame -- palm length 1, wrist at the bottom, fingers up, thumb
on the left (a right hand seen from the back) -- from a rounded-box palm, finger chains of three
capsules (thumb: metacarpal + two), a forearm capsule, joined by smooth union. Pixels map into
that frame by one similarity transform (scale, rotation, mirror for a left hand). The SDF gives
the silhouette, and its depth gives a pseudo-3-D height map for the lighting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .noise import blur, fbm, smoothstep
from .shapes import bezier, grid, polyline_distance, segment_distance, smooth_min

FINGERS = ("index", "middle", "ring", "little")


@dataclass
class Hand:
    alpha: np.ndarray  # (H, W) anti-aliased silhouette coverage in [0, 1]
    height: np.ndarray  # (H, W) pseudo-3-D height (pixels) for shading
    d_lab: np.ndarray  # (H, W, 3) nails, creases, edge darkening (relative to skin)
    palm_lab: np.ndarray  # (H, W, 3) the lighter palm tone of a palmar view (zeros when dorsal)
    sites: np.ndarray  # (K, 2) favoured eczema sites in pixels (knuckles, webs, wrist)
    px_mm: float
    scale_px: float  # pixels per palm length
    meta: dict


def _rounded_box(v: np.ndarray, u: np.ndarray, half_v: float, half_u: float, r: float) -> np.ndarray:
    qv = np.abs(v) - (half_v - r)
    qu = np.abs(u) - (half_u - r)
    return np.hypot(np.maximum(qv, 0), np.maximum(qu, 0)) + np.minimum(np.maximum(qv, qu), 0) - r


def _chain(base: np.ndarray, angle: float, lengths: list[float], bends: np.ndarray, flex: np.ndarray) -> list[np.ndarray]:
    """Joint points (v, u) of a finger chain from `base`, angle from +v (up) towards +u."""
    pts = [base]
    ang = angle
    for length, bend, fl in zip(lengths, bends, flex):
        ang += bend
        step = length * np.cos(fl)  # flexion towards the camera foreshortens the phalanx
        pts.append(pts[-1] + step * np.array([np.cos(ang), np.sin(ang)]))
    return pts


def draw(rng: np.random.Generator, shape: tuple[int, int], tone: dict, view: str | None = None) -> Hand:
    h, w = shape
    side = min(h, w)
    view = view or ("dorsal" if rng.random() < 0.6 else "palmar")
    left = bool(rng.random() < 0.5)
    rot = np.radians(rng.uniform(-100, 100))
    scale = rng.uniform(0.34, 0.42) * side  # pixels per palm length
    centre = np.array([h / 2, w / 2]) + rng.normal(0, 0.04 * side, 2)

    # Canonical coordinates of every pixel: v up the hand, u across (thumb at -u).
    yy, xx = grid(shape)
    dy, dx = (yy - centre[0]) / scale, (xx - centre[1]) / scale
    c, s = np.cos(rot), np.sin(rot)
    v = -(dy * c + dx * s) + 0.45  # +0.45: the frame centre falls on the top of the palm
    u = -dy * s + dx * c
    if left:
        u = -u

    pw = rng.uniform(0.8, 0.95)  # palm width / palm length
    rf = rng.uniform(0.22, 0.26) * pw / 2  # finger radius
    lm = rng.uniform(0.85, 0.95)
    rel = {"index": rng.uniform(0.9, 0.95), "middle": 1.0, "ring": rng.uniform(0.93, 0.98), "little": rng.uniform(0.72, 0.82)}
    width = {"index": 1.0, "middle": 1.0, "ring": 0.95, "little": 0.82}
    mcp_u = np.array([-0.36, -0.12, 0.12, 0.35]) * pw
    mcp_v = 0.45 + np.array([0.0, 0.03, 0.01, -0.07])
    fan_deg = np.array([-8.0, 0.0, 8.0, 18.0]) * rng.uniform(0.5, 1.6) + rng.uniform(-6, 6, 4)
    # Neighbouring fingers must not cross (they would merge into one thick finger): keep the fan
    # increasing, at least 4 degrees apart.
    for i in range(1, 4):
        fan_deg[i] = max(fan_deg[i], fan_deg[i - 1] + 4.0)
    fan = np.radians(fan_deg)

    segs_a, segs_b, radii = [], [], []
    chains: dict[str, list[np.ndarray]] = {}
    for i, name in enumerate(FINGERS):
        length = lm * rel[name]
        pts = _chain(np.array([mcp_v[i], mcp_u[i]]), fan[i], [0.45 * length, 0.30 * length, 0.25 * length],
                     np.radians(rng.uniform(-4, 4, 3)), np.radians(rng.uniform(0, 30, 3)))
        chains[name] = pts
        for k in range(3):
            segs_a.append(pts[k])
            segs_b.append(pts[k + 1])
            radii.append(rf * width[name] * (1.0 - 0.08 * k))
    # Thumb: metacarpal (the thenar mass) from the lower palm, then two phalanges.
    abd = np.radians(rng.uniform(20, 60))
    cmc = np.array([-0.2, -0.5 * pw * 0.55])
    lt = lm * rng.uniform(0.6, 0.7)
    thumb = _chain(cmc, -abd - np.radians(10), [0.42, 0.55 * lt, 0.45 * lt], np.radians([0.0, 8.0, 6.0]),
                   np.radians(rng.uniform(0, 25, 3)))
    chains["thumb"] = thumb
    thumb_r = [rf * 1.6, rf * 1.2, rf * 1.1]
    wrist_r = 0.42 * pw

    # Soft minimum over the phalanges: joints blend instead of showing a step in width.
    d_seg = segment_distance(v, u, np.array(segs_a), np.array(segs_b)) - np.array(radii)[:, None, None]
    # (within a finger only: across fingers it would weld neighbours into one thick finger)
    kj = 0.15 * rf
    d_seg = d_seg.reshape(4, 3, *shape)  # (finger, phalanx, H, W)
    d_min = d_seg.min(1)
    d_fingers = (d_min - kj * np.log(np.exp(-(d_seg - d_min[:, None]) / kj).sum(1))).min(0)
    d_thumb = (segment_distance(v, u, np.array(thumb[:-1]), np.array(thumb[1:])) - np.array(thumb_r)[:, None, None]).min(0)
    d_palm = _rounded_box(v, u, 0.5, 0.5 * pw, 0.18)
    d_arm = segment_distance(v, u, np.array([[-0.35, 0.0]]), np.array([[-3.0, 0.0]]))[0] - wrist_r
    blend = rng.uniform(0.03, 0.06) * 1.9  # smooth-union width, 3-6 % of the hand length
    d = smooth_min(d_palm, d_arm, blend * 1.5)
    d = smooth_min(d, d_thumb, blend)
    d = smooth_min(d, d_fingers, blend * 0.6)
    sdf_px = d * scale
    alpha = np.clip(0.5 - sdf_px, 0.0, 1.0)

    # Pseudo-3-D: a rounded profile that saturates one finger radius inside the edge.
    depth = np.clip(-d / (1.6 * rf), 0.0, 1.0)
    height = np.sqrt(depth * (2 - depth)) * rf * scale * 1.2
    d_lab = np.zeros((h, w, 3))
    d_lab[..., 0] -= 6.0 * (1 - depth) ** 2 * alpha  # edges turn away from the light

    dark = float(smoothstep(25.0, -10.0, np.array(tone["ita"])))
    palm_lab = np.zeros((h, w, 3))
    if view == "palmar":  # palms are lighter, much more so on darker skin (B.1)
        palm_lab[..., 0] = (2 + dark * rng.uniform(8, 18)) * alpha
        palm_lab[..., 2] = dark * rng.uniform(2, 5) * alpha
        palm_lab[..., 1] = rng.uniform(0, 3) * alpha
    px = 1.0 / scale  # one pixel in palm units
    creases = np.zeros(shape)
    # Joint creases: 3-5 arcs across each finger at the PIP and DIP joints (more on the palm side).
    for name, pts in chains.items():
        joints = pts[1:3] if name != "thumb" else pts[2:3]
        r = rf * width.get(name, 1.2)
        for j, joint in enumerate(joints):
            direction = pts[j + 2 if name != "thumb" else 3] - joint
            direction = direction / (np.linalg.norm(direction) + 1e-9)
            along = (v - joint[0]) * direction[0] + (u - joint[1]) * direction[1]
            across = -(v - joint[0]) * direction[1] + (u - joint[1]) * direction[0]
            n_arcs = int(rng.integers(3, 6)) if view == "dorsal" else 2
            gap = 0.012 if view == "dorsal" else 0.02
            # Distance to the nearest of n parallel arcs, in one pass: round to the closest arc index.
            d = along - 0.25 * (across / r) ** 2 * r * (1 if view == "dorsal" else -0.5)
            half = (n_arcs - 1) / 2
            off = (np.clip(np.rint(d / gap + half), 0, n_arcs - 1) - half) * gap
            arcs = np.exp(-(((d - off) / max(0.6 * px, 0.004)) ** 2)) * (np.abs(across) < 0.75 * r)
            creases = np.maximum(creases, arcs)
    if view == "palmar":
        lines = [  # heart, head and life lines as quadratic Beziers (v, u)
            ((0.22, 0.5 * pw), (0.3, 0.05), (0.36, -0.3 * pw)),
            ((0.22, -0.48 * pw), (0.1, 0.0), (0.02, 0.42 * pw)),
            ((0.22, -0.46 * pw), (-0.05, -0.2 * pw), (-0.42, -0.12 * pw)),
        ]
        for p0, p1, p2 in lines:
            jitter = rng.normal(0, 0.03, (3, 2))
            dist = polyline_distance(v, u, bezier(np.array(p0) + jitter[0], np.array(p1) + jitter[1], np.array(p2) + jitter[2], n=9))
            creases = np.maximum(creases, np.exp(-((dist / max(0.8 * px, 0.006)) ** 2)))
    crease_dl = rng.uniform(3, 8) if view == "dorsal" else rng.uniform(4, 10)
    d_lab[..., 0] -= crease_dl * blur(creases, 0.5) * alpha
    height -= 0.5 * creases * alpha

    # Nails (dorsal): a lighter, pinker rounded plate on each distal phalanx, a pale free edge.
    nails = np.zeros(shape)
    free_edge = np.zeros(shape)
    lunula = np.zeros(shape)
    if view == "dorsal":
        for name, pts in chains.items():
            a, b = pts[-2], pts[-1]
            seg = b - a
            length = float(np.linalg.norm(seg)) + 1e-9
            direction = seg / length
            r = (rf * width.get(name, 1.0) * 0.84) if name != "thumb" else thumb_r[-1]
            along = (v - a[0]) * direction[0] + (u - a[1]) * direction[1]
            across = -(v - a[0]) * direction[1] + (u - a[1]) * direction[0]
            nail_len = 0.55 * length + 0.5 * r
            nd = _rounded_box(along - (length + 0.6 * r - nail_len / 2), across, nail_len / 2, 0.68 * r, 0.45 * r)
            cov = np.clip(0.5 - nd * scale, 0, 1)
            nails = np.maximum(nails, cov)
            free_edge = np.maximum(free_edge, cov * smoothstep(length + 0.1 * r, length + 0.45 * r, along))
            if name == "thumb":  # the lunula: a pale half-moon at the base of the thumbnail
                base = length + 0.6 * r - nail_len
                moon = np.hypot((along - base) / (0.3 * nail_len), across / (0.5 * r)) < 1.0
                lunula = np.maximum(lunula, cov * moon)
        nails *= alpha
        d_lab[..., 0] += nails * rng.uniform(3, 8) + free_edge * rng.uniform(4, 10)
        d_lab[..., 1] += nails * rng.uniform(2, 5) - free_edge * 3
        d_lab[..., 2] -= nails * rng.uniform(2, 4)
        lunula = blur(lunula, 0.5) * alpha
        d_lab[..., 0] += lunula * rng.uniform(4, 8)
        d_lab[..., 1] -= lunula * 2
        height += nails * 0.6

    sites = [np.array([mcp_v[i], mcp_u[i]]) for i in range(4)]  # knuckles
    sites += [chains[n][1] for n in FINGERS]  # PIP joints
    sites += [np.array([0.5, (mcp_u[i] + mcp_u[i + 1]) / 2]) for i in range(3)]  # finger webs
    sites += [np.array([-0.45, 0.0]), thumb[1]]  # wrist, thumb web
    sites_px = []
    for sv, su in sites:
        su = -su if left else su
        dyc, dxc = -(sv - 0.45), su  # invert the canonical mapping
        sites_px.append(centre + scale * np.array([dyc * c - dxc * s, dyc * s + dxc * c]))
    hand_len_mm = rng.uniform(170, 200)
    px_mm = float(hand_len_mm / ((1.0 + lm) * scale))
    meta = {"view": view, "side": "left" if left else "right", "rotation_deg": float(np.degrees(rot)),
            "palm_width": float(pw), "thumb_abduction_deg": float(np.degrees(abd)), "mm_per_px": float(px_mm)}
    return Hand(alpha, height * alpha, d_lab, palm_lab, np.array(sites_px), float(px_mm), float(scale), meta)


def background(rng: np.random.Generator, shape: tuple[int, int], alpha: np.ndarray, scale_px: float) -> np.ndarray:
    """(H, W, 3) Lab: a low-chroma surface with optional cloth texture and the hand's soft shadow."""
    h, w = shape
    lab = np.empty((h, w, 3))
    lab[..., 0] = rng.uniform(20, 90)
    lab[..., 1] = rng.uniform(-8, 8)
    lab[..., 2] = rng.uniform(-8, 8)
    lab[..., 0] += rng.uniform(0.5, 3.0) * fbm(rng, shape, cells=rng.uniform(2, 6), octaves=4)
    if rng.random() < 0.5:  # woven cloth
        weave = np.sin(np.arange(w) * rng.uniform(0.8, 2.0))[None, :] * np.sin(np.arange(h) * rng.uniform(0.8, 2.0))[:, None]
        lab[..., 0] += rng.uniform(0.5, 2.0) * weave
    off = rng.uniform(0.02, 0.06) * scale_px * 1.9 * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
    shadow = np.roll(alpha, (int(round(off[0])), int(round(off[1]))), axis=(0, 1))
    shadow = blur(shadow, 0.03 * scale_px * 1.9)
    lab[..., 0] *= 1.0 - rng.uniform(0.2, 0.45) * shadow
    return lab
