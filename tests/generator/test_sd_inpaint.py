"""A tiny 9-channel StableDiffusionInpaintPipeline saved to disk and loaded back offline."""

import numpy as np
import pytest

from generator.build import load_generator
from generator.masks import dilate
from generator.modeling.sd_offline import build_tiny_sd

from .conftest import toy_pair


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "pipe")


@pytest.mark.parametrize("rgb", [False, True])
def test_sd_inpaint_backend_loads_offline_and_pastes_back(tiny_sd_dir, rgb):
    gen = load_generator(tiny_sd_dir)
    assert gen.backend.name == "sd-inpaint" and gen.backend.resolution == 32
    assert gen.backend.prompt_embeds.shape == (1, 16, 32)
    image, mask = toy_pair(50, 41, rgb=rgb)
    res = gen.generate([image], [mask], num_samples=2, seed=3, steps=2, dilation_px=2)
    region = dilate(mask, 2)
    for r in res[0]:
        assert r.image.shape == image.shape
        assert np.array_equal(r.image[~region], image[~region])
        assert np.isfinite(r.image).all() and 0 <= r.image.min() and r.image.max() <= 1
    again = gen.generate([image], [mask], num_samples=2, seed=3, steps=2, dilation_px=2)
    assert np.array_equal(again[0][1].image, res[0][1].image)
    assert not np.array_equal(res[0][0].image, res[0][1].image)


def test_sd_inpaint_rejects_a_non_inpainting_unet(tiny_sd_dir, tmp_path):
    import json
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_sd_dir, bad)
    cfg_path = bad / "unet" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["in_channels"] = 4
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(Exception, match="9-channel|size mismatch|shape"):
        load_generator(bad)


def test_unknown_hub_id_fails_offline():
    with pytest.raises(Exception):  # noqa: B017 - diffusers raises OSError/EnvironmentError variants
        load_generator("no-such-org/no-such-inpainting-model")


def test_missing_checkpoint_is_one_config_error_not_a_diffusers_traceback(tmp_path):
    """A path that does not exist (or an id absent from the offline cache) names itself."""
    from generator.build import load_generator
    from shared.config import ConfigError

    with pytest.raises(ConfigError, match="nope: no such checkpoint folder"):
        load_generator(str(tmp_path / "nope"))
