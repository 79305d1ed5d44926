"""Healthy anatomy: the lesion-free backgrounds of the benchmark.

Every source returns ``(image, tissue)`` for a random draw: ``image`` is float32 ``SxS`` in [0, 1],
``tissue`` a bool ``SxS`` map of where a lesion may be centred (inside the organ, away from the
border). Real anatomy comes from files that installed packages ship — never a download:

* ``brain_mri``: axial slices of the MNI152 2009a T1 template bundled with nilearn.
* ``chest_xray``: crops of a real chest radiograph (pydicom-data ``RG1_UNCR.dcm``, CR, MONOCHROME1).
* ``retina``: crops of scikit-image's bundled fundus photograph (green channel, where vessels and
  lesions have the most contrast — the usual choice in fundus analysis).
* ``breast_us``: procedural breast ultrasound (layered tissue + Rayleigh speckle), our one
  synthetic modality.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.transform import resize


def _package_file(module: str, *parts: str) -> Path:
    import importlib

    mod = importlib.import_module(module)
    path = Path(mod.__file__).parent.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is the package {module!r} installed in full?")
    return path


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    out = resize(img, (size, size), order=1, anti_aliasing=True, preserve_range=True)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def _crop(img: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    return img[top : top + side, left : left + side]


def _clear_border(tissue: np.ndarray) -> np.ndarray:
    """``tissue`` with a frame of 1/8 of its side set False: lesions are centred away from it."""
    m = tissue.shape[0] // 8
    tissue[:m], tissue[-m:], tissue[:, :m], tissue[:, -m:] = False, False, False, False
    return tissue


class BrainMRI:
    """Axial slices of nilearn's bundled MNI152 T1 template (1 mm, 197x233x189)."""

    name = "brain_mri"

    @cached_property
    def volume(self) -> np.ndarray:
        import nibabel as nib

        path = _package_file(
            "nilearn.datasets", "data", "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
        )
        vol = np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float32)
        hi = np.percentile(vol[vol > 0], 99.5)
        return np.clip(vol / hi, 0.0, 1.0)

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        vol = self.volume
        z = int(rng.integers(60, 140))  # from the ventricles' floor to the centrum semiovale
        sl = np.rot90(vol[:, :, z])  # (233, 197): anterior at the top
        h, w = sl.shape
        pad = (h - w) // 2
        sl = np.pad(sl, ((0, 0), (pad, h - w - pad)))
        zoom = rng.uniform(0.82, 1.0)
        side = int(h * zoom)
        top, left = rng.integers(0, h - side + 1, size=2)
        img = _crop(sl, int(top), int(left), side)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = _resize(np.ascontiguousarray(img), size)
        brain = ndimage.binary_fill_holes(img > 0.25)
        tissue = ndimage.binary_erosion(brain, iterations=max(2, size // 14))
        return img, tissue


class ChestXray:
    """Crops over the lung fields of a real chest radiograph (pydicom-data RG1_UNCR.dcm)."""

    name = "chest_xray"

    @cached_property
    def radiograph(self) -> np.ndarray:
        return _normalised_dicom("RG1_UNCR.dcm")

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        img = self.radiograph  # (1955, 1841); lungs are dark, bone and mediastinum bright
        side = int(rng.integers(380, 620))
        # Lung-field centres (checked on the contact sheet): one lung or the other.
        col = 560 if rng.random() < 0.5 else 1290
        cy = int(rng.integers(520, 1150)) + 0
        cx = col + int(rng.integers(-120, 121))
        top = int(np.clip(cy - side // 2, 0, img.shape[0] - side))
        left = int(np.clip(cx - side // 2, 0, img.shape[1] - side))
        crop = _crop(img, top, left, side)
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = _resize(np.ascontiguousarray(crop), size)
        smooth = ndimage.gaussian_filter(crop, size / 40)
        return crop, _clear_border(smooth < np.percentile(smooth, 60))  # aerated lung, not rib or heart


def _pydicom_data(name: str) -> Path:
    import data_store  # the import name of the pydicom-data package

    path = Path(data_store.__file__).parent / "data" / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: install pydicom-data")
    return path


def _normalised_dicom(name: str) -> np.ndarray:
    """First frame of a pydicom-data file, windowed to its 1st–99.5th percentiles, float32 [0, 1]."""
    from shared.io import read_dicom

    frame = read_dicom(_pydicom_data(name))[0]
    lo, hi = np.percentile(frame, [1, 99.5])
    return np.clip((frame - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


class Retina:
    """Crops of scikit-image's bundled fundus photograph, green channel."""

    name = "retina"

    @cached_property
    def fundus(self) -> np.ndarray:
        from skimage import data

        green = data.retina()[..., 1].astype(np.float32) / 255.0  # (1411, 1411)
        return np.clip(green / np.percentile(green, 99.8), 0.0, 1.0)

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        img = self.fundus
        n = img.shape[0]
        side = int(rng.integers(420, 760))
        # Keep the crop inside the fundus disc (centre 705, radius ~640).
        while True:
            top, left = (int(v) for v in rng.integers(90, n - 90 - side, size=2))
            corners = np.array([[top, left], [top, left + side], [top + side, left],
                                [top + side, left + side]])
            if np.all(np.hypot(*(corners - n / 2).T) < 640):
                break
        crop = _crop(img, top, left, side)
        k = int(rng.integers(0, 4))
        crop = _resize(np.ascontiguousarray(np.rot90(crop, k)), size)
        tissue = np.zeros((size, size), bool)
        m = size // 7
        tissue[m:-m, m:-m] = True
        return crop, tissue


class BreastUltrasound:
    """Procedural B-mode breast ultrasound: skin, subcutaneous fat, gland, pectoral muscle.

    Echogenicity per layer (with wavy boundaries and low-frequency variation) times fully
    developed speckle (Rayleigh envelope of laterally elongated, correlated complex noise), then
    depth attenuation and log compression as a scanner would apply.
    """

    name = "breast_us"

    @staticmethod
    def speckle(rng: np.random.Generator, size: int) -> np.ndarray:
        """Rayleigh-distributed speckle envelope with unit mean, axial/lateral correlation."""
        scale = size / 224.0
        re = rng.standard_normal((size, size))
        im = rng.standard_normal((size, size))
        sig = (0.7 * scale + 0.3, 1.6 * scale + 0.4)  # (axial, lateral) resolution cell
        env = np.hypot(ndimage.gaussian_filter(re, sig), ndimage.gaussian_filter(im, sig))
        return env / env.mean()

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.linspace(0.0, 1.0, size)[:, None]
        x = np.linspace(0.0, 1.0, size)[None, :]

        def boundary(base: float, amp: float) -> np.ndarray:
            freq, phase = rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
            wobble = ndimage.gaussian_filter1d(rng.standard_normal(size), size / 12) * amp * 3
            return base + amp * np.sin(2 * np.pi * freq * x + phase) + wobble[None, :]

        skin = boundary(rng.uniform(0.03, 0.06), 0.006)
        fat = boundary(rng.uniform(0.18, 0.32), 0.03)
        gland = boundary(rng.uniform(0.66, 0.8), 0.04)
        echo = np.where(y < skin, 0.35, 0.0)
        echo = np.where((y >= skin) & (y < skin + 0.015), 1.0, echo)  # bright skin line
        fat_lobules = ndimage.gaussian_filter(rng.standard_normal((size, size)), size / 30)
        echo = np.where((y >= skin + 0.015) & (y < fat), 0.28 + 0.1 * np.tanh(3 * fat_lobules), echo)
        gland_tex = ndimage.gaussian_filter(rng.standard_normal((size, size)), (size / 80, size / 25))
        echo = np.where((y >= fat) & (y < gland), 0.72 + 0.2 * np.tanh(2 * gland_tex), echo)
        stri = 0.5 + 0.5 * np.sin(2 * np.pi * (y - gland) * rng.uniform(18, 30))
        echo = np.where(y >= gland, 0.3 + 0.25 * stri, echo)  # pectoralis striations
        echo = np.where(np.abs(y - fat) < 0.01, echo + 0.3, echo)  # fascia lines
        echo = np.where(np.abs(y - gland) < 0.012, echo + 0.45, echo)
        echo = ndimage.gaussian_filter(echo, 0.6 * size / 224 + 0.2)
        intensity = echo * self.speckle(rng, size) * np.exp(-rng.uniform(0.4, 0.9) * y)
        img = np.log1p(12.0 * intensity) / np.log1p(12.0 * 2.2)
        img = np.clip(img, 0.0, 1.0).astype(np.float32)
        rows = (y >= fat + 0.04) & (y < gland - 0.04)
        tissue = np.broadcast_to(rows, (size, size)).copy()
        tissue[:, : size // 8] = False
        tissue[:, -size // 8 :] = False
        return img, tissue


SOURCES = {cls.name: cls for cls in (BrainMRI, ChestXray, Retina, BreastUltrasound)}


# ----------------------------------------------------------------------------- auxiliary anatomy
# Extra lesion-free tissue for self-supervised inpainting only: never a benchmark domain, never
# the held-out chest radiograph (RG1). More kinds of healthy tissue — a projection radiograph
# among them, whose smooth soft-tissue gradients none of the three training domains has — so a
# model trained on them has seen more than three texture regimes.


def _body_crop(img: np.ndarray, rng: np.random.Generator, size: int, *, side: tuple[int, int],
               rows: tuple[float, float], cols: tuple[float, float], body: float):
    """A random square crop centred in the given row/column bands, resized, with a tissue map."""
    h, w = img.shape
    s = int(rng.integers(*side))
    cy, cx = int(rng.uniform(*rows) * h), int(rng.uniform(*cols) * w)
    top = int(np.clip(cy - s // 2, 0, h - s))
    left = int(np.clip(cx - s // 2, 0, w - s))
    crop = _crop(img, top, left, s)
    crop = np.rot90(crop, int(rng.integers(4)))
    crop = _resize(np.ascontiguousarray(crop), size)
    return crop, _clear_border(ndimage.gaussian_filter(crop, size / 40) > body)


class _DicomCrops:
    """Random crops of one real pydicom-data image around the body in it (``_body_crop``).

    Subclasses name the file and the crop parameters: ``side`` (crop side range in source
    pixels), ``rows`` / ``cols`` (bands, as fractions, where the crop centre falls) and ``body``
    (the smoothed intensity above which a pixel is tissue).
    """

    name: str
    file: str
    side: tuple[int, int]
    rows: tuple[float, float]
    cols: tuple[float, float]
    body: float

    @cached_property
    def image(self) -> np.ndarray:
        return _normalised_dicom(self.file)

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        return _body_crop(self.image, rng, size, side=self.side, rows=self.rows, cols=self.cols,
                          body=self.body)


class ExtremityXray(_DicomCrops):
    """Crops of a real lower-leg radiograph (CR, 1760²; the leg spans columns ~30–70%): soft
    tissue and bone."""

    name, file = "extremity_xray", "RG3_UNCR.dcm"
    side, rows, cols, body = (280, 520), (0.12, 0.72), (0.4, 0.6), 0.2


class ShoulderMRI(_DicomCrops):
    """Crops of a real shoulder MR image (1024²)."""

    name, file = "shoulder_mri", "MR2_UNCR.dcm"
    side, rows, cols, body = (220, 420), (0.3, 0.8), (0.3, 0.85), 0.08


class AbdomenCT(_DicomCrops):
    """Crops of a real axial abdominal CT slice (512²)."""

    name, file = "abdomen_ct", "explicit_VR-UN.dcm"
    side, rows, cols, body = (96, 200), (0.35, 0.75), (0.25, 0.75), 0.2


class NaturalImages:
    """Crops of scikit-image's bundled photographs (gray): edges, lines and textures of every kind.

    Not anatomy: structure to continue across a hole (LaMa-style inpainting is trained on natural
    scenes and transfers to other domains). One photograph per draw, a square crop of random side,
    rotated by a multiple of 90°, resized.
    """

    name = "natural_images"
    NAMES = ("camera", "astronaut", "brick", "grass", "gravel", "coins", "moon", "rocket",
             "coffee", "chelsea", "immunohistochemistry", "clock", "cell", "hubble_deep_field")

    @cached_property
    def photos(self) -> list[np.ndarray]:
        from skimage import data
        from skimage.color import rgb2gray

        out = []
        for name in self.NAMES:
            img = getattr(data, name)()
            img = rgb2gray(img) if img.ndim == 3 else img.astype(np.float64) / 255.0
            out.append(np.asarray(img, np.float32))
        return out

    def sample(self, rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        img = self.photos[int(rng.integers(len(self.photos)))]
        h, w = img.shape
        s = int(rng.integers(size, min(h, w, 4 * size) + 1))
        crop = _crop(img, int(rng.integers(h - s + 1)), int(rng.integers(w - s + 1)), s)
        crop = _resize(np.ascontiguousarray(np.rot90(crop, int(rng.integers(4)))), size)
        return crop, _clear_border(np.ones((size, size), bool))


AUX_SOURCES = {cls.name: cls for cls in (ExtremityXray, ShoulderMRI, AbdomenCT, NaturalImages)}


def aux_healthy_images(
    names: tuple[str, ...], n_per_source: int, size: int, *, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n_per_source`` (image, tissue) crops of each auxiliary source, deterministic per seed."""
    unknown = set(names) - set(AUX_SOURCES)
    if unknown:
        raise ValueError(f"unknown auxiliary anatomy {sorted(unknown)}; choose from {sorted(AUX_SOURCES)}")
    out = []
    for k, name in enumerate(names):
        rng = np.random.default_rng([seed, k])
        source = AUX_SOURCES[name]()
        out += [source.sample(rng, size) for _ in range(n_per_source)]
    return out
