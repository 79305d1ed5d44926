"""Reading and writing images, masks and volumes, with one clear error per kind of bad input.

Conventions used everywhere in the project:

* An **image** is a ``float32`` numpy array in ``[0, 1]``, shape ``HxW`` (grayscale) or
  ``HxWx3`` (RGB). 8-bit files are divided by 255; 16/32-bit integer grey files (CT in HU, 12-bit
  MR in a 16-bit file) and float files are min-max normalised per image; 16-bit RGB is read as
  8-bit; an alpha channel is dropped; palette/other modes are converted to RGB; a multi-page
  TIFF is refused (one slice per file). Written images are 8-bit PNG (a negative of a 16-bit
  input is in that input's min-max frame, to 1/255 of its range).
* A **mask** is a ``bool`` array ``HxW``. Files may hold {0, 1}, {0, 255} or bool values.
  **Policy for non-binary masks**: refused (:class:`NonBinaryMaskError`), never thresholded
  silently — a JPEG-compressed or resized mask has lost its boundary, and guessing a threshold
  would change the ground truth. Re-save the mask losslessly (PNG) as 0/255.
* Volumes (NIfTI, DICOM) become lists of 2-D images after an intensity window.

Every error below subclasses :class:`InputError` (a ``ValueError``) and names the file.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

MAX_PIXELS = 64_000_000  # refuse anything larger than ~8000x8000 (decompression bombs)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class InputError(ValueError):
    """Bad user input: the message names the file and what is wrong with it."""


class UnreadableImageError(InputError):
    """The bytes are not an image we can decode."""


class SizeMismatchError(InputError):
    """Image and mask have different heights/widths."""


class NonBinaryMaskError(InputError):
    """The mask holds values other than {0,1} or {0,255}."""


class EmptyMaskError(InputError):
    """The mask has no lesion pixels where one is required."""


class ImageTooLargeError(InputError):
    """The image has more pixels than allowed (decompression-bomb guard)."""


class NonFiniteImageError(InputError):
    """A floating-point image holds NaN or infinite values."""


def _open(data: bytes, name: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"{name}: {width}x{height} = {width * height} pixels exceeds the limit of "
                    f"{max_pixels}"
                )
            if img.format == "TIFF" and getattr(img, "n_frames", 1) > 1:
                raise UnreadableImageError(f"{name}: a multi-page TIFF ({img.n_frames} pages); "
                                           "save one 2-D slice per file")
            img.load()
    except (ImageTooLargeError, UnreadableImageError):
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageTooLargeError(f"{name}: refused as a decompression bomb ({err})") from None
    except Exception as err:  # PIL raises many types for corrupt data
        if isinstance(err, Image.UnidentifiedImageError):  # its text is "<_io.BytesIO object at 0x…>"
            raise UnreadableImageError(f"{name}: not a readable image (not PNG, JPEG, TIFF or BMP "
                                       "data)") from None
        raise UnreadableImageError(f"{name}: not a readable image ({type(err).__name__}: {err})") from None
    return img


def _minmax(arr: np.ndarray) -> np.ndarray:
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.float32)
    return ((arr - lo) / (hi - lo)).astype(np.float32)


def _to_float(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit integer grey (CT in HU, 12-bit MR in a 16-bit file): min-max per image, as
        # float images and as LiteMedSAM does; a fixed /65535 turned a 900..1300 CT black
        return _minmax(np.asarray(img, dtype=np.int64))
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise NonFiniteImageError(f"{bad} pixel(s) are NaN or infinite")
        return _minmax(arr)
    if mode in ("1", "L", "LA"):
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    return np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0


def decode_image(data: bytes, name: str = "image", *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode encoded bytes (PNG/JPEG/TIFF/BMP, 8/16-bit) into a float32 image in [0, 1]."""
    if not data:
        raise UnreadableImageError(f"{name}: file is empty")
    img = _open(data, name, max_pixels)
    try:
        arr = _to_float(img)
    except NonFiniteImageError as err:
        raise NonFiniteImageError(f"{name}: {err}; a float image must be finite everywhere") from None
    if arr.ndim == 3 and np.allclose(arr[..., 0], arr[..., 1]) and np.allclose(arr[..., 0], arr[..., 2]):
        arr = arr[..., 0].copy()  # RGB that is really grayscale
    return np.ascontiguousarray(arr, dtype=np.float32)


def decode_mask(
    data: bytes, name: str = "mask", *, require_lesion: bool = False, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Decode a binary mask (0/1, 0/255, 0/65535 in a 16-bit file, or bool) into a bool HxW array.

    Raises :class:`NonBinaryMaskError` for any other value (see the module's policy) and, when
    ``require_lesion``, :class:`EmptyMaskError` for an all-zero mask.
    """
    if not data:
        raise UnreadableImageError(f"{name}: file is empty")
    img = _open(data, name, max_pixels)
    if img.mode in ("RGBA", "LA"):
        grey = np.asarray(img.convert("L"))
        alpha = np.asarray(img.getchannel("A"))
        if grey.min() == grey.max() and alpha.min() != alpha.max():
            return _binarise(alpha, f"{name} (its alpha channel: the colour is flat)", require_lesion)
    if img.mode in ("RGB", "RGBA", "P", "LA"):
        rgb = np.asarray(img.convert("RGB"))
        if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
            raise NonBinaryMaskError(f"{name}: mask has colour; expected one channel of 0/255 or 0/1")
        arr = rgb[..., 0]
    else:
        arr = np.asarray(img)
        if img.format == "TIFF" and img.tag_v2.get(262) == 0:
            # MINISWHITE (tifffile's 1-bit default): PIL shows 0 as white; a mask is data, not a
            # picture, so read the stored values
            arr = ~arr if arr.dtype == bool else np.iinfo(arr.dtype).max - arr
    return _binarise(arr, name, require_lesion)


def _binarise(arr: np.ndarray, name: str, require_lesion: bool) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype == bool:
        mask = arr
    else:
        values = np.unique(arr)
        if np.all(np.isin(values, (0, 1))):
            mask = arr == 1
        elif np.all(np.isin(values, (0, 255))):
            mask = arr == 255
        elif arr.dtype.itemsize > 1 and np.all(np.isin(values, (0, 65535))):  # a 16-bit mask
            mask = arr == 65535
        else:
            shown = ", ".join(str(v) for v in values[:6]) + (" ..." if values.size > 6 else "")
            labels = values.size <= 8 and values.max() <= 10  # a lossless label map (0, 1, 2, 4)
            raise NonBinaryMaskError(
                f"{name}: mask is not binary (values {shown}); expected 0/1 or 0/255 "
                + ("(a label map: save the lesion label(s) as 0/1; we do not guess which label "
                   "is the lesion)" if labels else
                   "(re-save it losslessly as PNG; we do not guess a threshold)")
            )
    if mask.ndim != 2:
        raise NonBinaryMaskError(f"{name}: mask must be 2-D, got shape {mask.shape}")
    if require_lesion and not mask.any():
        raise EmptyMaskError(f"{name}: mask is empty but a lesion is required")
    return np.ascontiguousarray(mask, dtype=bool)


def _read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise UnreadableImageError(f"{path}: no such file")
    return path.read_bytes()


def read_image(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file into float32 [0, 1] (HxW or HxWx3). DICOM/NIfTI: use the volume readers."""
    return decode_image(_read_bytes(path), str(path), max_pixels=max_pixels)


def read_mask(
    path: str | Path, *, require_lesion: bool = False, max_pixels: int = MAX_PIXELS
) -> np.ndarray:
    """Read a binary mask file into a bool HxW array (see :func:`decode_mask`)."""
    return decode_mask(
        _read_bytes(path), str(path), require_lesion=require_lesion, max_pixels=max_pixels
    )


def check_pair(image: np.ndarray, mask: np.ndarray, name: str = "input") -> None:
    """Raise :class:`SizeMismatchError` unless ``mask`` is HxW of ``image``."""
    if tuple(mask.shape[:2]) != tuple(image.shape[:2]) or mask.ndim != 2:
        raise SizeMismatchError(
            f"{name}: mask is {mask.shape[1]}x{mask.shape[0]} but image is "
            f"{image.shape[1]}x{image.shape[0]} (width x height)"
        )


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a hidden temp file of its own (``mkstemp`` beside it) and
    ``os.replace``: a writer killed mid-write leaves the old file or none, never a truncated one,
    and writers of the same file at once (ranks of a launch, ablation runs sharing a cache, the
    service's threads) never replace one another's temp. The one atomic write of the project."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`write_bytes_atomic`)."""
    return write_bytes_atomic(path, text.encode())


def save_torch_atomic(obj, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (:func:`write_bytes_atomic`): the embedding and
    token caches that runs side by side share."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return write_bytes_atomic(path, buf.getvalue())


def write_json_atomic(path: str | Path, obj) -> Path:
    """``obj`` as one JSON line, atomically (:func:`write_text_atomic`): checkpoint state files,
    whose presence marks a checkpoint as complete."""
    return write_text_atomic(path, json.dumps(obj) + "\n")


def to_uint8(array: np.ndarray) -> np.ndarray:
    """float [0,1] -> uint8 (rounded); bool -> 0/255; uint8 unchanged."""
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    if array.dtype == np.uint8:
        return array
    return np.clip(np.rint(np.asarray(array, np.float64) * 255.0), 0, 255).astype(np.uint8)


def encode_png(array: np.ndarray) -> bytes:
    """Encode an image or mask as 8-bit PNG bytes (deterministic: no timestamps)."""
    buf = io.BytesIO()
    Image.fromarray(to_uint8(array)).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_png(path: str | Path, array: np.ndarray) -> Path:
    """Write an image or mask as an 8-bit PNG, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(array))
    return path


# ----------------------------------------------------------------------------- volumes


def apply_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """Linear intensity window (DICOM PS3.3 C.11.2.1.2 simplified): [c − w/2, c + w/2] -> [0, 1]."""
    if width <= 0:
        raise InputError(f"window width must be positive, got {width}")
    lo = center - width / 2.0
    return np.clip((np.asarray(values, np.float64) - lo) / width, 0.0, 1.0).astype(np.float32)


def percentile_window(values: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> tuple[float, float]:
    """A (center, width) window spanning the given percentiles of the non-zero voxels."""
    nz = values[values != 0]
    if nz.size == 0:
        return 0.5, 1.0
    lo, hi = np.percentile(nz, [lo_pct, hi_pct])
    return float((lo + hi) / 2.0), float(max(hi - lo, 1e-6))


def _nifti_volume(path: Path, axis: int, values) -> np.ndarray:
    """The 3-D array ``values(nibabel image)`` of the NIfTI file (a 4-D one's first volume), with
    one error per kind of bad input."""
    import nibabel as nib

    try:
        volume = values(nib.load(str(path)))
    except FileNotFoundError:
        raise UnreadableImageError(f"{path}: no such file") from None
    except Exception as err:
        raise UnreadableImageError(f"{path}: not a readable NIfTI volume ({err})") from None
    if volume.ndim == 4:
        volume = volume[..., 0]
    if volume.ndim != 3:
        raise InputError(f"{path}: expected a 3-D volume, got shape {volume.shape}")
    if axis not in (0, 1, 2):
        raise InputError(f"axis must be 0, 1 or 2, got {axis}")
    return volume


def read_nifti_slices(
    path: str | Path, *, axis: int = 2, window: tuple[float, float] | None = None
) -> list[np.ndarray]:
    """Read a NIfTI volume (.nii/.nii.gz) as 2-D float32 slices along ``axis``.

    ``window`` is (center, width) in the volume's units; by default the 0.5–99.5th percentile of
    the non-zero voxels (robust for MR, where units are arbitrary). Non-finite voxels (SPM, for
    one, writes NaN outside the brain) are background: they take the volume's finite minimum,
    with a warning that counts them; a volume with no finite voxel is a ``NonFiniteImageError``.
    """
    path = Path(path)
    volume = _nifti_volume(path, axis, lambda img: np.asarray(img.get_fdata(), dtype=np.float64))
    finite = np.isfinite(volume)
    if not finite.all():
        if not finite.any():
            raise NonFiniteImageError(f"{path}: no finite voxel (all NaN or inf)")
        warnings.warn(f"{path}: {int((~finite).sum())} non-finite voxel(s) (NaN/inf) read as "
                      "background (the volume's minimum)", stacklevel=2)
        volume = np.where(finite, volume, volume[finite].min())
    center, width = window or percentile_window(volume)
    windowed = apply_window(volume, center, width)
    # Radiological display: rows run anterior->posterior, so transpose and flip the in-plane axes.
    return [np.ascontiguousarray(np.rot90(np.take(windowed, i, axis=axis))) for i in range(volume.shape[axis])]


def read_nifti_mask_slices(path: str | Path, *, axis: int = 2) -> list[np.ndarray]:
    """Read a NIfTI label volume as 2-D bool masks along ``axis``, oriented as
    :func:`read_nifti_slices` orients the image volume (so slice i of both pairs up). Voxels must
    be 0/1 (or 0 and one other value); a multi-label volume (BraTS: 0, 1, 2, 4) is refused — pick
    the label(s) and save 0/1, we do not guess which label is the lesion. The intensity window of
    the image reader would turn 0/1 into 0/0.5."""
    path = Path(path)
    volume = _nifti_volume(path, axis, lambda img: np.asarray(img.dataobj))  # stored values
    values = np.unique(volume)
    if values.size > 2 or (values.size == 2 and values[0] != 0) or (values.size == 1 and values[0] != 0):
        shown = ", ".join(f"{v:g}" for v in values[:6]) + (" ..." if values.size > 6 else "")
        raise NonBinaryMaskError(f"{path}: label volume holds values {shown}; expected 0 and one "
                                 "lesion value (select the lesion label(s) and save 0/1)")
    mask = volume != 0
    return [np.ascontiguousarray(np.rot90(np.take(mask, i, axis=axis))) for i in range(mask.shape[axis])]


def read_dicom(path: str | Path, *, window: tuple[float, float] | None = None) -> list[np.ndarray]:
    """Read a DICOM file as a list of 2-D float32 frames in [0, 1].

    Rescale slope/intercept are applied (CT -> Hounsfield units); the window is, in order of
    preference: the ``window`` argument, the header's WindowCenter/WindowWidth, the data's
    percentiles. RGB frames (e.g. ultrasound) are converted to grayscale by luminance.
    """
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(str(path))
        pixels = np.asarray(ds.pixel_array, dtype=np.float64)
    except FileNotFoundError:
        raise UnreadableImageError(f"{path}: no such file") from None
    except Exception as err:
        raise UnreadableImageError(f"{path}: not a readable DICOM image ({err})") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2"))
    frames_n = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422") or (pixels.ndim >= 3 and pixels.shape[-1] == 3):
        pixels = pixels @ np.array([0.299, 0.587, 0.114])
    if pixels.ndim == 2:
        pixels = pixels[None]
    elif frames_n == 1 and pixels.ndim == 3 and pixels.shape[0] != 1:
        pixels = pixels[None] if pixels.shape[-1] != 3 else pixels
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    pixels = pixels * slope + intercept
    if window is None and "WindowCenter" in ds and "WindowWidth" in ds:
        c, w = ds.WindowCenter, ds.WindowWidth
        c = float(c[0] if isinstance(c, pydicom.multival.MultiValue) else c)
        w = float(w[0] if isinstance(w, pydicom.multival.MultiValue) else w)
        window = (c, w) if w > 0 else None
    center, width = window or percentile_window(pixels)
    frames = [apply_window(f, center, width) for f in pixels]
    if photometric == "MONOCHROME1":  # 0 is white
        frames = [1.0 - f for f in frames]
    return frames
