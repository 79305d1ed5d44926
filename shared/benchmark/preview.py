"""Contact sheet of the benchmark: per domain, positives with their mask outline and GT negative."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from shared.benchmark.build import load_manifest
from shared.io import read_image, read_mask, to_uint8, write_png


def _rgb(gray: np.ndarray) -> np.ndarray:
    gray = gray if gray.ndim == 2 else gray.mean(axis=-1)
    return np.repeat(to_uint8(gray)[..., None], 3, axis=-1)


def _outline(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    rgb = _rgb(image)
    edge = mask & ~ndimage.binary_erosion(mask)
    rgb[edge] = (255, 40, 40)
    return rgb


def contact_sheet(root: str | Path, out: str | Path, *, per_domain: int = 4) -> Path:
    """Write a PNG: one row per domain of (positive | outline | GT negative) triples + a normal."""
    items = load_manifest(root)
    rows = []
    for domain in sorted({it.domain for it in items}):
        pos = [it for it in items if it.domain == domain and it.label == "tumor"][:per_domain]
        normal = [it for it in items if it.domain == domain and it.label == "normal"][:1]
        tiles = []
        for it in pos:
            img, mask = read_image(it.image), read_mask(it.mask)
            tiles += [_rgb(img), _outline(img, mask), _rgb(read_image(it.gt_negative))]
        tiles += [_rgb(read_image(it.image)) for it in normal]
        side = tiles[0].shape[0]
        pad = np.full((side, 4, 3), 255, np.uint8)
        rows.append(np.concatenate([t for tile in tiles for t in (tile, pad)], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    return write_png(out, np.concatenate(rows, axis=0))
