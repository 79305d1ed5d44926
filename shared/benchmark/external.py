"""External sets: anatomy of a benchmark domain's modality from sources training never sees.

``build_benchmark(..., external=True)`` draws each domain's images from ``EXTERNAL_SOURCES``
(another subject, scanner or organ), all in the test split. Same interface as the sources of
:mod:`shared.benchmark.anatomy`: ``sample(rng, size) -> (image, tissue)``.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
from scipy import ndimage

from shared.benchmark.anatomy import _clear_border, _crop, _pydicom_data, _resize


class ExternalBrainMR:
    """Another head, scanner and contrast than the MNI template: the 10 frames of pydicom-data's
    ``emri_small.dcm`` (real head MR, 64², zoomed on the lateral ventricle). Never used in
    training: the external set of the brain domain (``build_benchmark(..., external=True)``).
    Crops of 44–64 source pixels, random left-right flip, resized to the benchmark size."""

    name = "brain_mri"
    file = "emri_small.dcm"

    @cached_property
    def frames(self) -> list[np.ndarray]:
        from shared.io import read_dicom

        out = []
        for frame in read_dicom(_pydicom_data(self.file)):
            lo, hi = np.percentile(frame, [1, 99.5])
            out.append(np.clip((frame - lo) / (hi - lo), 0.0, 1.0).astype(np.float32))
        return out

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        img = self.frames[int(rng.integers(len(self.frames)))]
        h = img.shape[0]
        side = int(rng.integers(44, h + 1))
        top, left = rng.integers(0, h - side + 1, size=2)
        crop = _crop(img, int(top), int(left), side)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = _resize(np.ascontiguousarray(crop), size)
        smooth = ndimage.gaussian_filter(crop, size / 40)
        return crop, _clear_border(smooth > 0.2)


class ExternalUltrasound:
    """Real B-mode ultrasound for the (procedural) breast domain: pydicom-data's
    ``gdcm-US-ALOKA-16.dcm`` (480×640, a pelvis scan, two panes) — another organ, scanner and
    speckle than anything in training. Never used in training: the external set of ``breast_us``.
    Square crops of 130–200 source pixels from the tissue below the bladder in either pane, random
    left-right flip, resized to the benchmark size."""

    name = "breast_us"
    file = "gdcm-US-ALOKA-16.dcm"
    ROWS = (196, 412)  # tissue band (source rows), below the bladder and above the scale text
    PANES = ((36, 330), (340, 636))  # columns of the two images

    @cached_property
    def image(self) -> np.ndarray:
        from shared.io import read_dicom

        frame = read_dicom(_pydicom_data(self.file))[0]
        frame = frame.mean(axis=-1) if frame.ndim == 3 else frame
        lo, hi = np.percentile(frame, [1, 99.5])
        return np.clip((frame - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        x0, x1 = self.PANES[int(rng.integers(2))]
        y0, y1 = self.ROWS
        side = int(rng.integers(130, 201))
        top = int(rng.integers(y0, y1 - side + 1))
        left = int(rng.integers(x0, x1 - side + 1))
        crop = _crop(self.image, top, left, side)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = _resize(np.ascontiguousarray(crop), size)
        return crop, _clear_border(np.ones((size, size), bool))


class ExternalBrainT2:
    """Whole axial slices of another real head in another contrast: the held-out source
    ``dipy_t2_head`` (dipy's bundled b = 0 volume: T2-weighted, skull-stripped, 128², 10 slices
    through the ventricles) — laid out like a BraTS slice, which neither the MNI template (T1) nor
    ``emri_small`` (a 64² zoom) is. Never used in training: an alternative external set of the
    brain domain (``build_benchmark(..., external=True, external_source="dipy_t2_head")``). The
    lesions keep the brain domain's appearance (a T1-style hypointense core, optional rim): the
    set changes the head and its contrast, not the lesion model. A square around the brain with a
    random 4–40 % margin, random left-right flip, resized to the benchmark size."""

    name = "brain_mri"

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        from shared.benchmark.sources import frames

        slices = frames("dipy_t2_head")
        img, brain = slices[int(rng.integers(len(slices)))]
        rows, cols = np.nonzero(brain)
        cy, cx = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
        extent = max(np.ptp(rows), np.ptp(cols)) + 1
        side = min(int(extent * (1 + rng.uniform(0.04, 0.4))), img.shape[0])
        top = int(np.clip(round(cy - side / 2), 0, img.shape[0] - side))
        left = int(np.clip(round(cx - side / 2), 0, img.shape[1] - side))
        crop = _crop(img, top, left, side)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = _resize(np.ascontiguousarray(crop), size)
        tissue = ndimage.binary_fill_holes(ndimage.gaussian_filter(crop, size / 60) > 0.08)
        return crop, _clear_border(ndimage.binary_erosion(tissue, iterations=max(2, size // 14)))


class ExternalBrainT2Hyperintense(ExternalBrainT2):
    """The same whole T2 slices with lesions as T2 / FLAIR shows a brain tumour: a hyperintense
    core and hyperintense edema (``lesions.TEST_PRESETS["brain_mri_t2"]``, never drawn in
    training) — what a BraTS T2 slice looks like, where ``ExternalBrainT2`` keeps the training
    lesion model (a T1-style dark mass). The slices are drawn exactly as there."""

    lesion_as = "brain_mri_t2"


# Sources of the same modality as a benchmark domain that training never sees (external sets).
EXTERNAL_SOURCES = {"brain_mri": ExternalBrainMR, "breast_us": ExternalUltrasound}
# Other external sets, chosen by name (``--external-source``); each replaces its domain's default.
# ``lesion_as`` (optional): the appearance its lesions are drawn and rendered with.
EXTERNAL_ALTERNATES = {"dipy_t2_head": ExternalBrainT2,
                       "dipy_t2_head_hyperintense": ExternalBrainT2Hyperintense}
