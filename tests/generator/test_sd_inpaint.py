"""A tiny 9-channel StableDiffusionInpaintPipeline saved to disk and loaded back offline."""

import numpy as np
import pytest
import torch

from generator.build import load_generator
from generator.masks import dilate

from .conftest import toy_pair


def _tiny_tokenizer():
    from transformers import CLIPTokenizer

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for tok in letters + [t + "</w>" for t in letters] + [",</w>", ".</w>"]:
        vocab.setdefault(tok, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


@pytest.fixture(scope="module")
def tiny_sd_dir(tmp_path_factory):
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionInpaintPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=16, in_channels=9,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=32,
    )
    tokenizer = _tiny_tokenizer()
    text = CLIPTextModel(CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=len(tokenizer), max_position_embeddings=16, bos_token_id=0, eos_token_id=1,
        pad_token_id=1,
    ))
    pipe = StableDiffusionInpaintPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler(num_train_timesteps=100, steps_offset=1), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    out = tmp_path_factory.mktemp("sd") / "pipe"
    pipe.save_pretrained(out)
    return out


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
