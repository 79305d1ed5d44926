"""The service with a real generator loaded by ``generator.build.load_generator``.

A tiny pixel checkpoint is built through the generator's own builders and saved in the real
on-disk layout, then served via ``NEG_API_GENERATOR``; the embedded default (committed weights)
is served too once it exists.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from api.main import create_app
from generator.build import DEFAULT_CHECKPOINT, save_pixel_checkpoint
from generator.masks import dilate
from generator.modeling import pixel_unet
from shared.io import decode_image, decode_mask
from tests.api.conftest import make_pair, post_pair, wait_ready

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    cfg = pixel_unet.PixelUNetConfig(
        resolution=16, block_out_channels=(8, 16), attention_levels=(), norm_num_groups=4,
        coarse_levels=3,
    )
    return save_pixel_checkpoint(tmp_path_factory.mktemp("ckpt") / "pixel", pixel_unet.build_unet(cfg),
                                 cfg, fp16=False)


def _check_served(client, *, steps: int = 2) -> None:
    image, mask = make_pair(11, size=(40, 40))
    r = post_pair(client, image, mask, accept="image/png", steps=steps, num_samples=2,
                  dilation_px=2)
    assert r.status_code == 200, r.text
    out = decode_image(r.content)
    img, m = decode_image(image), decode_mask(mask)
    outside = ~dilate(m, 2)
    np.testing.assert_array_equal(out[outside], img[outside])  # the predictor's paste-back
    assert not np.array_equal(out[m], img[m])  # the lesion was replaced
    again = post_pair(client, image, mask, accept="image/png", steps=steps, num_samples=2,
                      dilation_px=2)
    assert again.headers["x-cache"] == "hit" and again.content == r.content


def test_service_loads_a_pixel_checkpoint_directory(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("NEG_API_GENERATOR", str(tiny_checkpoint))
    monkeypatch.setenv("NEG_API_STORE_DIR", str(tmp_path / "store"))
    monkeypatch.setenv("NEG_API_TORCH_THREADS", "1")
    with TestClient(create_app()) as client:
        wait_ready(client, timeout=60)
        ready = client.get("/readyz").json()
        assert len(ready["checkpoint"]) == 64
        _check_served(client)
    # a fresh service (other store, same checkpoint) reproduces the bytes: determinism
    monkeypatch.setenv("NEG_API_STORE_DIR", str(tmp_path / "store2"))
    with TestClient(create_app()) as client:
        wait_ready(client, timeout=60)
        image, mask = make_pair(11, size=(40, 40))
        r = post_pair(client, image, mask, accept="image/png", steps=2, num_samples=2,
                      dilation_px=2)
        stored = (tmp_path / "store" / r.headers["x-negative-id"][:2]
                  / f"{r.headers['x-negative-id']}.png").read_bytes()
        assert r.headers["x-cache"] == "miss" and r.content == stored


@pytest.mark.slow  # ~30 s: a fresh process imports torch and loads the model
@pytest.mark.skipif(not DEFAULT_CHECKPOINT.is_dir(),
                    reason="the embedded default generator/weights/pixel_reference is not committed yet")
def test_python_m_api_serves_the_embedded_default(tmp_path):
    """`python -m api` as a process on 127.0.0.1 with the embedded default."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "NEG_API_PORT": str(port), "NEG_API_HOST": "127.0.0.1",
           "NEG_API_STORE_DIR": str(tmp_path / "store"), "NEG_API_TORCH_THREADS": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("NEG_API_GENERATOR", None)
    proc = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "python -m api never became ready"
                time.sleep(0.2)
            _check_served(client, steps=4)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
