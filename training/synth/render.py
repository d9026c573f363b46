"""The public renderer: `render(kind, seed, size=128, **params) -> SynthSample`.

A sample is deterministic by (RENDERER_VERSION, kind, seed, size, params): every random draw
comes from `numpy.random.Generator(PCG64(seed))` and fixed children spawned from it, one per
concern, so an explicit parameter (say `grade=2`) changes only what it controls -- the same seed
at grades 0-3 shows the same skin and the same lesion outline at rising severity.

Eczema and hand samples are rendered once as healthy skin; the eczema layer is then applied to
the same fields and passed through the same lighting and camera draws. Outside the mask dilated
by `meta["dilation_px"]` the eczema image is byte-identical to `healthy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import eczema as eczema_mod
from . import hand as hand_mod
from . import lesion as lesion_mod
from .color import CATEGORY_NAMES, FITZPATRICK_MAPPINGS, fitzpatrick, ita_deg, sample_tone
from .skin import Camera, Lighting, hair_alpha, hair_color, texture

RENDERER_VERSION = 1
RENDERER_NAME = f"synthetic-v{RENDERER_VERSION}"
KINDS = ("eczema", "hand", "lesion")
PARAMS: dict[str, tuple[str, ...]] = {
    "eczema": ("ita_category", "grade"),
    "hand": ("ita_category", "grade", "view"),
    "lesion": ("ita_category", "label", "mode"),
}
GRADES = (0, 1, 2, 3)
VIEWS = ("dorsal", "palmar")
MODES = ("dermoscopy", "clinical")


@dataclass
class SynthSample:
    image: np.ndarray  # uint8 (H, W, 3): the skin with the lesion (grade 0: equal to healthy)
    healthy: np.ndarray | None  # uint8 (H, W, 3): the same seed without the lesion
    mask: np.ndarray | None  # uint8 (H, W) in {0, 255}, 255 = eczema
    soft_mask: np.ndarray | None  # float32 (H, W) in [0, 1]
    hand: np.ndarray | None  # uint8 (H, W) in {0, 255}, hand silhouette
    label: str
    meta: dict


def _check(kind: str, size: Any, params: dict) -> tuple[int, int]:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")
    unknown = sorted(set(params) - set(PARAMS[kind]))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for kind {kind!r}; valid: {', '.join(PARAMS[kind])}")
    if isinstance(size, (int, np.integer)):
        shape = (int(size), int(size))
    else:
        shape = tuple(int(s) for s in size)  # type: ignore[assignment]
    if len(shape) != 2 or min(shape) < 16:
        raise ValueError(f"size must be an int or (height, width), at least 16 px; got {size!r}")
    cat = params.get("ita_category")
    if cat is not None and cat not in CATEGORY_NAMES:
        raise ValueError(f"unknown ita_category {cat!r}; valid: {', '.join(CATEGORY_NAMES)}")
    if params.get("grade") is not None and params["grade"] not in GRADES:
        raise ValueError(f"grade must be one of {GRADES}; got {params['grade']!r}")
    if params.get("view") is not None and params["view"] not in VIEWS:
        raise ValueError(f"unknown view {params['view']!r}; valid: {', '.join(VIEWS)}")
    if params.get("label") is not None and params["label"] not in lesion_mod.CLASSES:
        raise ValueError(f"unknown lesion label {params['label']!r}; valid: {', '.join(lesion_mod.CLASSES)}")
    if params.get("mode") is not None and params["mode"] not in MODES:
        raise ValueError(f"unknown mode {params['mode']!r}; valid: {', '.join(MODES)}")
    return shape  # type: ignore[return-value]


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.floating, float)):
        return round(float(x), 4)
    if isinstance(x, np.integer):
        return int(x)
    return x


def _calibrate_ita(lab: np.ndarray, where: np.ndarray, ita: float) -> float:
    """Global L* offset that puts the median skin colour on the target ITA (lighting and white
    balance move it; the offset is computed on the healthy render and applied to both)."""
    L = np.median(lab[..., 0][where])
    b = np.median(lab[..., 2][where])
    return float(50.0 + b * np.tan(np.radians(ita)) - L)


def _grade(rng: np.random.Generator, params: dict) -> int:
    g = params.get("grade")
    return int(rng.choice(GRADES, p=[0.1, 0.3, 0.3, 0.3])) if g is None else int(g)


def _tone_meta(tone: dict, lab: np.ndarray, where: np.ndarray) -> dict:
    return {
        "ita": tone["ita"],
        "ita_category": tone["ita_category"],
        "ita_measured_lab": float(ita_deg(np.median(lab[..., 0][where]), np.median(lab[..., 2][where]))),
        "fitzpatrick": {name: fitzpatrick(tone["ita"], name) for name in FITZPATRICK_MAPPINGS},
        "base_lab": [tone["L"], tone["a"], tone["b"]],
    }


def _hair(rng: np.random.Generator, shape: tuple[int, int], px_mm: float, tone: dict, thick: bool,
          skin_fraction: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    area_cm2 = shape[0] * shape[1] * (px_mm / 10) ** 2 * skin_fraction
    if thick:  # dermoscopy: the classic ISIC artefact, 20-40 % of images
        count = int(rng.integers(2, 10)) if rng.random() < 0.3 else 0
        width = (2.0 * max(shape) / 256, 5.0 * max(shape) / 256)
    else:
        count = int(rng.poisson(rng.uniform(0, 6) * area_cm2 / 4))
        width = (max(0.02 / px_mm, 0.6), max(0.08 / px_mm, 0.9))
    length = (3 / px_mm, 15 / px_mm)
    return hair_alpha(rng, shape, count, length, width), hair_color(rng, tone)


def _overlay(lab: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return lab + alpha[..., None] * (colour - lab)


def _render_eczema(streams: list, shape: tuple[int, int], params: dict) -> SynthSample:
    scene, skin_rng, _shape_rng, lesion_rng, light_rng, cam_rng = streams
    grade = _grade(scene, params)
    px_mm = scene.uniform(13.0, 26.0) / max(shape)  # a 1.3-2.6 cm clinical close-up
    tone = sample_tone(skin_rng, params.get("ita_category"))
    lab, height, lines, tex = texture(skin_rng, shape, tone, px_mm, freckles=True)
    hair_a, hair_c = _hair(skin_rng, shape, px_mm, tone, thick=False)
    light = Lighting.draw(light_rng, shape)
    cam = Camera.draw(cam_rng, shape)

    def finish(lab_: np.ndarray, height_: np.ndarray, offset: float) -> np.ndarray:
        out = light.apply(_overlay(lab_, hair_a, hair_c), height_)
        out[..., 0] += offset
        return out

    healthy_lab = finish(lab, height, 0.0)
    offset = _calibrate_ita(healthy_lab, hair_a < 0.1, tone["ita"])
    healthy_lab[..., 0] += offset
    healthy = cam.apply(healthy_lab)
    meta: dict = {"grade": grade, "mm_per_px": px_mm, **_tone_meta(tone, healthy_lab, hair_a < 0.1),
                  "texture": tex, "lighting": light.params, "camera": cam.params}
    if grade == 0:
        zeros = np.zeros(shape, np.uint8)
        meta["eczema"] = {"severity": eczema_mod.draw_severities(lesion_rng, 0, "acute"),
                          "dilation_px": eczema_mod.dilation_px(shape)}
        return SynthSample(healthy, healthy.copy(), zeros, zeros.astype(np.float32), None, "eczema", meta)
    layer = eczema_mod.draw(lesion_rng, shape, px_mm, tone, grade, lines)
    ecz = cam.apply(finish(*layer.apply(lab, height), offset))
    image = np.where(layer.support[..., None], ecz, healthy)
    meta["eczema"] = layer.meta
    return SynthSample(image, healthy, (layer.mask * 255).astype(np.uint8), layer.soft, None, "eczema", meta)


def _render_hand(streams: list, shape: tuple[int, int], params: dict) -> SynthSample:
    scene, skin_rng, shape_rng, lesion_rng, light_rng, cam_rng = streams
    grade = _grade(scene, params)
    tone = sample_tone(skin_rng, params.get("ita_category"))
    hand = hand_mod.draw(shape_rng, shape, tone, params.get("view"))
    lab, height, lines, tex = texture(skin_rng, shape, tone, hand.px_mm, relief=0.3)
    # Hairs grow on the back of the hand and the wrist, about a third of the silhouette.
    hair_a, hair_c = _hair(skin_rng, shape, hand.px_mm, tone, thick=False, skin_fraction=0.3 * float(hand.alpha.mean()))
    if hand.meta["view"] == "palmar":
        hair_a = np.zeros(shape)  # palms are glabrous
    hair_a = hair_a * hand.alpha
    bg = hand_mod.background(shape_rng, shape, hand.alpha, hand.scale_px)
    skin_lab = lab + hand.d_lab + hand.palm_lab
    skin_height = height * 0.1 + hand.height
    light = Lighting.draw(light_rng, shape)
    cam = Camera.draw(cam_rng, shape)
    a = hand.alpha[..., None]
    core = hand.alpha > 0.99

    def finish(lab_: np.ndarray, height_: np.ndarray, offset: float) -> np.ndarray:
        full = bg * (1 - a) + _overlay(lab_, hair_a, hair_c) * a
        out = light.apply(full, height_ * hand.alpha)
        out[..., 0] += offset * hand.alpha
        return out

    # Calibrate on the dorsal skin tone (palms are lighter by design, B.1).
    dorsal_lab = finish(lab + hand.d_lab, skin_height, 0.0)
    offset = _calibrate_ita(dorsal_lab, core, tone["ita"])
    dorsal_lab[..., 0] += offset
    healthy_lab = finish(skin_lab, skin_height, offset)
    healthy = cam.apply(healthy_lab)
    hand_mask = ((hand.alpha > 0.5) * 255).astype(np.uint8)
    meta: dict = {"grade": grade, "mm_per_px": hand.px_mm, "hand": hand.meta,
                  **_tone_meta(tone, dorsal_lab, core),
                  "texture": tex, "lighting": light.params, "camera": cam.params}
    if grade == 0:
        zeros = np.zeros(shape, np.uint8)
        meta["eczema"] = {"dilation_px": eczema_mod.dilation_px(shape)}
        return SynthSample(healthy, healthy.copy(), zeros, zeros.astype(np.float32), hand_mask, "hand", meta)
    # Keep the lesion off the anti-aliased rim: confine to the eroded silhouette.
    confine = np.clip(-(0.5 - hand.alpha) * 2, 0, 1) * (hand.alpha > 0.5)
    layer = eczema_mod.draw(lesion_rng, shape, hand.px_mm, tone, grade, lines, confine=confine,
                            sites=hand.sites, r0_frac=(0.05, 0.14))
    ecz = cam.apply(finish(*layer.apply(skin_lab, skin_height), offset))
    image = np.where(layer.support[..., None], ecz, healthy)
    meta["eczema"] = layer.meta
    return SynthSample(image, healthy, (layer.mask * 255).astype(np.uint8), layer.soft, hand_mask, "hand", meta)


def _render_lesion(streams: list, shape: tuple[int, int], params: dict) -> SynthSample:
    scene, skin_rng, shape_rng, _lesion_rng, light_rng, cam_rng = streams
    label = params.get("label") or str(scene.choice(lesion_mod.CLASSES))
    mode = params.get("mode") or ("dermoscopy" if scene.random() < 0.7 else "clinical")
    subtype = lesion_mod.subtype_for(label, scene)
    diam_mm = lesion_mod.diameter_mm(scene, subtype)
    # Dermoscopy frames the lesion (a melanoma-like one usually fills most of the field).
    if mode == "dermoscopy":
        frac = scene.uniform(0.5, 0.85) if subtype == "melanoma" else scene.uniform(0.35, 0.7)
    else:
        frac = scene.uniform(0.25, 0.5) if subtype == "melanoma" else scene.uniform(0.15, 0.4)
    diam_px = frac * min(shape)
    px_mm = diam_mm / diam_px
    tone = sample_tone(skin_rng, params.get("ita_category"))
    lab, height, _lines, tex = texture(skin_rng, shape, tone, px_mm, relief=0.6 if mode == "dermoscopy" else 1.0)
    hair_a, hair_c = _hair(skin_rng, shape, px_mm, tone, thick=mode == "dermoscopy")
    les = lesion_mod.draw(shape_rng, shape, subtype, diam_px, px_mm, tone)
    light = Lighting.draw(light_rng, shape, vignette_max=0.1 if mode == "dermoscopy" else 0.3)
    cam = Camera.draw(cam_rng, shape)
    skin_only = (les.alpha < 0.01) & (hair_a < 0.1)
    offset = _calibrate_ita(light.apply(lab, height), skin_only, tone["ita"]) if skin_only.any() else 0.0
    lab = _overlay(lab, les.alpha, les.lab)
    lab = light.apply(_overlay(lab, hair_a, hair_c), height + les.height)
    lab[..., 0] += offset
    tone_meta = _tone_meta(tone, lab, skin_only if skin_only.any() else np.ones(shape, bool))  # before the field stop
    frame_meta: dict = {}
    if mode == "dermoscopy":
        lab, frame_meta = lesion_mod.dermoscopy_frame(shape_rng, lab)
    image = cam.apply(lab)
    meta = {"mode": mode, "mm_per_px": px_mm, "diameter_mm": diam_mm, "lesion": les.meta, "frame": frame_meta,
            **tone_meta, "texture": tex, "lighting": light.params, "camera": cam.params}
    return SynthSample(image, None, None, None, None, label, meta)


_RENDERERS = {"eczema": _render_eczema, "hand": _render_hand, "lesion": _render_lesion}


def render(kind: str, seed: int, size: int | tuple[int, int] = 128, **params: Any) -> SynthSample:
    """Render one sample. kind: "eczema" | "hand" | "lesion"; size: int or (height, width).

    params (all optional, drawn from the seed when left out):
      eczema: ita_category (one of color.CATEGORY_NAMES), grade (0-3)
      hand:   ita_category, grade (0-3), view ("dorsal" | "palmar")
      lesion: ita_category, label ("NV" | "MEL"), mode ("dermoscopy" | "clinical")
    """
    shape = _check(kind, size, params)
    params = {k: v for k, v in params.items() if v is not None}
    root = np.random.Generator(np.random.PCG64(int(seed)))
    streams = root.spawn(6)  # scene, skin, shape, lesion, light, camera
    sample = _RENDERERS[kind](streams, shape, params)
    sample.meta = _jsonable({"renderer": RENDERER_NAME, "kind": kind, "seed": int(seed), "size": list(shape),
                             "label": sample.label, "params": params, **sample.meta})
    return sample
