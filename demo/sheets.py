"""Contact sheet of positives, the service's negatives and the exact GT negatives."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from generator.masks import dilate
from shared.benchmark import BenchmarkItem
from shared.benchmark.preview import _outline, _rgb
from shared.io import read_image, read_mask, write_png
from shared.metrics import masked_psnr, texture_ratio


async def _fetch(url: str, items: list[BenchmarkItem], cache_dir: Path, seed: int,
                 dilation_px: int) -> list[np.ndarray]:
    from shared.negatives_client import NegativesClient

    async with NegativesClient(url, cache_dir=cache_dir, max_concurrency=4) as client:
        pairs = [(read_image(it.image), read_mask(it.mask)) for it in items]
        results = await client.generate_many(pairs, seed=seed, num_samples=1,
                                              dilation_px=dilation_px)
    return [r[0].image for r in results]


def negatives_sheet(url: str, items: list[BenchmarkItem], out: Path, *, cache_dir: Path,
                    seed: int = 0, dilation_px: int = 2) -> tuple[Path, list[dict]]:
    """Ask the service for one negative per item; write rows of (positive with mask outline |
    generated negative | GT negative). Returns the PNG path and per-item PSNR/texture numbers."""
    negatives = asyncio.run(_fetch(url, items, cache_dir, seed, dilation_px))
    rows, stats = [], []
    for it, neg in zip(items, negatives, strict=True):
        pos, mask, gt = read_image(it.image), read_mask(it.mask), read_image(it.gt_negative)
        neg = neg if neg.ndim == 2 else neg.mean(axis=-1)
        tiles = [_outline(pos, mask), _rgb(neg), _rgb(gt)]
        pad = np.full((pos.shape[0], 4, 3), 255, np.uint8)
        rows.append(np.concatenate([tiles[0], pad, tiles[1], pad, tiles[2]], axis=1))
        stats.append({"id": it.id, "psnr_in_mask": masked_psnr(neg, gt, mask),
                      "psnr_untouched": masked_psnr(pos, gt, mask),
                      "texture_ratio": texture_ratio(neg, gt, mask),
                      "outside_mask_max_diff": float(np.abs(neg - pos)[~dilate(mask, dilation_px)].max())})
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    sheet = np.concatenate([r for row in rows for r in (row, gap)], axis=0)
    return write_png(out, sheet), stats
