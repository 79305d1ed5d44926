"""Synthetic lesions with modality-appropriate appearance, and captions from their parameters.

A lesion is an irregular star-shaped blob: in polar coordinates around its centre the boundary
is ``R(θ) = R0·(1 + Σ_k a_k cos(kθ + φ_k))`` (k = 2..8, amplitudes scaled by ``irregularity``,
high harmonics give spiculation). With ``s = r / R(θ)`` the normalised radius:

* core opacity ``α = smoothstep((1 − s)/margin)`` — 1 in the core, 0 at and beyond the boundary,
  so a soft ("ill-defined") margin lies *inside* the mask;
* optional rim ``exp(−((s − 0.82)/0.09)²)`` (ring enhancement, echogenic halo);
* optional edema, ``1 < s < 1 + edema_width``, a mild intensity shift that fades outwards.

The mask is ``s < 1`` (``s < 1 + edema_width`` with edema). Every modified pixel lies in the mask
and the composite is taken in uint8 with ``where(mask, lesion, background)``, so outside the mask
the positive equals its ground-truth negative byte for byte.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from shared.benchmark.anatomy import BreastUltrasound


@dataclass(frozen=True)
class Lesion:
    """Parameters of one synthetic lesion (fractions are of the image side)."""

    kind: str  # appearance, e.g. "ring-enhancing", "hypoechoic", "nodule", "hemorrhage"
    cy: float  # centre row, fraction of the side
    cx: float  # centre column, fraction of the side
    radius: float  # mean radius R0, fraction of the side
    irregularity: float  # amplitude of the boundary harmonics (0 = circle)
    margin: float  # width of the soft margin, fraction of R0 (small = well-defined)
    contrast: float  # signed intensity change of the core (meaning depends on the modality)
    texture: float  # std of the core's own texture
    rim: float  # rim intensity (0 = no rim)
    edema_width: float  # edema zone width beyond the boundary, fraction of R0 (0 = none)
    edema_shift: float  # intensity change in the edema zone
    harmonics: tuple[tuple[float, float], ...]  # (a_k, φ_k) for k = 2, 3, ...

    def as_json(self) -> dict:
        d = asdict(self)
        d["harmonics"] = [[round(a, 5), round(p, 5)] for a, p in self.harmonics]
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in d.items()}


# Per-domain appearance: ranges sampled uniformly, then rendered by ``render``.
PRESETS = {
    "brain_mri": dict(kinds=("ring-enhancing", "hypointense"), radius=(0.06, 0.15),
                      irregularity=(0.08, 0.3), margin=(0.15, 0.5), contrast=(0.3, 0.55),
                      texture=(0.03, 0.07), rim=(0.25, 0.45), edema_p=0.6,
                      edema_width=(0.25, 0.6), edema_shift=(-0.14, -0.07)),
    "chest_xray": dict(kinds=("nodule", "mass"), radius=(0.05, 0.14), irregularity=(0.04, 0.3),
                       margin=(0.3, 0.7), contrast=(0.12, 0.3), texture=(0.01, 0.03),
                       rim=(0.0, 0.0), edema_p=0.0, edema_width=(0, 0), edema_shift=(0, 0)),
    "retina": dict(kinds=("hemorrhage", "exudate"), radius=(0.04, 0.1), irregularity=(0.1, 0.35),
                   margin=(0.1, 0.4), contrast=(0.25, 0.5), texture=(0.02, 0.05),
                   rim=(0.0, 0.0), edema_p=0.0, edema_width=(0, 0), edema_shift=(0, 0)),
    "breast_us": dict(kinds=("hypoechoic",), radius=(0.08, 0.18), irregularity=(0.03, 0.35),
                      margin=(0.1, 0.4), contrast=(0.55, 0.85), texture=(0.0, 0.0),
                      rim=(0.0, 0.3), edema_p=0.0, edema_width=(0, 0), edema_shift=(0, 0)),
}


# Appearances the default data never draws (multi-source draws from ``PRESETS`` alone, so its items
# stay byte-identical; ``build_benchmark(multi_source_t2_look=True)`` opts in): a brain tumour as
# T2 / FLAIR shows it — a hyperintense core with hyperintense edema, the look of a BraTS slice,
# where the brain preset is T1's hypointense mass. ``WORDS_OF``: whose caption words it takes.
TEST_PRESETS = {
    "brain_mri_t2": dict(kinds=("hyperintense",), radius=(0.06, 0.15), irregularity=(0.08, 0.3),
                         margin=(0.15, 0.5), contrast=(0.3, 0.55), texture=(0.03, 0.07),
                         rim=(0.0, 0.0), edema_p=0.6, edema_width=(0.25, 0.6),
                         edema_shift=(0.07, 0.16)),
}
WORDS_OF = {"brain_mri_t2": "brain_mri"}


# Training-only lesion domains on auxiliary anatomy (``build_benchmark(aux_per_source=...)``):
# each borrows the appearance of the benchmark domain whose physics it shares — a projection
# opacity on a radiograph, a hypointense / ring-enhancing mass on MR and CT.
RENDER_AS = {"extremity_xray": "chest_xray", "shoulder_mri": "brain_mri", "abdomen_ct": "brain_mri"}


def sample_lesion(domain: str, rng: np.random.Generator, tissue: np.ndarray) -> Lesion:
    """Draw lesion parameters for ``domain``, centred on a random pixel of ``tissue``."""
    p = (PRESETS | TEST_PRESETS)[RENDER_AS.get(domain, domain)]
    size = tissue.shape[0]
    candidates = np.argwhere(tissue)
    if len(candidates) == 0:
        candidates = np.argwhere(np.ones_like(tissue))
    cy, cx = candidates[rng.integers(len(candidates))] / size
    u = lambda lo_hi: float(rng.uniform(*lo_hi))  # noqa: E731
    irregularity = u(p["irregularity"])
    harmonics = tuple(
        (float(irregularity * rng.standard_normal() / (1 + 0.35 * (k - 2))), float(rng.uniform(0, 2 * np.pi)))
        for k in range(2, 9)
    )
    edema = rng.random() < p["edema_p"]
    kind = p["kinds"][int(rng.integers(len(p["kinds"])))]
    rim = u(p["rim"]) if kind in ("ring-enhancing", "hypoechoic") else 0.0
    return Lesion(
        kind=kind, cy=float(cy), cx=float(cx), radius=u(p["radius"]), irregularity=irregularity,
        margin=u(p["margin"]), contrast=u(p["contrast"]), texture=u(p["texture"]), rim=rim,
        edema_width=u(p["edema_width"]) if edema else 0.0,
        edema_shift=u(p["edema_shift"]) if edema else 0.0, harmonics=harmonics,
    )


def _normalised_radius(lesion: Lesion, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dy, dx = yy - lesion.cy * size, xx - lesion.cx * size
    r, theta = np.hypot(dy, dx), np.arctan2(dy, dx)
    boundary = np.ones_like(theta)
    for k, (a, phi) in enumerate(lesion.harmonics, start=2):
        boundary += a * np.cos(k * theta + phi)
    boundary = lesion.radius * size * np.maximum(boundary, 0.45)
    return r / np.maximum(boundary, 1.0)


def render(
    domain: str, background: np.ndarray, lesion: Lesion, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Insert ``lesion`` into ``background`` (float SxS in [0,1]).

    Returns ``(positive_uint8, mask_bool)``; outside the mask the positive equals
    ``to_uint8(background)`` exactly.
    """
    from shared.io import to_uint8

    domain = RENDER_AS.get(domain, domain)
    size = background.shape[0]
    s = _normalised_radius(lesion, size)
    outer = 1.0 + lesion.edema_width
    mask = s < outer
    t = np.clip((1.0 - s) / max(lesion.margin, 1e-3), 0.0, 1.0)
    alpha = t * t * (3 - 2 * t)  # smoothstep: 0 at the boundary, 1 in the core
    tex = ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.0 + size / 224)
    tex = tex / (tex.std() + 1e-8)
    bg = background.astype(np.float64)
    core = s < 1.0
    local = float(bg[core].mean()) if core.any() else float(bg.mean())
    rim = lesion.rim * np.exp(-(((s - 0.82) / 0.09) ** 2))

    if domain == "brain_mri":  # T1: hypointense core, optional enhancing rim
        value = local * (1.0 - lesion.contrast) + lesion.texture * tex + rim
    elif domain == "brain_mri_t2":  # T2 / FLAIR: hyperintense core (the edema below, brighter)
        value = local + lesion.contrast * (1.0 - local) + lesion.texture * tex
    elif domain == "chest_xray":  # projection: the opacity adds density on top of the anatomy
        value = bg + lesion.contrast * (1.0 - bg) * (0.8 + 0.2 * np.tanh(tex)) + lesion.texture * tex
    elif domain == "retina":
        if lesion.kind == "hemorrhage":
            value = bg * (1.0 - lesion.contrast) + lesion.texture * tex
        else:  # exudate: bright, sharp-edged
            value = bg + lesion.contrast * (1.0 - bg) + lesion.texture * tex
    elif domain == "breast_us":  # hypoechoic mass with its own, weaker speckle
        speckle = BreastUltrasound.speckle(rng, size)
        echo = (1.0 - lesion.contrast) * 0.55 * speckle
        value = np.log1p(12.0 * echo) / np.log1p(12.0 * 2.2) + rim * 0.6 * speckle
    else:
        raise ValueError(f"no lesion renderer for domain {domain!r}")

    out = bg * (1.0 - alpha) + value * alpha
    if lesion.edema_width > 0:
        fade = np.clip((outer - s) / lesion.edema_width, 0.0, 1.0)
        out = out + lesion.edema_shift * np.where(s >= 1.0, fade, 1.0) * (1.0 - alpha) * mask
    positive = np.where(mask, to_uint8(np.clip(out, 0.0, 1.0)), to_uint8(background))
    return positive, mask


# ----------------------------------------------------------------------------- captions

MODALITY = {
    "brain_mri": ("A brain MRI", "brain tumor", "normal brain tissue"),
    "chest_xray": ("A chest X-ray", "lung nodule", "clear lung fields"),
    "retina": ("A retinal fundus photograph", "retinal lesion", "a healthy retina"),
    "breast_us": ("A breast ultrasound", "breast tumor", "normal breast tissue"),
    # auxiliary, training only: shared words ("X-ray", "MRI", "opacity", "mass") carry the
    # lesion-vs-normal direction of the text space to modalities captioned alike
    "extremity_xray": ("A leg X-ray", "bone lesion", "normal bone and soft tissue"),
    "shoulder_mri": ("A shoulder MRI", "soft-tissue mass", "normal shoulder tissue"),
    "abdomen_ct": ("An abdominal CT", "abdominal mass", "normal abdominal organs"),
    "head_ct": ("A head CT", "brain lesion", "normal brain tissue"),
    "chest_ct": ("A chest CT", "lung nodule", "normal lung tissue"),
    "ultrasound": ("An ultrasound", "mass", "normal tissue"),
}
APPEARANCE = {
    "ring-enhancing": "ring-enhancing", "hypointense": "hypointense", "hyperintense": "hyperintense",
    "nodule": "well-circumscribed opacity", "mass": "dense opacity",
    "hemorrhage": "dark hemorrhage", "exudate": "bright exudate", "hypoechoic": "hypoechoic",
}


def _location(lesion: Lesion) -> str:
    vert = "upper" if lesion.cy < 0.4 else "lower" if lesion.cy > 0.6 else "central"
    horiz = "left" if lesion.cx < 0.4 else "right" if lesion.cx > 0.6 else ""
    return f"{vert} {horiz}".strip() if vert != "central" or horiz else "central"


def caption(domain: str, lesion: Lesion) -> str:
    """A MedCLIP-SAMv2-style prompt describing the lesion's size, shape, margin and location."""
    modality, noun, _ = MODALITY[domain]
    size = "small" if lesion.radius < 0.08 else "large" if lesion.radius > 0.13 else "medium-sized"
    shape = ("irregularly shaped" if lesion.irregularity > 0.22
             else "lobulated" if lesion.irregularity > 0.12 else "round")
    margin = "ill-defined" if lesion.margin > 0.35 else "well-defined"
    text = (f"{modality} showing a {size}, {shape} {APPEARANCE[lesion.kind]} {noun} with "
            f"{margin} margins in the {_location(lesion)} region")
    if lesion.edema_width > 0:
        text += " and surrounding edema"
    if domain == "breast_us":
        text += ", suggestive of a " + ("malignant" if lesion.irregularity > 0.2 else "benign") + " tumor"
    return text + "."


def generic_caption(text: str) -> str | None:
    """The task's one caption behind a :func:`caption`: its modality and noun only ("A brain MRI
    showing a brain tumor.", as ``configs/prompts/<domain>.txt`` gives a user); None when
    ``text`` is no benchmark lesion caption."""
    for modality, noun, _ in MODALITY.values():
        if text.startswith(f"{modality} showing a ") and f" {noun} " in text.replace(".", " "):
            return f"{modality} showing a {noun}."
    return None


def caption_negative(domain: str) -> str:
    """Caption of a lesion-free image of ``domain``."""
    modality, _, normal = MODALITY[domain]
    return f"{modality} showing {normal} with no signs of pathology."
