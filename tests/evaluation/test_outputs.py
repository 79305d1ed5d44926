"""Per-image overlays on images of any shape."""

import numpy as np
import pytest

from finetune.evaluation.evaluate import ImageResult
from finetune.evaluation.metrics_report import score_pair
from finetune.evaluation.outputs import save_overlay


@pytest.mark.parametrize("shape", [(1, 30), (30, 1), (12, 20)])
def test_overlay_of_a_strip_image_is_written(tmp_path, shape):
    """A 1-pixel-tall image crashed the evaluator at its first overlay (matplotlib's contour
    needs a 2 × 2 grid) and lost the whole run; the overlay is now written without the contour."""
    gt = np.zeros(shape, bool)
    gt.flat[len(gt.flat) // 2] = True
    image = np.linspace(0, 1, gt.size, dtype=np.float32).reshape(shape)
    result = ImageResult(name="s.png", score=score_pair("s.png", gt, gt), coarse_dice=1.0,
                         coarse_empty=False, pred_empty=False, boxes=[[0, 0, 0, 0]],
                         saliency=image, coarse=gt, pred=gt)
    path = save_overlay(tmp_path / "s.png", image, result, gt)
    assert path.is_file() and path.stat().st_size > 0
