"""Real anatomy at its own pixel scale, one registry, split by source (issue 18).

Each *source* — one volume, one series, one photograph — is either a training source (``TRAIN``,
plus the later ``EXTRA_TRAIN``) or a held-out one (``HELD_OUT``), never both: the generator's window training
(``generator.windows``) draws only ``TRAIN``; the real-size benchmark (``shared.benchmark.realsize``)
draws its test images from ``HELD_OUT`` (plus, marked "seen anatomy", the training domains whose
single source cannot be split).

A source is ``frames(name) -> list[(image, tissue)]``: native-resolution float32 images in [0, 1]
and bool maps of where a lesion or hole may be centred (inside the body). Everything ships in
installed packages (nilearn, pydicom-data, pydicom's own test files, scikit-image, dipy); nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from scipy import ndimage


def _dicom(name: str, *, window: tuple[float, float] | None = None) -> list[np.ndarray]:
    from shared.benchmark.anatomy import _pydicom_data
    from shared.io import read_dicom

    frames = read_dicom(_pydicom_data(name), window=window)
    if window is None:  # percentiles of each frame (read_dicom's header window can be too wide)
        out = []
        for f in frames:
            lo, hi = np.percentile(f, [1, 99.5])
            out.append(np.clip((f - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32))
        return out
    return [f.astype(np.float32) for f in frames]


def _body(image: np.ndarray, threshold: float, *, sigma: float = 4.0, erode: int = 4) -> np.ndarray:
    smooth = ndimage.gaussian_filter(image, sigma)
    body = ndimage.binary_fill_holes(smooth > threshold)
    return ndimage.binary_erosion(body, iterations=erode) if erode else body


def _mni_brain() -> list[tuple[np.ndarray, np.ndarray]]:
    """MNI152 T1 (nilearn, 1 mm): every 3rd slice along each axis with ≥ 25 % brain."""
    from shared.benchmark.anatomy import BrainMRI

    vol = BrainMRI().volume
    out = []
    for axis in range(3):
        for k in range(0, vol.shape[axis], 3):
            sl = np.ascontiguousarray(np.rot90(np.take(vol, k, axis=axis)), dtype=np.float32)
            tissue = _body(sl, 0.2)
            if tissue.mean() > 0.25:
                out.append((sl, tissue))
    return out


def _retina() -> list[tuple[np.ndarray, np.ndarray]]:
    from shared.benchmark.anatomy import Retina

    img = Retina().fundus
    n = img.shape[0]
    yy, xx = np.mgrid[0:n, 0:n]
    return [(img, np.hypot(yy - n / 2, xx - n / 2) < 600)]


def _breast_us() -> list[tuple[np.ndarray, np.ndarray]]:
    from shared.benchmark.anatomy import BreastUltrasound

    rng = np.random.default_rng(0)
    return [BreastUltrasound().sample(rng, 448) for _ in range(12)]


def _natural() -> list[tuple[np.ndarray, np.ndarray]]:
    from shared.benchmark.anatomy import NaturalImages

    return [(p, np.ones(p.shape, bool)) for p in NaturalImages().photos]


def _head_ct() -> list[tuple[np.ndarray, np.ndarray]]:
    """pydicom-data ``693_UNCR.dcm``, an axial head CT (512²), in a brain and a bone window."""
    out = []
    for window in ((40.0, 80.0), (300.0, 2000.0)):
        img = _dicom("693_UNCR.dcm", window=window)[0]
        out.append((img, _body(_dicom("693_UNCR.dcm", window=(40.0, 400.0))[0], 0.3)))
    return out


def _dicom_source(name: str, threshold: float, *, window=None):
    def load() -> list[tuple[np.ndarray, np.ndarray]]:
        return [(f, _body(f, threshold)) for f in _dicom(name, window=window)]

    return load


def _us_panes() -> list[tuple[np.ndarray, np.ndarray]]:
    """pydicom-data ``gdcm-US-ALOKA-16.dcm`` (real B-mode, pelvis, two panes), the tissue band."""
    from shared.benchmark.external import ExternalUltrasound

    img = ExternalUltrasound().image
    y0, y1 = ExternalUltrasound.ROWS
    out = []
    for x0, x1 in ExternalUltrasound.PANES:
        pane = np.ascontiguousarray(img[y0:y1, x0:x1])
        tissue = np.zeros(pane.shape, bool)
        tissue[8:-8, 8:-8] = True
        out.append((pane, tissue))
    return out


def _chest_ct() -> list[tuple[np.ndarray, np.ndarray]]:
    """pydicom's ``CT_small.dcm``, an upper thoracic CT slice (128²), in a lung and a soft-tissue
    window; tissue = the body in the soft-tissue window."""
    from pydicom.data import get_testdata_file

    from shared.io import read_dicom

    path = get_testdata_file("CT_small.dcm")
    lung, soft = (read_dicom(path, window=w)[0].astype(np.float32) for w in ((-600.0, 1500.0), (40.0, 400.0)))
    body = _body(soft, 0.3, erode=2)
    return [(lung, body), (soft, body)]


def _echo_us() -> list[tuple[np.ndarray, np.ndarray]]:
    """pydicom-data ``color3d_jpeg_baseline.dcm``, a cardiac B-mode cine (120 frames 480×640), every
    8th frame; tissue = the largest bright component of the frames' maximum (the sector)."""
    frames = [f.astype(np.float32) for f in _dicom("color3d_jpeg_baseline.dcm")[::8]]
    labels, n = ndimage.label(_body(np.max(frames, axis=0), 0.08, sigma=8, erode=8))
    sizes = ndimage.sum(np.ones_like(labels), labels, index=range(1, n + 1))
    sector = labels == 1 + int(np.argmax(sizes))
    return [(f, sector) for f in frames]


def _lymph_us() -> list[tuple[np.ndarray, np.ndarray]]:
    """pydicom-data ``US1_UNCR.dcm``, a neck lymph-node B-mode scan (480×640, RGB) with a
    power-Doppler overlay: the coloured pixels (channel spread > 20, dilated by 2) are filled with
    the Gaussian-weighted mean (σ 6 px) of the grey pixels around them, so no colour blob can look
    like a lesion; tissue = the image band between the header and the caption."""
    import pydicom

    from shared.benchmark.anatomy import _pydicom_data

    rgb = pydicom.dcmread(_pydicom_data("US1_UNCR.dcm")).pixel_array.astype(np.float32)
    grey = rgb.mean(axis=-1) / 255.0
    colour = ndimage.binary_dilation(rgb.max(axis=-1) - rgb.min(axis=-1) > 20, iterations=2)
    valid = (~colour).astype(np.float32)
    fill = ndimage.gaussian_filter(grey * valid, 6) / np.maximum(ndimage.gaussian_filter(valid, 6), 1e-3)
    image = np.where(colour, fill, grey).astype(np.float32)
    tissue = np.zeros(image.shape, bool)
    tissue[115:325, 24:616] = True
    return [(image, tissue)]


def _dipy_volume(name: str) -> np.ndarray:
    """An image bundled with dipy (``dipy/data/files``: NIfTI or ``.npy``), float32 scaled to the
    99.5th percentile of its non-zero voxels."""
    import nibabel as nib

    from shared.benchmark.anatomy import _package_file

    path = _package_file("dipy", "data", "files", name)
    vol = np.asarray(np.load(path) if name.endswith(".npy") else nib.load(str(path)).dataobj, np.float32)
    return np.clip(vol / np.percentile(vol[vol > 0], 99.5), 0.0, 1.0)


def _dipy_t2_head() -> list[tuple[np.ndarray, np.ndarray]]:
    """The b = 0 volume of dipy's diffusion sample (T2-weighted, skull-stripped, 128², 2 mm):
    10 consecutive axial slices through the ventricles, anterior at the top."""
    vol = _dipy_volume("S0_10slices.nii.gz")[..., 0]
    out = []
    for k in range(vol.shape[2]):
        sl = np.ascontiguousarray(np.rot90(vol[:, :, k]))
        out.append((sl, _body(sl, 0.08, sigma=1.5, erode=2)))
    return out


def _dipy_t1_coronal() -> list[tuple[np.ndarray, np.ndarray]]:
    """dipy's bundled T1 coronal slice (256², skull-stripped; another head than the others)."""
    sl = np.ascontiguousarray(_dipy_volume("t1_coronal_slice.npy"))
    return [(sl, _body(sl, 0.1, sigma=2.0, erode=3))]


def _chest() -> list[tuple[np.ndarray, np.ndarray]]:
    from shared.benchmark.anatomy import ChestXray

    img = ChestXray().radiograph
    return [(img, _body(img, 0.05, sigma=8, erode=40))]


@dataclass(frozen=True)
class Source:
    name: str
    modality: str  # "mri" | "ct" | "xray" | "us" | "fundus" | "photo"
    held_out: bool  # True: evaluation only, never a training source
    load: object  # () -> list[(image, tissue)]
    note: str


SOURCES: dict[str, Source] = {s.name: s for s in (
    # training sources
    Source("mni_brain", "mri", False, _mni_brain, "MNI152 T1 template, 3 axes (nilearn)"),
    Source("shoulder_mri", "mri", False, _dicom_source("MR2_UNCR.dcm", 0.08), "shoulder MR 1024² (pydicom-data)"),
    Source("head_ct", "ct", False, _head_ct, "axial head CT 512², brain + bone window (pydicom-data 693)"),
    Source("extremity_xray", "xray", False, _dicom_source("RG3_UNCR.dcm", 0.2), "leg radiograph 1760² (pydicom-data RG3)"),
    Source("retina", "fundus", False, _retina, "fundus photograph 1411², green (scikit-image)"),
    Source("breast_us", "us", False, _breast_us, "procedural breast ultrasound 448² (ours)"),
    Source("natural_images", "photo", False, _natural, "scikit-image photographs"),
    # training sources found in session 31 (EXTRA_TRAIN, below)
    Source("chest_ct", "ct", False, _chest_ct, "upper thoracic CT 128², lung + soft-tissue window (pydicom CT_small)"),
    Source("echo_us", "us", False, _echo_us, "cardiac B-mode cine 480×640, 15 frames (pydicom-data color3d)"),
    Source("lymph_us", "us", False, _lymph_us, "neck lymph-node B-mode 480×640, Doppler filled (pydicom-data US1)"),
    # held-out sources: one per modality the benchmark has, plus body CT; never trained on
    Source("emri_head_mr", "mri", True, _dicom_source("emri_small.dcm", 0.2), "head MR 64², 10 frames (pydicom-data emri_small)"),
    Source("abdomen_mr", "mri", True, _dicom_source("MR-SIEMENS-DICOM-WithOverlays.dcm", 0.1), "abdominal MR 484² (pydicom-data MR-SIEMENS)"),
    Source("abdomen_ct", "ct", True, _dicom_source("explicit_VR-UN.dcm", 0.2, window=(40.0, 400.0)), "abdominal CT 512², soft-tissue window (pydicom-data explicit_VR-UN)"),
    Source("pelvis_us", "us", True, _us_panes, "real B-mode ultrasound 480×640, 2 panes (pydicom-data ALOKA)"),
    # held-out brain MR found in session 33 (dipy's bundled samples): whole skull-stripped slices
    # laid out like a BraTS slice, at 128² and 256² native
    Source("dipy_t2_head", "mri", True, _dipy_t2_head, "head MR, T2-weighted b0 128², 10 axial slices (dipy S0_10slices)"),
    Source("dipy_t1_coronal", "mri", True, _dipy_t1_coronal, "head MR, T1 coronal slice 256² (dipy t1_coronal_slice)"),
    Source("chest_xray", "xray", True, _chest, "chest radiograph 1955×1841 (pydicom-data RG1; the held-out domain)"),
)}
# Training sources added after the generator's committed weights were trained: they extend the
# CLIP's multi-source set (``build_benchmark(multi_source_extra=True)``) and are not in ``TRAIN``,
# so the committed generator and CLIP weights stay reproducible from ``TRAIN`` by their scripts.
EXTRA_TRAIN = ("chest_ct", "echo_us", "lymph_us")
TRAIN = tuple(n for n, s in SOURCES.items() if not s.held_out and n not in EXTRA_TRAIN)
HELD_OUT = tuple(n for n, s in SOURCES.items() if s.held_out)


@cache
def frames(name: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The native frames of source ``name`` (loaded once per process)."""
    if name not in SOURCES:
        raise ValueError(f"unknown anatomy source {name!r}; choose from {sorted(SOURCES)}")
    out = SOURCES[name].load()
    if not out:
        raise ValueError(f"source {name!r} has no frames")
    return out


def check_training_sources(names: tuple[str, ...]) -> None:
    """Refuse unknown and held-out sources: a source is training or test, never both."""
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise ValueError(f"unknown anatomy sources {unknown}; choose from {sorted(SOURCES)}")
    held = [n for n in names if SOURCES[n].held_out]
    if held:
        raise ValueError(f"{held} are held-out sources (evaluation only); train on {list(TRAIN + EXTRA_TRAIN)}")
