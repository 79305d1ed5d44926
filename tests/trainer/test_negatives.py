"""Negatives: live service once then cache (POSTs counted), unreachable service, in-process cache."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from api.main import create_app
from api.service import build_generator
from api.settings import Settings
from finetune.config import load_train_config
from finetune.data import load_samples
from finetune.negatives import (
    NegativesUnavailableError,
    fetch_from_service,
    fetch_in_process,
    resolve_negatives,
)
from shared.io import decode_image, encode_png
from tests.api.conftest import live_server
from tests.api.fakes import FakeGenerator, fake_fill


def _cfg(bench, tmp_path, **neg):
    return load_train_config({
        "data": {"root": str(bench)},
        "negatives": {"source": "service", "cache_dir": str(tmp_path / "cache"), "seed": 3,
                      "dilation_px": 1, **neg},
    })


def test_service_once_then_cache(tiny_bench, tmp_path):
    gen = FakeGenerator()
    app = create_app(Settings(store_dir=tmp_path / "store", max_wait_ms=5.0))
    app.dependency_overrides[build_generator] = lambda s: gen
    cfg = _cfg(tiny_bench, tmp_path)
    positives = load_samples(cfg.data, tumors_only=True)
    with live_server(app) as url:
        first, sent_first = fetch_from_service(cfg, url, positives)
        second, sent_second = fetch_from_service(cfg, url, positives)
    assert sent_first == len(positives) and gen.generated_images == len(positives)
    assert sent_second == 0 and gen.generated_images == len(positives)  # all from the cache
    for s in positives:
        image = decode_image(encode_png(s.image))  # what went over the wire (8-bit)
        want = fake_fill(image, s.mask, seed=3, dilation_px=1)
        np.testing.assert_allclose(first[s.id], want, atol=0.5 / 255)
        np.testing.assert_array_equal(first[s.id], second[s.id])


def test_in_process_shares_the_service_cache(tiny_bench, tmp_path):
    """Same keys as the HTTP path: after a service run, the in-process path generates nothing."""
    gen = FakeGenerator()
    app = create_app(Settings(store_dir=tmp_path / "store", max_wait_ms=5.0))
    app.dependency_overrides[build_generator] = lambda s: gen
    cfg = _cfg(tiny_bench, tmp_path)
    positives = load_samples(cfg.data, tumors_only=True)
    with live_server(app) as url:
        served, _ = fetch_from_service(cfg, url, positives)
    local_gen = FakeGenerator()
    local, generated = fetch_in_process(cfg, positives, local_gen)
    assert generated == 0 and local_gen.calls == []
    for s in positives:
        np.testing.assert_array_equal(local[s.id], served[s.id])


def test_in_process_generates_once(tiny_bench, tmp_path):
    cfg = _cfg(tiny_bench, tmp_path, source="inprocess")
    positives = load_samples(cfg.data, tumors_only=True)
    gen = FakeGenerator()
    first = resolve_negatives(cfg, positives, generator=gen)
    assert gen.generated_images == len(positives)
    second = resolve_negatives(cfg, positives, generator=gen)
    assert gen.generated_images == len(positives)
    assert set(first) == {s.id for s in positives}
    for s in positives:
        np.testing.assert_array_equal(first[s.id], second[s.id])
        want = fake_fill(decode_image(encode_png(s.image)), s.mask, seed=3, dilation_px=1)
        np.testing.assert_allclose(first[s.id], want, atol=0.5 / 255)


def test_unreachable_service_fails_before_training(tiny_bench, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = _cfg(tiny_bench, tmp_path, url=f"http://127.0.0.1:{port}")
    positives = load_samples(cfg.data, tumors_only=True)
    with pytest.raises(NegativesUnavailableError, match=f"127.0.0.1:{port}.*not usable") as err:
        resolve_negatives(cfg, positives)
    from shared.cli import USER_ERRORS

    assert isinstance(err.value, USER_ERRORS)  # one `error:` line, not a traceback


def test_a_service_that_refuses_the_positives_is_one_user_error(tiny_bench, tmp_path):
    from shared.cli import USER_ERRORS

    app = create_app(Settings(store_dir=tmp_path / "store", max_fill_pixels=1))  # over_budget
    app.dependency_overrides[build_generator] = lambda s: FakeGenerator()
    cfg = _cfg(tiny_bench, tmp_path)
    positives = load_samples(cfg.data, tumors_only=True)
    with live_server(app) as url, pytest.raises(
            NegativesUnavailableError, match=f"{url} refused a training positive .*over_budget") as err:
        fetch_from_service(cfg, url, positives)  # was: a ServiceError traceback
    assert isinstance(err.value, USER_ERRORS)


def test_a_service_that_dies_mid_run_is_one_user_error(tiny_bench, tmp_path, monkeypatch):
    """Sixth sweep: the service killed while the trainer fetched gave a ~100-line
    httpx.ConnectError traceback (only the readiness probe was wrapped)."""
    import httpx

    from shared.cli import USER_ERRORS
    from shared.negatives_client import NegativesClient

    async def gone(self, *a, **k):
        raise httpx.ConnectError("All connection attempts failed")

    app = create_app(Settings(store_dir=tmp_path / "store"))
    app.dependency_overrides[build_generator] = lambda s: FakeGenerator()
    cfg = _cfg(tiny_bench, tmp_path)
    positives = load_samples(cfg.data, tumors_only=True)
    monkeypatch.setattr(NegativesClient, "generate_many", gone)
    with live_server(app) as url, pytest.raises(
            NegativesUnavailableError, match=f"{url} stopped answering .*ConnectError.*rerun") as err:
        fetch_from_service(cfg, url, positives)
    assert isinstance(err.value, USER_ERRORS)


def test_real_sources(tiny_bench, tmp_path):
    cfg = _cfg(tiny_bench, tmp_path, source="gt")
    samples = load_samples(cfg.data)
    gt = resolve_negatives(cfg, samples)
    tumors = [s for s in samples if s.is_tumor]
    assert set(gt) == {s.id for s in tumors}
    for s in tumors:  # the GT negative differs from the positive only inside the mask
        np.testing.assert_array_equal(gt[s.id][~s.mask], s.image[~s.mask])
        assert not np.array_equal(gt[s.id][s.mask], s.image[s.mask])
    normal = resolve_negatives(_cfg(tiny_bench, tmp_path, source="normal"), samples)
    normals = {s.id: s for s in samples if not s.is_tumor}
    for s in tumors:
        match = [n for n in normals.values() if np.array_equal(n.image, normal[s.id])]
        assert match and match[0].domain == s.domain


def test_biharmonic_through_the_predictor(tiny_bench, tmp_path):
    from scipy import ndimage

    cfg = _cfg(tiny_bench, tmp_path, source="inprocess", generator="biharmonic",
               method="biharmonic", dilation_px=2)
    positives = load_samples(cfg.data, tumors_only=True)[:3]
    negatives = resolve_negatives(cfg, positives)
    for s in positives:
        region = ndimage.binary_dilation(s.mask, iterations=3)  # covers the 2 px disc dilation
        np.testing.assert_array_equal(negatives[s.id][~region], s.image[~region])
        assert np.abs(negatives[s.id][s.mask] - s.image[s.mask]).mean() > 0.01
    with pytest.raises(NegativesUnavailableError, match="method=biharmonic"):
        resolve_negatives(_cfg(tiny_bench, tmp_path, source="inprocess", generator="biharmonic"),
                          positives)


def test_see_through_px_reaches_the_generator_and_its_own_cache_keys(tiny_bench, tmp_path):
    plain = _cfg(tiny_bench, tmp_path, source="inprocess")
    seen = _cfg(tiny_bench, tmp_path, source="inprocess", see_through_px=1.25)
    positives = load_samples(plain.data, tumors_only=True)[:2]
    gen = FakeGenerator()
    resolve_negatives(plain, positives, generator=gen)
    resolve_negatives(seen, positives, generator=gen)  # not served from the plain run's cache
    assert gen.generated_images == 2 * len(positives)
    assert [c["see_through_px"] for c in gen.calls] == [0.0, 1.25]  # one batched call per run


def test_a_missing_dpo_csv_negative_is_the_users_data_error(tmp_path):
    """A DPO CSV row whose negative file is gone: one TrainDataError (an InputError: one `error:`
    line at the command line) naming the row, not a RuntimeError from inside training."""
    import numpy as np

    from finetune.data import Sample, TrainDataError
    from finetune.negatives import resolve_negatives
    from shared.io import InputError

    image = np.zeros((8, 8), np.float32)
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    sample = Sample("liver/train_images/a.png", image, mask, "pos", "neg", "liver", True,
                    tmp_path / "a.png", None, tmp_path / "gone.png")
    cfg = load_train_config({"negatives": {"source": "dpo_csv"}})
    with pytest.raises(TrainDataError, match="a.png: no DPO CSV negative file .*gone.png"):
        resolve_negatives(cfg, [sample])
    assert issubclass(TrainDataError, InputError)
