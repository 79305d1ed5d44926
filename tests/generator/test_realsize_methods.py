"""The realsize benchmark's generator specs: one memoised backend per checkpoint, so two
compositions are judged on the same diffusion samples (bench/realsize_methods.py)."""

import numpy as np
import pytest

from bench.realsize_methods import MemoBackend, copy_texture, noise_texture, parse_generators

from .conftest import toy_pair


def test_specs_of_one_checkpoint_share_their_samples(tiny_pixel_dir):
    gens = parse_generators([f"full={tiny_pixel_dir}", f"tex={tiny_pixel_dir},texture-match"])
    full, tex = gens["full"], gens["tex"]
    assert isinstance(full.backend, MemoBackend) and full.backend is tex.backend
    assert tex.texture_match and not full.texture_match
    assert noise_texture(full) is None and noise_texture(tex) is not None
    assert copy_texture(full) is None and copy_texture(tex) is not None
    inner, calls = full.backend.backend, []
    real_fill = inner.fill

    def counting_fill(*args, **kwargs):
        calls.append(1)
        return real_fill(*args, **kwargs)

    inner.fill = counting_fill
    image, mask = toy_pair(48, 48, seed=2)
    a = full.generate([image], [mask], seed=0, steps=2)[0][0].image
    tex.generate([image], [mask], seed=0, steps=2)
    assert len(calls) == 1  # the second composition reused the first one's sample
    again = full.generate([image], [mask], seed=0, steps=2)[0][0].image
    assert np.array_equal(a, again) and len(calls) == 1
    other = full.generate([image], [mask], seed=1, steps=2)[0][0].image
    assert len(calls) == 2 and not np.array_equal(a, other)  # another seed is another sample


def test_unknown_spec_flag_is_refused(tiny_pixel_dir):
    with pytest.raises(SystemExit, match="unknown flag"):
        parse_generators([f"x={tiny_pixel_dir},texture"])


def test_unpaired_fill_auroc_pools_samples_against_truths():
    """Two items: one method's samples score (0.9, 0.8) and (0.3,), the truths 0.5 and 0.1. Of the
    3 × 2 fill–real pairs the fill ranks higher in 5 → 5/6; a label swap would give 1/6 and
    scoring only each item's own truth (paired) 3/3 ≠ 5/6."""
    from bench.bench_generator_realsize import fill_auroc, unpaired_auroc

    rows = [{"fill_scores": [0.9, 0.8]}, {"fill_scores": [0.3]}]
    gt_rows = [{"fill_scores": [0.5]}, {"fill_scores": [0.1]}]
    assert fill_auroc(rows, gt_rows) == pytest.approx(5 / 6)
    assert unpaired_auroc([0.2, 0.2], [0.2]) == pytest.approx(0.5)
    assert np.isnan(fill_auroc(rows, [{}]))
