"""Lesions on every training source at many scales, and on procedural textures (issue 17).

Why: the embedded CLIP pre-trained on the benchmark alone sees lesions only on the anatomy it
learned (one MNI volume, one fundus photograph, the procedural ultrasound) and is at chance on
sources it never saw (``bench/results/clip_protocol.md``: external head MR 0.47, real ultrasound
0.56, the held-out chest 0.50). A detector of "a lesion" rather than "this anatomy with a lesion"
needs many backgrounds whose normal look it cannot memorise. This module draws them:

* **Real sources at many scales** — every training source of :mod:`shared.benchmark.sources`
  (``TRAIN``, never a held-out one; scikit-image's photographs excluded) as a square window of
  ``size · z`` native pixels (``z`` log-uniform in ``ZOOM``, capped by the frame) around a tissue
  pixel, a random flip and 90° turn, resized to ``size`` with anti-aliasing.
* **Procedural textures** (:func:`procedural`) — 1/f^β noise (β uniform in [1, 3]: from grainy to
  smooth) with a few soft-edged ellipses ("organs") of random intensity and a random gamma: an
  unlimited supply of backgrounds with no anatomy at all.
* **Appearance decoupled from the source** — with probability ``P_OWN_PRESET`` the lesion uses the
  preset of its source's modality (``realsize.PRESET_OF``), else one of the four benchmark presets
  at random, radius × U(0.6, 1.1): a ring-enhancing mass may sit on a radiograph, an opacity on an
  MR. The only thing common to all positives is a blob that differs from its surroundings.
* **Captions** with the source's own modality words where the project has them
  (``CAPTION_DOMAIN``; procedural textures take the words of the rendered preset's domain), so the
  text side's lesion/normal direction is shared across modalities.

Items are written by ``build_benchmark(..., multi_source=N)`` as training-only domains
``ms_<source>`` (see :mod:`shared.benchmark.build`); ``multi_source_extra=True`` adds the sources
of ``sources.EXTRA_TRAIN`` (a chest CT, a cardiac cine and a lymph-node ultrasound scan). Item ``i`` of source ``k`` draws from
``default_rng([seed, 200 + k, i, is_tumor])``.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from skimage.transform import resize

from shared.benchmark.anatomy import _clear_border
from shared.benchmark.lesions import PRESETS, WORDS_OF, Lesion, sample_lesion
from shared.benchmark.realsize import PRESET_OF, _square_around
from shared.benchmark.sources import EXTRA_TRAIN, SOURCES, TRAIN, check_training_sources, frames

ZOOM = (1.0, 4.0)  # native pixels per output pixel, log-uniform (capped by the frame's side)
P_OWN_PRESET = 0.5  # share of lesions drawn with the source modality's own appearance
RADIUS_SCALE = (0.6, 1.1)  # the preset's radius is multiplied by this (uniform)
MIN_STD = 0.03  # a background flatter than this (a saturated or empty window) is redrawn
MIN_VISIBLE = 0.04  # a lesion changing its mask by less (mean |Δ|, [0, 1] units) is redrawn
TRIES = 16
PROCEDURAL = "procedural"
# Real training sources used (scikit-image photographs are not medical anatomy: left out).
MS_SOURCES = tuple(n for n in TRAIN if n != "natural_images") + (PROCEDURAL,)
# With ``multi_source_extra``: also the sources found later (``sources.EXTRA_TRAIN``), appended so
# every earlier domain keeps its random stream.
MS_EXTRA = EXTRA_TRAIN
# Caption words per source: a benchmark or auxiliary domain of ``lesions.MODALITY``.
CAPTION_DOMAIN = {"mni_brain": "brain_mri", "retina": "retina", "breast_us": "breast_us",
                  "shoulder_mri": "shoulder_mri", "extremity_xray": "extremity_xray",
                  "head_ct": "head_ct", "chest_ct": "chest_ct", "echo_us": "ultrasound",
                  "lymph_us": "ultrasound"}


def window_crop(name: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A ``size``² view of a random frame of training source ``name`` at a random zoom (above):
    ``(image float32 [0, 1], tissue bool)``; the tissue map has a border of size/8 cleared."""
    check_training_sources((name,))
    pool = frames(name)
    image, tissue = pool[int(rng.integers(len(pool)))]
    h, w = image.shape
    z = float(np.exp(rng.uniform(*np.log(ZOOM))))
    side = int(min(round(size * z), h, w))
    ys, xs = np.nonzero(tissue)
    k = int(rng.integers(ys.size)) if ys.size else None
    cy, cx = (int(ys[k]), int(xs[k])) if k is not None else (h // 2, w // 2)
    top, left = _square_around(h, side, cy), _square_around(w, side, cx)
    img = image[top : top + side, left : left + side]
    tis = tissue[top : top + side, left : left + side]
    turns, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
    img, tis = np.rot90(img, turns), np.rot90(tis, turns)
    if flip:
        img, tis = img[:, ::-1], tis[:, ::-1]
    img = resize(np.ascontiguousarray(img, dtype=np.float64), (size, size), order=1,
                 anti_aliasing=side > size)
    tis = resize(np.ascontiguousarray(tis), (size, size), order=0, anti_aliasing=False).astype(bool)
    return np.clip(img, 0.0, 1.0).astype(np.float32), _clear_border(tis)


def procedural(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A background with no anatomy: 1/f^β noise (β ~ U[1, 3]) plus 0–3 soft ellipses, scaled to
    the 1st–99th percentile and gamma-corrected (γ log-uniform in [0.5, 2]); tissue = all but a
    size/8 border."""
    f = np.fft.fftfreq(size)
    radius = np.hypot(*np.meshgrid(f, f, indexing="ij"))
    radius[0, 0] = 1.0 / size
    beta = rng.uniform(1.0, 3.0)
    spectrum = (rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size)))
    x = np.real(np.fft.ifft2(spectrum / radius ** (beta / 2)))
    x = (x - x.mean()) / (x.std() + 1e-8)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for _ in range(int(rng.integers(0, 4))):
        cy, cx = rng.uniform(0.1, 0.9, 2)
        ry, rx = rng.uniform(0.15, 0.45, 2)
        angle = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dy * np.cos(angle) + dx * np.sin(angle)) / ry
        v = (-dy * np.sin(angle) + dx * np.cos(angle)) / rx
        x = x + rng.uniform(-2.5, 2.5) / (1.0 + np.exp((np.hypot(u, v) - 1.0) * 12.0))
    lo, hi = np.percentile(x, [1, 99])
    x = np.clip((x - lo) / max(hi - lo, 1e-8), 0.0, 1.0) ** np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    return x.astype(np.float32), _clear_border(np.ones((size, size), bool))


def background(name: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(image, tissue)`` of source ``name`` (a training source or ``"procedural"``)."""
    return procedural(rng, size) if name == PROCEDURAL else window_crop(name, rng, size)


def draw_item(name: str, rng: np.random.Generator, size: int, *, tumor: bool,
              t2_look: bool = False):
    """``(background, preset, lesion, positive uint8, mask)`` of source ``name``: the background is
    redrawn while flatter than ``MIN_STD``, the lesion (and background) while it changes its mask
    by less than ``MIN_VISIBLE`` on average (an opacity on a saturated radiograph is invisible, and
    a positive nobody could see is a wrong label); after ``TRIES`` the last draw is kept.
    Normals (``tumor=False``) get ``lesion`` and ``positive`` None, a random preset for the words.
    ``t2_look``: see :func:`draw_lesion`."""
    from shared.benchmark.lesions import render

    last = None
    for _ in range(TRIES):
        bg, tissue = background(name, rng, size)
        preset, lesion = draw_lesion(name, rng, tissue, t2_look=t2_look)
        if float(bg.std()) < MIN_STD:
            continue
        if not tumor:
            break
        positive, mask = render(preset, bg, lesion, rng)
        last = (bg, preset, lesion, positive, mask)
        if mask.any() and np.abs(positive[mask] / 255.0 - bg[mask]).mean() >= MIN_VISIBLE:
            break
    if not tumor:
        return bg, preset, None, None, np.zeros((size, size), bool)
    if last is None:  # every background was flat: keep the last one, lesion and all
        last = (bg, preset, lesion, *render(preset, bg, lesion, rng))
    return last


def draw_lesion(name: str, rng: np.random.Generator, tissue: np.ndarray,
                t2_look: bool = False) -> tuple[str, Lesion]:
    """``(preset, lesion)``: the source's own preset with probability ``P_OWN_PRESET`` (procedural
    textures: always random), else a random one; radius scaled by U(``RADIUS_SCALE``). With
    ``t2_look`` a brain lesion is drawn half the time with the T2 look (``lesions.TEST_PRESETS``:
    bright core and edema) — brain lesions of both polarities; off, the stream is unchanged."""
    own = None if name == PROCEDURAL else PRESET_OF.get(SOURCES[name].modality)
    presets = sorted(PRESETS)
    preset = own if own and rng.random() < P_OWN_PRESET else presets[int(rng.integers(len(presets)))]
    if t2_look and preset == "brain_mri" and rng.random() < 0.5:
        preset = "brain_mri_t2"
    lesion = sample_lesion(preset, rng, tissue)
    return preset, replace(lesion, radius=lesion.radius * float(rng.uniform(*RADIUS_SCALE)))


def caption_domain(name: str, preset: str) -> str:
    """The ``lesions.MODALITY`` key whose words caption an item of source ``name``."""
    return CAPTION_DOMAIN.get(name, WORDS_OF.get(preset, preset))
