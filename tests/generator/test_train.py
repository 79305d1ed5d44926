import json

import pytest

from generator import train
from generator.build import load_generator

from .conftest import toy_pair


def _cfg(tmp_path, small_bench, steps):
    return [
        f"output_dir={tmp_path / 'run'}", f"data.root={small_bench}", "data.held_out_domain=retina",
        "model.resolution=32", "model.block_out_channels=[8, 16]", "model.attention_levels=[]",
        "model.norm_num_groups=4", "model.num_train_timesteps=100", f"optim.steps={steps}",
        "optim.batch_size=2", "optim.checkpoint_every=2", "optim.log_every=1",
        "optim.warmup_steps=1", "optim.crop=16",
    ]


def test_reference_stage_checkpoints_resumes_and_exports(tmp_path, small_bench):
    train.main(["--stage", "reference", *_cfg(tmp_path, small_bench, 2)])
    run = tmp_path / "run"
    ckpts = sorted((run / "checkpoints").glob("checkpoint_*"))
    assert len(ckpts) == 1 and json.loads((ckpts[0] / "step.json").read_text())["step"] == 2
    train.main(["--stage", "reference", "--resume", "latest", *_cfg(tmp_path, small_bench, 4),
                "inference.texture_match=true", "inference.coarse_prior=kriging"])
    ckpts = sorted((run / "checkpoints").glob("checkpoint_*"))
    assert json.loads((ckpts[-1] / "step.json").read_text())["step"] == 4
    meta = json.loads((run / "final" / "generator_config.json").read_text())
    assert meta["steps"] == 4 and meta["train"]["data"]["held_out_domain"] == "retina"
    assert list((run / "logs").rglob("events.out.tfevents.*"))  # TensorBoard
    gen = load_generator(run / "final")
    # the config's inference section is how the export runs (the committed default's is set so)
    assert meta["inference"]["texture_match"] and meta["inference"]["coarse_prior"] == "kriging"
    assert gen.texture_match and gen.coarse_prior == "kriging"
    image, mask = toy_pair(32, 32)
    assert gen.generate([image], [mask], steps=2)[0][0].image.shape == (32, 32)


def test_held_out_domain_cannot_be_trained_on(tmp_path, small_bench):
    with pytest.raises(ValueError, match="held-out"):
        train.main(["--stage", "reference", *_cfg(tmp_path, small_bench, 1),
                    "data.train_domains=[retina]"])


def test_resume_latest_skips_a_checkpoint_killed_mid_save(tmp_path):
    from generator.backends import resolve_checkpoint
    from shared.config import ConfigError
    from shared.io import write_json_atomic

    ckpts = tmp_path / "checkpoints"
    for n in (0, 1, 2, 10):
        (ckpts / f"checkpoint_{n}").mkdir(parents=True)
    write_json_atomic(ckpts / "checkpoint_1" / "step.json", {"step": 4})
    write_json_atomic(ckpts / "checkpoint_2" / "step.json", {"step": 6})
    (ckpts / "checkpoint_10" / "step.json").write_text("")  # kill -9 mid-write (the old writer)
    assert not list(ckpts.rglob("*.tmp"))
    # newest complete by number (2 < 10 though "10" < "2" as text), the incomplete 10 skipped
    assert resolve_checkpoint(tmp_path, "latest", "step.json") == (ckpts / "checkpoint_2", {"step": 6})
    assert resolve_checkpoint(tmp_path, str(ckpts / "checkpoint_1"), "step.json")[1] == {"step": 4}
    with pytest.raises(ConfigError, match="checkpoint_0: not a complete checkpoint folder"):
        resolve_checkpoint(tmp_path, str(ckpts / "checkpoint_0"), "step.json")
    with pytest.raises(ConfigError, match="no complete checkpoint under"):
        resolve_checkpoint(tmp_path / "elsewhere", "latest", "step.json")
