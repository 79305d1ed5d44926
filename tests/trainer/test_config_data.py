"""Config validation, batch schedule, LR schedule, soft masks, data loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from finetune.config import TrainConfig, load_train_config, validate
from finetune.data import load_samples, normalise, soft_mask
from finetune.objectives import stage2_weight
from finetune.train_loop import batch_indices, lr_lambda
from shared.config import ConfigError


def test_warmup_longer_than_run_is_refused():
    cfg = load_train_config({"optim": {"warmup_steps": 10000, "max_steps": 140}})
    with pytest.raises(ConfigError, match="warmup_steps=10000 is not shorter than .*max_steps=140"):
        validate(cfg)


def test_other_refusals_name_the_field():
    with pytest.raises(ConfigError, match="objective.name"):
        validate(load_train_config({"objective": {"name": "nope"}}))
    with pytest.raises(ConfigError, match="needs negatives"):
        validate(load_train_config({"objective": {"name": "stage2"}, "negatives": {"source": "none"}}))
    with pytest.raises(ConfigError, match="batch_size=6"):
        validate(load_train_config({"batch_size": 6, "grad_accum": 4}))
    with pytest.raises(ConfigError, match="negatives.see_through_px"):
        validate(load_train_config({"negatives": {"see_through_px": -1.0}}))
    with pytest.raises(ConfigError, match="unknown config key"):
        load_train_config({"optim": {"warmup": 3}})
    for key in ("grad_accum", "log_every", "num_threads"):  # were ZeroDivision / torch errors
        with pytest.raises(ConfigError, match=f"{key} must be >= 1, got 0"):
            validate(load_train_config({key: 0}))
    with pytest.raises(ConfigError, match="resume='/nope': no such checkpoint folder"):
        validate(load_train_config({"resume": "/nope"}))
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        validate(load_train_config({"output_dir": __file__}))
    for key in ("checkpoint_every", "keep_checkpoints"):  # -1 kept every checkpoint, silently
        with pytest.raises(ConfigError, match=f"{key} must be >= 0"):
            validate(load_train_config({key: -1}))
    validate(load_train_config({"keep_checkpoints": 0}))  # 0 = keep all, documented
    # were accepted (rc 0): a negative decay, a negative clip read as "off", a floor above the peak,
    # a beta torch refuses mid-setup, steps 0 answered 422 by the service mid-run, -1 = all but one
    for bad in ({"optim": {"weight_decay": -1}}, {"optim": {"grad_clip": -1}},
                {"optim": {"min_lr_ratio": 2}}, {"optim": {"betas": [2, 0.9]}}):
        with pytest.raises(ConfigError, match="optim: weight_decay and grad_clip need >= 0"):
            validate(load_train_config(bad))
    for bad in ({"steps": 0}, {"strength": 0}, {"strength": 1.5}, {"dilation_px": -1}):
        with pytest.raises(ConfigError, match="negatives: steps >= 1, strength in"):
            validate(load_train_config({"negatives": bad}))
    with pytest.raises(ConfigError, match="data.max_items must be >= 0"):
        validate(load_train_config({"data": {"max_items": -1}}))
    if not torch.cuda.is_available():  # was: silently full precision on CPU
        with pytest.raises(ConfigError, match="mixed_precision=fp16 needs a CUDA GPU"):
            validate(load_train_config({"mixed_precision": "fp16"}))
    validate(TrainConfig())  # defaults are valid


def test_resume_auto_skips_a_checkpoint_killed_mid_save(tmp_path):
    from finetune.train_loop import _latest_checkpoint, _save

    class OneProcess:  # what _save asks of accelerate's Accelerator
        is_main_process = True

        def save_state(self, path):
            Path(path).mkdir(parents=True)
            (Path(path) / "model.safetensors").write_bytes(b"weights")

        def wait_for_everyone(self):
            pass

    _save(OneProcess(), tmp_path, 2, keep=0)
    assert json.loads((tmp_path / "checkpoints/step_000002/trainer_state.json").read_text()) == {"step": 2}
    assert not list(tmp_path.rglob("*.tmp"))
    killed = tmp_path / "checkpoints/step_000004"  # kill -9 between the weights and the state
    killed.mkdir()
    (killed / "trainer_state.json").write_text("")  # what a non-atomic write could leave
    (tmp_path / "checkpoints/step_000006").mkdir()  # killed inside save_state
    assert _latest_checkpoint(tmp_path) == tmp_path / "checkpoints/step_000002"


def test_train_checks_the_config_before_using_it(tmp_path, capsys):
    from finetune.pretrain_embedded import main
    from finetune.train_loop import train

    # was: torch's "set_num_threads expects a positive integer" before validate ran
    with pytest.raises(ConfigError, match="num_threads must be >= 1, got 0"):
        train(load_train_config({"num_threads": 0, "output_dir": str(tmp_path / "run")}))
    assert not (tmp_path / "run").exists()
    with pytest.raises(SystemExit):  # was: ModelSourceError traceback after argument parsing
        main(["--install-from", str(tmp_path / "no_run")])
    assert "no finished run there" in capsys.readouterr().err


def test_overrides_reach_nested_fields():
    cfg = load_train_config(None, ["optim.lr=0.01", "objective.name=stage1+2", "trainable=[image,text]"])
    assert cfg.optim.lr == 0.01 and cfg.objective.name == "stage1+2"
    assert cfg.trainable == ("image", "text")


def test_batch_indices_cover_each_epoch_once_and_are_deterministic():
    n, b = 10, 4
    stream = np.concatenate([batch_indices(s, n=n, batch_size=b, seed=3) for s in range(5)])
    assert sorted(stream[:10]) == list(range(10))  # epoch 0 is a permutation
    assert sorted(stream[10:20]) == list(range(10))  # epoch 1 too (step 2 straddles both)
    assert not np.array_equal(stream[:10], stream[10:20])
    np.testing.assert_array_equal(batch_indices(2, n=n, batch_size=b, seed=3), stream[8:12])


def test_lr_schedule_warmup_then_cosine():
    f = [lr_lambda(s, warmup=4, total=14, min_ratio=0.1) for s in range(16)]
    assert f[:4] == [0.25, 0.5, 0.75, 1.0]
    assert f[4] == pytest.approx(1.0)
    assert f[9] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway through the cosine
    assert f[14] == pytest.approx(0.1) and f[15] == pytest.approx(0.1)


def test_stage2_curriculum():
    cfg = load_train_config({"objective": {"stage2_weight": 2.0, "stage2_start_frac": 0.2,
                                           "stage2_end_frac": 0.6}}).objective
    w = [stage2_weight(cfg, s, 10) for s in range(11)]
    assert w[:2] == [0.0, 0.0]
    assert w[2] == 0.0 and w[4] == pytest.approx(1.0) and w[6] == 2.0 and w[10] == 2.0


def test_soft_mask_is_patch_area_fraction():
    mask = np.zeros((32, 32), bool)
    mask[0:16, 0:16] = True  # exactly patch (0, 0) of a 2x2 grid
    mask[16:24, 16:32] = True  # half of patch (1, 1)
    torch.testing.assert_close(soft_mask(mask, (2, 2)), torch.tensor([1.0, 0.0, 0.0, 0.5]))


def test_normalise_matches_manual():
    u8 = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)
    out = normalise(u8, mean=(0.5, 0.4, 0.3), std=(0.5, 0.25, 0.1), channels=3)
    assert out.shape == (1, 3, 2, 2)
    torch.testing.assert_close(out[0, 1], (u8[0].float() / 255 - 0.4) / 0.25)


def test_benchmark_samples_skip_held_out_and_other_splits(tiny_bench):
    cfg = load_train_config({"data": {"root": str(tiny_bench)}}).data
    samples = load_samples(cfg)
    assert samples and {s.domain for s in samples} == {"brain_mri", "breast_us"}
    assert all(s.image.shape == (64, 64) and s.mask.dtype == bool for s in samples)
    assert any(not s.is_tumor for s in samples)
    tumors = load_samples(cfg, tumors_only=True)
    assert all(s.is_tumor and s.mask.any() for s in tumors)


def test_unknown_domain_names_are_not_silent(tiny_bench):
    from finetune.data import TrainDataError

    cfg = load_train_config({"data": {"root": str(tiny_bench), "domains": ["brain_mr"]}}).data
    with pytest.raises(TrainDataError, match=r"data.domains names \['brain_mr'\].*brain_mri"):
        load_samples(cfg)
    # a misspelt held-out domain holds nothing out: chest X-rays are trained on, with a warning
    cfg = load_train_config({"data": {"root": str(tiny_bench), "held_out_domains": ["chest_xra"]}}).data
    with pytest.warns(UserWarning, match=r"held_out_domains \['chest_xra'\].*hold nothing out"):
        samples = load_samples(cfg)
    assert "chest_xray" in {s.domain for s in samples}


def test_medclip_layout_keeps_held_out_tasks_out(tiny_bench):
    from finetune.data import TrainDataError

    # the benchmark folder is also a MedCLIP-SAMv2 layout (root/<task>/{split}_images)
    cfg = load_train_config({"data": {"kind": "medclip", "root": str(tiny_bench)}}).data
    assert {s.domain for s in load_samples(cfg)} == {"brain_mri", "breast_us"}  # was: chest too
    cfg = load_train_config({"data": {"kind": "medclip", "root": str(tiny_bench),
                                      "tasks": ["chest_xray"]}}).data
    with pytest.raises(TrainDataError, match=r"data.tasks \['chest_xray'\] are also in"):
        load_samples(cfg)


def test_gt_negatives_as_samples(tiny_bench):
    from shared.io import read_image

    cfg = load_train_config({"data": {"root": str(tiny_bench), "include_gt_negatives": True}}).data
    samples = {s.id: s for s in load_samples(cfg)}
    extra = [s for s in samples.values() if s.id.endswith("#gt_negative")]
    tumors = [s for s in samples.values() if s.is_tumor]
    assert len(extra) == len(tumors) > 0
    for s in extra:
        pos = samples[s.id.removesuffix("#gt_negative")]
        assert not s.is_tumor and not s.mask.any() and s.caption == pos.caption_neg
        np.testing.assert_array_equal(s.image, read_image(pos.gt_negative))
        inside = pos.mask
        assert np.abs(s.image[inside] - pos.image[inside]).mean() > 0  # the lesion is gone
        np.testing.assert_array_equal(s.image[~inside], pos.image[~inside])


def test_dpo_csv_rows_keep_to_the_split_and_out_of_held_out_domains(tiny_bench, tmp_path):
    """Sixth sweep: data.kind=dpo_csv trained on every row — test and val images and the held-out
    chest X-rays included — and looked for negatives only under data.root, so the generator's own
    dpo_pairs.csv (negatives relative to its --out) could not be used."""
    import shutil

    from shared.datasets import DpoRow, write_dpo_csv
    from shared.io import write_png

    root = shutil.copytree(tiny_bench, tmp_path / "bench")  # the fixture is shared: not touched
    images = sorted(p.relative_to(root) for p in root.glob("*/*_images/*.png"))
    assert {p.parts[1] for p in images} >= {"train_images", "test_images"}
    assert "chest_xray" in {p.parts[0] for p in images}
    out = tmp_path / "gen out"
    rows = []
    for i, rel in enumerate(images):
        write_png(out / "negatives" / f"n{i}.png", np.zeros((8, 8), np.float32))
        rows.append(DpoRow(str(rel), f"negatives/n{i}.png", "pos", "neg"))
    rows.append(DpoRow(str(images[0].name), "negatives/n0.png", "pos", "neg"))  # no split folder
    csv = write_dpo_csv(out / "dpo_pairs.csv", rows)
    shutil.copy(root / images[0], root / images[0].name)
    cfg = load_train_config({"data": {"kind": "dpo_csv", "root": str(root), "csv": str(csv)}}).data
    with pytest.warns(UserWarning, match="1 row.* name no {split}_images folder"):
        samples = load_samples(cfg)
    want = {str(p) for p in images if p.parts[1] == "train_images" and p.parts[0] != "chest_xray"}
    assert {s.id for s in samples} == want | {images[0].name}
    for s in samples:  # found beside the CSV, not under data.root
        assert s.csv_negative.parent == out / "negatives" and s.csv_negative.is_file()


def test_a_checkpoint_is_resumed_only_by_the_run_that_made_it(tmp_path):
    """Sixth sweep: a rerun into the same output_dir with another objective and learning rate
    printed "done" after 2 steps on top of the old run's weights, and a shorter max_steps exported
    the longer run's state; two runs at once interleaved their checkpoints."""
    import json as _json

    from finetune.train_loop import _lock, check_resumable
    from shared.config import to_dict

    cfg = load_train_config({"output_dir": str(tmp_path), "optim": {"max_steps": 8}})
    (tmp_path / "config.json").write_text(_json.dumps(to_dict(cfg)))
    check_resumable(cfg, tmp_path, 6, auto=True)  # the same run
    longer = load_train_config({"output_dir": str(tmp_path), "log_every": 3,
                                "optim": {"max_steps": 20}})
    check_resumable(longer, tmp_path, 6, auto=True)  # continued, reporting more often
    other = load_train_config({"output_dir": str(tmp_path), "optim": {"max_steps": 8, "lr": 1e-3},
                               "objective": {"name": "stage1"}})
    with pytest.raises(ConfigError, match=r"other settings \(objective.name: .* -> 'stage1'; "
                                          r"optim.lr: .* -> 0.001\)"):
        check_resumable(other, tmp_path, 6, auto=True)
    check_resumable(other, tmp_path, 6, auto=False)  # an explicit resume=FOLDER is the user's call
    with pytest.raises(ConfigError, match="at step 60, past optim.max_steps=8"):
        check_resumable(cfg, tmp_path, 60, auto=True)
    held = _lock(tmp_path)
    with pytest.raises(ConfigError, match="in use by another run"):
        _lock(tmp_path)
    held.close()
    _lock(tmp_path).close()  # free again once the first run's file is closed


def test_generic_caption_is_the_cli_prompt_of_each_benchmark_domain():
    from finetune.evaluation.cli import PROMPT_DIR
    from finetune.evaluation.prompts import load_prompts
    from shared.benchmark.lesions import MODALITY, caption, generic_caption, sample_lesion

    lesion = sample_lesion("brain_mri", np.random.default_rng(0), np.ones((64, 64), bool))
    for domain in MODALITY:  # every modality's words, one lesion's description
        text = caption(domain, lesion)
        assert len(text) > len(generic_caption(text)) > 0
        file = PROMPT_DIR / f"{domain}.txt"
        if file.is_file():  # what a user of finetune.evaluate scores with
            assert generic_caption(text) == load_prompts(file).default[0]
    assert generic_caption(caption("head_ct", lesion)) == "A head CT showing a brain lesion."
    assert generic_caption("a medical image of liver showing a tumor") is None


def test_generic_captions_replace_only_drawn_positives_and_leave_augmentation_alone(tiny_bench):
    from finetune.augment import AugmentConfig
    from finetune.objectives import NEEDS
    from finetune.train_loop import _micro_batch, _prepare_data
    from shared.benchmark.lesions import generic_caption

    cfg = load_train_config({"data": {"root": str(tiny_bench), "include_gt_negatives": True,
                                      "generic_caption_prob": 1.0}})
    data = _prepare_data(cfg, None, (4, 4), 32)
    assert data.is_tumor.any() and not data.is_tumor.all()
    for text, generic, tumor in zip(data.captions, data.captions_generic, data.is_tumor,
                                    strict=True):
        assert generic == (generic_caption(text) if tumor else text)
    idx = np.arange(len(data))
    norm = {"mean": (0.5,), "std": (0.5,), "channels": 1}
    aug = AugmentConfig(enabled=True)

    def batch(p):
        torch.manual_seed(3)
        return _micro_batch(data, idx, lambda texts: list(texts), norm, NEEDS["clip+dense"],
                            aug, (4, 4), p)

    own, generic = batch(0.0), batch(1.0)
    torch.testing.assert_close(own["pixels"], generic["pixels"])  # same augmentation draws
    assert own["text"] == data.captions  # p = 0: untouched
    for i in idx:  # p = 1: every positive takes its task's caption, others keep their own
        want = data.captions_generic[i] if data.is_tumor[i] else data.captions[i]
        assert generic["text"][i] == want
    assert generic["text_neg"] == own["text_neg"] == data.captions_neg
    half = batch(0.5)["text"]
    tumors = [i for i in idx if data.is_tumor[i]]
    assert {half[i] == data.captions_generic[i] for i in tumors} == {True, False}


def test_generic_captions_refusals_name_the_field():
    with pytest.raises(ConfigError, match="data.generic_caption_prob must be in"):
        validate(load_train_config({"data": {"generic_caption_prob": 1.5}}))
    with pytest.raises(ConfigError, match="generic_caption_prob needs data.kind=benchmark"):
        validate(load_train_config({"data": {"generic_caption_prob": 0.5, "kind": "medclip"}}))
