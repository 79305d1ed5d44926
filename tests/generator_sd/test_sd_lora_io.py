"""LoRA in diffusers' format: save → ``load_lora_weights`` → same outputs; ids cover base + LoRA."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from generator.build import SDInpaintBackend, load_generator
from generator.modeling import sd_inpaint
from tests.api.conftest import make_pair, post_pair, wait_ready
from tests.generator.conftest import save_tiny_pixel, toy_pair

from .conftest import perturb_lora, sd_backend, unet_inputs


@pytest.fixture(scope="module")
def two_loras(tiny_sd_dir, tmp_path_factory):
    """Two different LoRA dirs (rank 4, α 8: scale 2, so a lost α would show) and their backends."""
    root = tmp_path_factory.mktemp("loras")
    out = []
    for seed in (1, 2):
        backend = sd_backend(tiny_sd_dir, need_reference=False, lora_alpha=8.0)
        perturb_lora(backend, scale=0.1, seed=seed)
        backend.save(root / f"lora{seed}", {"seed": seed})
        out.append((root / f"lora{seed}", backend))
    return out


def test_saved_lora_loads_with_diffusers_and_gives_identical_outputs(tiny_sd_dir, two_loras):
    lora_dir, backend = two_loras[0]
    meta = json.loads((lora_dir / "generator_lora.json").read_text())
    assert meta["base"] == str(tiny_sd_dir) and meta["seed"] == 1
    pipe = sd_inpaint.load_pipeline(tiny_sd_dir)
    pipe.load_lora_weights(str(lora_dir))
    x_t, cond, t = unet_inputs(backend)
    with torch.no_grad():
        trained = backend.predict(x_t, cond, t)
        loaded = pipe.unet(torch.cat([x_t, cond], 1), t,
                           encoder_hidden_states=backend.prompt_embeds.expand(2, -1, -1)).sample
        base = backend.predict_reference(x_t, cond, t)
    assert torch.equal(loaded, trained)
    assert not torch.equal(loaded, base)  # the LoRA does something
    # whole sampler: the trained pipeline vs base + LoRA as the service loads it
    image, mask = toy_pair(32, 32)
    served = load_generator(tiny_sd_dir, lora=lora_dir)
    live = load_generator(tiny_sd_dir)
    live.backend = SDInpaintBackend(backend.pipe)
    a = served.generate([image], [mask], num_samples=1, seed=5, steps=3)[0][0].image
    b = live.generate([image], [mask], num_samples=1, seed=5, steps=3)[0][0].image
    np.testing.assert_array_equal(a, b)


def test_generator_hash_covers_base_and_lora(tiny_sd_dir, two_loras, tmp_path):
    (lora1, _), (lora2, _) = two_loras
    base = load_generator(tiny_sd_dir).checkpoint_hash
    h1 = load_generator(tiny_sd_dir, lora=lora1).checkpoint_hash
    h2 = load_generator(tiny_sd_dir, lora=lora2).checkpoint_hash
    assert len({base, h1, h2}) == 3
    assert load_generator(tiny_sd_dir, lora=lora1).checkpoint_hash == h1  # deterministic
    assert load_generator(lora1).checkpoint_hash == h1  # a LoRA dir names its base
    with pytest.raises(ValueError, match="takes no LoRA"):
        load_generator(save_tiny_pixel(tmp_path / "pixel"), lora=lora1)
    with pytest.raises(ValueError, match="not a diffusers LoRA"):
        load_generator(tiny_sd_dir, lora=tmp_path)


def test_service_serves_base_plus_lora_and_the_id_follows_the_lora(tiny_sd_dir, two_loras,
                                                                   tmp_path, monkeypatch):
    from api.main import create_app
    from api.settings import Settings

    (lora1, _), (lora2, _) = two_loras
    image, mask = make_pair(0)
    answers = {}
    for name, lora in (("base", ""), ("lora1", str(lora1)), ("lora2", str(lora2))):
        monkeypatch.setenv("NEG_API_GENERATOR_LORA", lora)  # also checks the env name
        settings = Settings(generator=str(tiny_sd_dir), store_dir=tmp_path / "store",
                            max_wait_ms=1.0, torch_threads=1)
        assert settings.generator_lora == (lora or None)
        with TestClient(create_app(settings)) as client:
            wait_ready(client, timeout=60)
            r = post_pair(client, image, mask, accept="application/json", seed=0, steps=2,
                          num_samples=1)
            assert r.status_code == 200, r.text
            answers[name] = (r.json(), client.get("/readyz").json()["checkpoint"])
    ids = {k: v[0]["negatives"][0]["id"] for k, v in answers.items()}
    assert len(set(ids.values())) == 3
    assert answers["lora1"][1] == load_generator(tiny_sd_dir, lora=lora1).checkpoint_hash
    assert answers["base"][1] == load_generator(tiny_sd_dir).checkpoint_hash
