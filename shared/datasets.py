"""Dataset layouts the researcher uses.

* **MedCLIP-SAMv2 layout**: ``root/<task>/{train,val,test}_{images,masks}/NAME.png``; a mask has
  its image's file name. Pairs are matched by name and sorted (upstream zips two unsorted
  ``os.listdir`` calls, which pairs the wrong files); a missing partner is an error naming it.
* **DPO CSV** (the researcher's fork): header ``filename,filename_neg,Caption,Caption_neg``; also
  seen ``imagepath,imagepath_neg,caption,caption_neg``. Both are read; the first is written.
* **Normal images**: a folder of lesion-free images (no masks), used as real negatives.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from pathlib import Path

from shared.io import IMAGE_SUFFIXES, InputError

SPLITS = ("train", "val", "test")
DPO_HEADER = ("filename", "filename_neg", "Caption", "Caption_neg")
_DPO_ALIASES = {
    ("filename", "filename_neg", "caption", "caption_neg"): DPO_HEADER,
    ("imagepath", "imagepath_neg", "caption", "caption_neg"): DPO_HEADER,
}


class DatasetError(InputError):
    """A dataset folder or CSV that does not follow its layout."""


@dataclass(frozen=True)
class Pair:
    """One image and its mask in the MedCLIP-SAMv2 layout."""

    name: str  # file name shared by image and mask, e.g. "benign (26).png"
    image_path: Path
    mask_path: Path


@dataclass(frozen=True)
class DpoRow:
    """One row of the researcher's DPO CSV: a positive and its negative, with captions."""

    filename: str  # positive image path (as written in the CSV, usually relative)
    filename_neg: str  # negative image path
    caption: str  # caption of the positive ("... benign tumor.")
    caption_neg: str  # caption of the negative ("... no signs of pathology.")


VOLUME_HINT = {".dcm": "shared.io.read_dicom", ".nii": "shared.io.read_nifti_slices",
               ".gz": "shared.io.read_nifti_slices"}


def _images_in(folder: Path) -> dict[str, Path]:
    """Image files of ``folder`` by name. Hidden files (``.DS_Store``, macOS ``._a.png``) are not
    data and are passed over; any other file that is not an image is named in one warning line on
    stderr, so a folder of DICOM or NIfTI files is never skipped without a word."""
    files = [p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")]
    images = {p.name: p for p in files if p.suffix.lower() in IMAGE_SUFFIXES}
    other = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if other:
        hints = sorted({VOLUME_HINT[p.suffix.lower()] for p in other if p.suffix.lower() in VOLUME_HINT})
        print(f"warning: {folder}: {len(other)} file(s) that are not {'/'.join(IMAGE_SUFFIXES)} "
              f"images skipped, e.g. {other[0].name}"
              + (f" (DICOM/NIfTI: read slices with {' / '.join(hints)} and save them as PNG)"
                 if hints else ""), file=sys.stderr)
    return images


def list_pairs(root: str | Path, task: str, split: str) -> list[Pair]:
    """Image/mask pairs of ``root/<task>/<split>_{images,masks}``, sorted by name."""
    if split not in SPLITS:
        raise DatasetError(f"split must be one of {SPLITS}, got {split!r}")
    base = Path(root) / task
    images_dir, masks_dir = base / f"{split}_images", base / f"{split}_masks"
    for folder in (images_dir, masks_dir):
        if not folder.is_dir():
            raise DatasetError(f"{folder}: folder missing (expected the MedCLIP-SAMv2 layout)")
    images, masks = _images_in(images_dir), _images_in(masks_dir)
    missing_masks = sorted(set(images) - set(masks))
    missing_images = sorted(set(masks) - set(images))
    if missing_masks:
        raise DatasetError(f"{images_dir / missing_masks[0]}: no mask with this name in {masks_dir}"
                           + (f" (and {len(missing_masks) - 1} more)" if len(missing_masks) > 1 else ""))
    if missing_images:
        raise DatasetError(f"{masks_dir / missing_images[0]}: no image with this name in {images_dir}"
                           + (f" (and {len(missing_images) - 1} more)" if len(missing_images) > 1 else ""))
    return [Pair(name, images[name], masks[name]) for name in sorted(images)]


def list_tasks(root: str | Path) -> list[str]:
    """Task folders under ``root`` that have at least one ``*_images`` split folder."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such data folder")
    return sorted(
        d.name for d in root.iterdir()
        if d.is_dir() and any((d / f"{s}_images").is_dir() for s in SPLITS)
    )


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly in ``folder`` (sorted; no subfolders; other files are named in
    one warning, as in :func:`list_pairs`); a missing or image-less folder is a DatasetError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"{folder}: no such folder")
    found = list(_images_in(folder).values())
    if not found:
        raise DatasetError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in it")
    return found


def read_dpo_csv(path: str | Path) -> list[DpoRow]:
    """Read a DPO CSV in either header convention (see module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such CSV")
    try:
        return _read_dpo_csv(path)
    except UnicodeDecodeError as err:  # a binary file, or a CSV saved in another encoding
        raise DatasetError(f"{path}: not a UTF-8 text CSV (byte {err.start}: {err.reason})") from None


def _read_dpo_csv(path: Path) -> list[DpoRow]:
    with path.open(newline="", encoding="utf-8-sig") as fh:  # a BOM (spreadsheets) is read
        reader = csv.reader(fh, skipinitialspace=True)
        try:
            header = tuple(h.strip() for h in next(reader))
        except StopIteration:
            raise DatasetError(f"{path}: CSV is empty") from None
        key = tuple(h.lower() for h in header)
        if key not in _DPO_ALIASES:
            raise DatasetError(
                f"{path}: unknown header {','.join(header)}; expected "
                "filename,filename_neg,Caption,Caption_neg or imagepath,imagepath_neg,caption,caption_neg"
            )
        rows = []
        for lineno, row in enumerate(reader, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 4:
                raise DatasetError(f"{path}:{lineno}: expected 4 columns, got {len(row)}")
            rows.append(DpoRow(*(c.strip() for c in row)))
    return rows


def write_dpo_csv(path: str | Path, rows: list[DpoRow]) -> Path:
    """Write rows with the header ``filename,filename_neg,Caption,Caption_neg``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(DPO_HEADER)
        for r in rows:
            writer.writerow([r.filename, r.filename_neg, r.caption, r.caption_neg])
    return path
