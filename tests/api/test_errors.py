"""One test per error answer: status, JSON body {error, detail}, and headers where specified."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from shared.io import encode_png
from tests.api.conftest import make_pair, post_pair
from tests.api.fakes import FakeGenerator


def assert_error(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"} and body["error"] == code, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def test_401_without_api_key(client_factory):
    image, mask = make_pair(0)
    with client_factory(api_key="s3cret") as c:
        r = post_pair(c, image, mask)
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        wrong = c.post("/negatives", headers={"Authorization": "Bearer nope"})
        assert_error(wrong, 401, "unauthorized")
        assert_error(c.get("/negatives/" + "a" * 64), 401, "unauthorized")
        ok = c.post(
            "/negatives", headers={"Authorization": "Bearer s3cret"},
            files={"image": ("i.png", image, "image/png"), "mask": ("m.png", mask, "image/png")},
        )
        assert ok.status_code == 200
        assert c.get("/healthz").status_code == 200  # probes stay open


def test_413_body_over_upload_limit(client_factory):
    image, mask = make_pair(0, size=(64, 64))
    with client_factory(max_upload_bytes=len(image) // 2) as c:
        body = assert_error(post_pair(c, image, mask), 413, "payload_too_large")
        assert str(len(image) // 2) in body["detail"]


def test_413_too_many_pixels(client_factory):
    image, mask = make_pair(0, size=(40, 40))
    with client_factory(max_pixels=39 * 40) as c:
        body = assert_error(post_pair(c, image, mask), 413, "image_too_large")
        assert "1600" in body["detail"]


def test_415_wrong_body_media_type(client):
    assert_error(client.post("/negatives", json={"num_samples": 1}), 415, "unsupported_media_type")


def test_415_file_part_not_an_image(client):
    image, mask = make_pair(0)
    r = client.post(
        "/negatives",
        files={"image": ("i.txt", image, "text/plain"), "mask": ("m.png", mask, "image/png")},
    )
    body = assert_error(r, 415, "unsupported_media_type")
    assert body["detail"].startswith("image:")


def test_422_size_mismatch(client):
    image, _ = make_pair(0, size=(32, 32))
    _, mask = make_pair(0, size=(32, 24))
    body = assert_error(post_pair(client, image, mask), 422, "size_mismatch")
    assert "24x32" in body["detail"]


def test_422_empty_mask(client):
    image, _ = make_pair(0)
    empty = encode_png(np.zeros((32, 32), bool))
    assert_error(post_pair(client, image, empty), 422, "empty_mask")


def test_422_non_binary_mask(client):
    image, _ = make_pair(0)
    grey = encode_png(np.full((32, 32), 0.5, np.float32))
    assert_error(post_pair(client, image, grey), 422, "non_binary_mask")


def test_422_unreadable_image(client):
    _, mask = make_pair(0)
    body = assert_error(post_pair(client, b"not a png at all", mask), 422, "unreadable_image")
    assert body["detail"].startswith("image:")


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_samples", 0), ("num_samples", 9), ("seed", -1), ("steps", 0), ("strength", 1.5),
     ("strength", "nan"), ("dilation_px", 65), ("method", "../x"), ("format", "gif"),
     ("unknown_field", 1)],
)
def test_422_out_of_range_field(client, field, value):
    image, mask = make_pair(0)
    body = assert_error(post_pair(client, image, mask, **{field: value}), 422, "invalid_field")
    assert body["detail"].startswith(field)


def test_422_method_the_generator_refuses(client):
    image, mask = make_pair(0)
    body = assert_error(post_pair(client, image, mask, method="latent-boundary"), 422,
                        "invalid_field")
    assert "latent-boundary" in body["detail"]


def test_422_missing_file(client):
    image, _ = make_pair(0)
    r = client.post("/negatives", files={"image": ("i.png", image, "image/png")})
    assert_error(r, 422, "missing_field")


@pytest.mark.parametrize("bad", ["abc", "A" * 64, "g" * 64, "a" * 65, "a" * 62 + ".."])
def test_422_invalid_id(client, bad):
    assert_error(client.get(f"/negatives/{bad}"), 422, "invalid_id")
    assert_error(client.get(f"/negatives/{bad}/meta"), 422, "invalid_id")


def test_no_path_traversal(client, tmp_path):
    from api.store import InvalidIdError

    secret = tmp_path / "secret.png"
    secret.write_bytes(b"secret")
    # an encoded slash is decoded before routing: it matches no route at all
    for path in ("..%2F..%2Fsecret.png", "%2E%2E%2Fsecret", "..%2Fsecret.png/meta", ".."):
        r = client.get(f"/negatives/{path}")
        assert r.status_code in (404, 422) and b"secret" not in r.content
    with pytest.raises(InvalidIdError):
        client.app.state.service.store.get("../secret")


def test_404_unknown_id(client):
    assert_error(client.get("/negatives/" + "0" * 64), 404, "not_found")
    assert_error(client.get("/negatives/" + "0" * 64 + "/meta"), 404, "not_found")


def test_503_not_ready_while_loading(client_factory, settings_factory):
    from fastapi.testclient import TestClient

    from api.main import create_app
    from api.service import build_generator

    release = threading.Event()

    def slow_build(settings):
        release.wait(10)
        return FakeGenerator()

    app = create_app(settings_factory())
    app.dependency_overrides[build_generator] = slow_build
    image, mask = make_pair(0)
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert_error(r, 503, "not_ready")
        assert r.headers["retry-after"] == "1"
        assert_error(post_pair(c, image, mask), 503, "not_ready")
        release.set()


def test_503_queue_full_with_retry_after(client_factory):
    gate = threading.Event()
    gen = FakeGenerator(gate=gate)
    pairs = [make_pair(i) for i in range(3)]
    with client_factory(generator=gen, max_batch=1, queue_size=1, max_wait_ms=0,
                        retry_after_s=3) as c, ThreadPoolExecutor(2) as pool:
        running = pool.submit(post_pair, c, *pairs[0])
        assert gen.started.wait(5)  # the worker holds request 0
        queued = pool.submit(post_pair, c, *pairs[1])
        batcher = c.app.state.service.batcher
        deadline = time.monotonic() + 5
        while batcher.depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        r = post_pair(c, *pairs[2])
        assert_error(r, 503, "queue_full")
        assert r.headers["retry-after"] == "3"
        gate.set()
        assert running.result().status_code == 200 and queued.result().status_code == 200
        assert 'neg_api_errors_total{error="queue_full",status="503"} 1.0' in c.get("/metrics").text


def test_504_timeout_cancels_queued_work(client_factory):
    gate = threading.Event()
    gen = FakeGenerator(gate=gate)
    pairs = [make_pair(i) for i in range(2)]
    with client_factory(generator=gen, max_batch=1, max_wait_ms=0,
                        request_timeout_s=0.3) as c, ThreadPoolExecutor(1) as pool:
        running = pool.submit(post_pair, c, *pairs[0])
        assert gen.started.wait(5)
        assert_error(post_pair(c, *pairs[1]), 504, "timeout")  # queued behind the held one
        gate.set()
        assert_error(running.result(), 504, "timeout")
        time.sleep(0.2)
        # request 1 was cancelled before the worker reached it: only request 0 ran
        assert gen.generated_images == 1
        metrics = c.get("/metrics").text
        assert "neg_api_cancelled_total 1.0" in metrics
        assert 'neg_api_errors_total{error="timeout",status="504"} 2.0' in metrics
