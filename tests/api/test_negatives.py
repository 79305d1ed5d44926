"""POST /negatives and GET /negatives/{id}: formats, ids, idempotency, store integrity."""

from __future__ import annotations

import io
import json
import logging
import zipfile

import numpy as np
import pytest

from shared.io import decode_image, decode_mask
from shared.negatives_client import negative_ids
from shared.provenance import sha256_bytes
from tests.api.conftest import make_pair, post_pair
from tests.api.fakes import dilate, fake_fill


def expected_ids(image: bytes, mask: bytes, *, seed=0, num_samples=1, steps=20, strength=1.0,
                 dilation_px=2, method="diffusion", checkpoint="f" * 64):
    return negative_ids(
        image_sha=sha256_bytes(image), mask_sha=sha256_bytes(mask),
        params={"steps": steps, "strength": strength, "dilation_px": dilation_px, "method": method},
        seed=seed, num_samples=num_samples, checkpoint=checkpoint,
    )


def test_json_answer_ids_outputs_and_provenance(client, fake):
    image, mask = make_pair(1)
    r = post_pair(client, image, mask, num_samples=3, seed=7, dilation_px=1)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ids"] == expected_ids(image, mask, seed=7, num_samples=3, dilation_px=1)
    assert [n["seed"] for n in body["negatives"]] == [7, 8, 9]
    prov = body["provenance"]
    assert prov["image_sha256"] == sha256_bytes(image)
    assert prov["checkpoint"] == fake.checkpoint_hash
    assert prov["params"] == {"steps": 20, "strength": 1.0, "dilation_px": 1, "method": "diffusion"}
    img, m = decode_image(image), decode_mask(mask)
    outside = ~dilate(m, 1)
    for k, neg in enumerate(body["negatives"]):
        png = client.get(f"/negatives/{neg['id']}")
        assert png.status_code == 200 and png.headers["content-type"] == "image/png"
        out = decode_image(png.content)
        np.testing.assert_array_equal(out[outside], img[outside])  # exact outside the mask
        want = fake_fill(img, m, seed=7 + k, dilation_px=1)
        np.testing.assert_allclose(out, want, atol=0.5 / 255)  # 8-bit round trip
        meta = client.get(neg["meta_url"]).json()
        assert meta["seed"] == 7 + k and meta["checkpoint"] == fake.checkpoint_hash
        assert meta["png_sha256"] == sha256_bytes(png.content)
        assert meta["mask_sha256"] == sha256_bytes(mask)
        assert set(meta["timings"]) >= {"queue_ms", "generate_ms", "batch_size"}
        assert {"torch", "numpy", "python"} <= set(meta["versions"])
        assert meta["scores"]["fill_mean"] == pytest.approx(float(want.mean()), rel=1e-6)


def test_png_and_zip_answers(client):
    image, mask = make_pair(2)
    r = post_pair(client, image, mask, accept="image/png", num_samples=2)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    ids = expected_ids(image, mask, num_samples=2)
    assert r.headers["x-negative-id"] == ids[0]
    assert r.headers["x-negative-ids"] == ",".join(ids)
    assert "fill_mean" in json.loads(r.headers["x-negative-scores"])
    z = post_pair(client, image, mask, accept="application/zip", num_samples=2)
    assert z.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(z.content)) as archive:
        assert sorted(archive.namelist()) == sorted([f"{i}.png" for i in ids] + ["metadata.json"])
        meta = json.loads(archive.read("metadata.json"))
        assert [n["id"] for n in meta["negatives"]] == ids
        assert archive.read(f"{ids[0]}.png") == r.content
    # the format field wins over Accept
    f = post_pair(client, image, mask, accept="image/png", format="json")
    assert f.headers["content-type"] == "application/json"


def test_accept_negotiation_refuses_unknown_type(client):
    image, mask = make_pair(3)
    r = post_pair(client, image, mask, accept="text/html")
    assert r.status_code == 406 and r.json()["error"] == "not_acceptable"
    q = post_pair(client, image, mask, accept="application/json;q=0.5, application/zip")
    assert q.headers["content-type"] == "application/zip"


def test_second_identical_request_is_served_from_store(client, fake):
    image, mask = make_pair(4)
    first = post_pair(client, image, mask, num_samples=2)
    assert first.headers["x-cache"] == "miss" and len(fake.calls) == 1
    second = post_pair(client, image, mask, num_samples=2)
    assert second.status_code == 200 and second.headers["x-cache"] == "hit"
    assert len(fake.calls) == 1  # no generation
    assert second.json()["ids"] == first.json()["ids"]
    assert all(n["cached"] for n in second.json()["negatives"])
    # sample 1 of seed 0 is sample 0 of seed 1 (the predictor's seed contract)
    third = post_pair(client, image, mask, seed=1)
    assert third.json()["ids"] == first.json()["ids"][1:] and len(fake.calls) == 1
    metrics = client.get("/metrics").text
    assert "neg_api_store_hits_total 2.0" in metrics


def test_other_parameters_give_other_ids(client):
    image, mask = make_pair(5)
    a = post_pair(client, image, mask).json()["ids"]
    b = post_pair(client, image, mask, strength=0.5).json()["ids"]
    c = post_pair(client, image, mask, steps=10).json()["ids"]
    assert len({a[0], b[0], c[0]}) == 3


def test_corrupt_store_entry_is_detected_and_regenerated(client, fake, caplog):
    image, mask = make_pair(6)
    first = post_pair(client, image, mask, accept="image/png")
    negative_id = first.headers["x-negative-id"]
    store_dir = client.app.state.settings.store_dir
    path = store_dir / negative_id[:2] / f"{negative_id}.png"
    path.write_bytes(path.read_bytes()[:-7] + b"garbage")
    with caplog.at_level(logging.WARNING, logger="api.store"):
        again = post_pair(client, image, mask, accept="image/png")
    assert again.status_code == 200 and again.headers["x-cache"] == "miss"
    assert len(fake.calls) == 2  # regenerated
    assert again.content == first.content  # deterministic: the same bytes come back
    assert path.read_bytes() == first.content  # and the store is repaired
    assert any("corrupt" in rec.message for rec in caplog.records)
    assert "neg_api_store_corrupt_total 1.0" in client.get("/metrics").text


def test_get_corrupt_entry_is_404(client):
    image, mask = make_pair(7)
    negative_id = post_pair(client, image, mask).json()["ids"][0]
    store_dir = client.app.state.settings.store_dir
    (store_dir / negative_id[:2] / f"{negative_id}.json").write_text("{not json")
    r = client.get(f"/negatives/{negative_id}")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_batches_group_compatible_requests(client_factory):
    from concurrent.futures import ThreadPoolExecutor

    from tests.api.fakes import FakeGenerator

    gen = FakeGenerator(delay_s=0.2)
    with client_factory(generator=gen, max_batch=4, max_wait_ms=100) as c:
        pairs = [make_pair(100 + i) for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda p: post_pair(c, *p), pairs))
        assert all(r.status_code == 200 for r in results)
        sizes = [call["batch"] for call in gen.calls]
        assert sum(sizes) == 8 and max(sizes) > 1 and max(sizes) <= 4
        # every answer matches its own input (no mix-up inside a batch)
        for (image, mask), r in zip(pairs, results, strict=True):
            assert r.json()["ids"] == expected_ids(image, mask)


def test_see_through_px_reaches_the_generator_and_keys_the_negatives(client, fake):
    image, mask = make_pair(5)
    plain = post_pair(client, image, mask).json()
    # 0 is "off": the same request, the same ids as before the field existed
    assert post_pair(client, image, mask, see_through_px=0).json()["ids"] == plain["ids"]
    assert plain["ids"] == expected_ids(image, mask)
    r = post_pair(client, image, mask, see_through_px=1.25)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ids"] != plain["ids"]
    assert body["provenance"]["params"]["see_through_px"] == 1.25
    assert fake.calls[-1]["see_through_px"] == 1.25
    bad = post_pair(client, image, mask, see_through_px=-1)
    assert bad.status_code == 422 and "see_through_px" in bad.text
