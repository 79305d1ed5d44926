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
        assert "1600" in body["detail"] and "NEG_API_MAX_PIXELS" in body["detail"]


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


def test_422_no_context_before_any_work(client, fake):
    """A mask whose dilation covers the whole image leaves nothing to fill from: 422 no_context,
    answered before the request reaches the generator."""
    image, _ = make_pair(0)
    full = encode_png(np.ones((32, 32), bool))
    calls = len(fake.calls)
    body = assert_error(post_pair(client, image, full), 422, "no_context")
    assert "covers the whole image" in body["detail"]
    assert len(fake.calls) == calls


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


def test_413_chunked_body_is_refused_while_it_streams(tmp_path):
    """A body without Content-Length (chunked) is counted as it arrives: reading stops just past
    the limit instead of spooling the whole body to disk first (issue 20: ~1 GiB written)."""
    import asyncio

    from starlette.requests import Request

    from api.errors import ApiError
    from api.settings import Settings
    from api.uploads import parse_upload

    head = (b'--abc\r\nContent-Disposition: form-data; name="image"; filename="i.png"\r\n'
            b"Content-Type: image/png\r\n\r\n")
    chunk, sent = 64 * 1024, []

    async def receive():  # an endless upload: the first part never ends
        sent.append(1)
        return {"type": "http.request", "body": head if len(sent) == 1 else b"\0" * chunk,
                "more_body": True}

    scope = {"type": "http", "method": "POST", "path": "/negatives", "query_string": b"",
             "headers": [(b"content-type", b"multipart/form-data; boundary=abc")]}
    limit = 1_000_000
    with pytest.raises(ApiError) as err:
        asyncio.run(parse_upload(Request(scope, receive),
                                 Settings(max_upload_bytes=limit, store_dir=tmp_path)))
    assert err.value.status == 413 and err.value.error == "payload_too_large"
    assert len(sent) == 2 + limit // chunk  # stopped at the first chunk past the limit


def test_413_chunked_body_through_the_app(client_factory):
    image, mask = make_pair(0, size=(64, 64))
    boundary = b"b0undary"
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="i.png"'
            b"\r\nContent-Type: image/png\r\n\r\n" + image + b"\r\n--" + boundary
            + b'\r\nContent-Disposition: form-data; name="mask"; filename="m.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + mask + b"\r\n--" + boundary + b"--\r\n")

    def chunks():
        for i in range(0, len(body), 100):
            yield body[i : i + 100]

    with client_factory(max_upload_bytes=len(image) // 2) as c:
        r = c.post("/negatives", content=chunks(),
                   headers={"content-type": "multipart/form-data; boundary=b0undary"})
        assert "content-length" not in {k.lower() for k in r.request.headers}
        assert_error(r, 413, "payload_too_large")
    with client_factory() as c:  # the same chunked body under the default limit is served
        ok = c.post("/negatives", content=chunks(),
                    headers={"content-type": "multipart/form-data; boundary=b0undary"})
        assert ok.status_code == 200, ok.text


def test_422_float_tiff_with_nan(client):
    """A 32-bit float TIFF with NaN is refused at upload, naming the problem."""
    import io

    from PIL import Image

    arr = np.random.default_rng(0).random((32, 32)).astype(np.float32)
    arr[3, 4] = np.nan
    buf = io.BytesIO()
    Image.fromarray(arr, mode="F").save(buf, format="TIFF")
    _, mask = make_pair(0)
    r = client.post("/negatives", files={"image": ("i.tif", buf.getvalue(), "image/tiff"),
                                         "mask": ("m.png", mask, "image/png")})
    body = assert_error(r, 422, "non_finite_image")
    assert "NaN" in body["detail"] and body["detail"].startswith("image:")


def test_422_over_budget_names_the_limit(client_factory, fake):
    """Fill pixels x samples and steps x samples are bounded per request; the generator never
    sees a refused request, and one just inside the budget is served."""
    from generator.masks import dilate
    from shared.io import decode_mask

    image, mask = make_pair(0, size=(64, 64))  # conftest's disc lesion
    fill = int(dilate(decode_mask(mask), 4).sum())
    with client_factory(max_fill_pixels=2 * fill, max_sample_steps=40) as c:
        body = assert_error(post_pair(c, image, mask, dilation_px=4, num_samples=3, steps=10), 422,
                            "over_budget")
        assert str(fill) in body["detail"] and "NEG_API_MAX_FILL_PIXELS" in body["detail"]
        body = assert_error(post_pair(c, image, mask, steps=21, num_samples=2), 422, "over_budget")
        assert "42" in body["detail"] and "NEG_API_MAX_SAMPLE_STEPS" in body["detail"]
        assert fake.generated_images == 0
        assert post_pair(c, image, mask, dilation_px=4, num_samples=2, steps=20).status_code == 200


@pytest.mark.parametrize("protect", [False, True])
def test_docs_follow_the_api_key_when_asked(client_factory, protect):
    with client_factory(api_key="s3cret", protect_docs=protect) as c:
        for path in ("/openapi.json", "/docs", "/redoc"):
            r = c.get(path)
            if protect:
                assert_error(r, 401, "unauthorized")
                ok = c.get(path, headers={"Authorization": "Bearer s3cret"})
                assert ok.status_code == 200
            else:
                assert r.status_code == 200
        keyed = c.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()
        assert "/negatives" in keyed["paths"]
        assert c.get("/healthz").status_code == 200  # probes stay open
