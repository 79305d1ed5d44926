"""`python -m finetune.evaluate`: a user's mistake is one `error:` line naming the option (exit
status 2) before any data or model is read, never a traceback or a run with other settings."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import finetune.evaluation.cli as cli
from shared.cli import run
from shared.io import write_png
from tests.evaluation.conftest import blob_image


@pytest.fixture
def dataset(tmp_path):
    """A two-image task in the MedCLIP-SAMv2 layout."""
    task = tmp_path / "data" / "toy"
    (task / "test_images").mkdir(parents=True)
    (task / "test_masks").mkdir()
    for i in range(2):
        image, mask = blob_image(20 + i, (40, 40))
        write_png(task / "test_images" / f"case{i}.png", image)
        write_png(task / "test_masks" / f"case{i}.png", mask)
    return task


@pytest.fixture
def files(tmp_path):
    """Broken inputs a user might pass."""
    out = {}
    out["garbage"] = tmp_path / "garbage.pt"
    out["garbage"].write_bytes(np.random.default_rng(0).bytes(2048))
    out["wrong"] = tmp_path / "wrong.pt"
    torch.save({"a": torch.zeros(2)}, out["wrong"])  # a state dict, but of no CLIP
    for name, text in (("brace", "{"), ("empty_cfg", "{}")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "open_clip_config.json").write_text(text)
        out[name] = tmp_path / name
    out["empty_prompts"] = tmp_path / "empty.txt"
    out["empty_prompts"].write_text("# only a comment\n")
    out["keyed_prompts"] = tmp_path / "keyed.txt"
    out["keyed_prompts"].write_text("case0.png | a tumor\n")  # no caption for case1.png
    out["a_file"] = tmp_path / "a_file"
    out["a_file"].write_text("x")
    out["pngs"] = tmp_path / "pngs"  # a folder of images for --adapt-bn
    out["pngs"].mkdir()
    write_png(out["pngs"] / "a.png", blob_image(5)[0])
    out["empty_dir"] = tmp_path / "empty_dir"
    out["empty_dir"].mkdir()
    return out


def _fails(argv, dataset, tmp_path, capsys) -> str:
    """Run the entry point as `python -m finetune.evaluate` does; the one error line."""
    base = ["--model", "embedded", "--data", str(dataset), "--mode", "saliency", "--steps", "1",
            "--samples", "1", "--out", str(tmp_path / "o")]
    if "--prompt-file" not in argv:
        base += ["--prompt", "a tumor"]
    with pytest.raises(SystemExit) as stop:
        run(lambda: cli.main([*base, *argv]))
    err = capsys.readouterr().err
    assert stop.value.code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("argv, says", [
    (["--limit", "-1"], "--limit must be >= 1, got -1"),  # was pairs[:-1]: all but the last
    (["--limit", "0"], "--limit must be >= 1, got 0"),  # blamed the data
    (["--beta", "-1"], "--beta must be > 0"),
    (["--var", "0"], "--var must be > 0"),
    (["--binarize", "threshold", "--threshold", "2"], "--threshold must be in [0, 1)"),
    (["--threshold", "0.5"], "--threshold 0.5 applies to --binarize threshold only"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),  # was ignored
    (["--threads", "-1"], "--threads must be >= 1, got -1"),
    (["--samples", "0"], "--samples must be >= 1"),
    (["--steps", "0"], "--steps must be >= 1"),
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--prompt-kind", "points", "--num-points", "0"], "--num-points must be >= 1"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--device", "cudaa"], "--device 'cudaa' is not a torch device"),
    (["--prompt", ""], "--prompt '': empty prompt"),
    (["--prompt-file", "/nope.txt", "--prompt", "a tumor"], "--prompt and --prompt-file exclude"),
    (["--saliency", "dense", "--neg-prompt", "healthy", "--neg-prompt-file", "/nope.txt"],
     "--neg-prompt and --neg-prompt-file exclude"),
    (["--neg-prompt", "healthy tissue"], "--neg-prompt/--neg-prompt-file apply to --saliency dense"),
    (["--saliency", "dense"], "--saliency dense needs a lesion-free caption for task 'toy'"),
    (["--saliency", "dense", "--neg-prompt", ""], "--neg-prompt '': empty prompt"),
    (["--tsne-baseline", "embeded"], "--tsne-baseline: unknown CLIP source 'embeded'"),
    (["--adapt-bn", "/nope"], "--adapt-bn /nope: no such folder"),
    (["--model", "hf-hub:nonexistent/model"], "--model: hf-hub:nonexistent/model is not in the "
                                              "local Hugging Face cache"),
])
def test_bad_option_is_one_line_before_any_work(dataset, tmp_path, capsys, argv, says):
    err = _fails(argv, dataset, tmp_path, capsys)
    assert says in err
    assert not (tmp_path / "o").exists()  # nothing evaluated, nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_named(dataset, tmp_path, capsys):
    assert "--device cuda: no CUDA GPU is available" in _fails(["--device", "cuda"], dataset,
                                                               tmp_path, capsys)


@pytest.mark.parametrize("argv, says", [
    (["--out", "{a_file}"], "--out {a_file}: not a directory"),
    (["--out", "{a_file}/sub"], "({a_file} is a file)"),
    (["--prompt-file", "/nope.txt"], "--prompt-file: cannot read prompt file /nope.txt"),
    (["--prompt-file", "{empty_prompts}"], "--prompt-file: {empty_prompts}: prompt file has no prompts"),
    (["--prompt-file", "{keyed_prompts}"], "--prompt-file {keyed_prompts}: no prompt for image "
                                           "'case1.png'"),
    (["--model", "ckpt:{garbage}"], "--model: {garbage} is not a usable checkpoint"),
    (["--model", "ckpt:{wrong}"], "--model: {wrong} is not a usable CLIP checkpoint"),
    (["--model", "local-dir:{brace}"], "open_clip_config.json: not a readable open_clip config "
                                       "(JSONDecodeError"),
    (["--model", "local-dir:{empty_cfg}"], "open_clip_config.json: no 'model_cfg'"),
    (["--mode", "segmenter", "--segmenter", "sam_vit_b"], "needs --segmenter-checkpoint"),
    (["--mode", "segmenter", "--segmenter-checkpoint", "/nope.pth"],
     "--segmenter-checkpoint /nope.pth: no such file"),
    (["--mode", "segmenter", "--segmenter", "sam_vit_b", "--segmenter-checkpoint", "{garbage}"],
     "--segmenter sam_vit_b --segmenter-checkpoint {garbage}: SAM vit_b checkpoint {garbage} is "
     "not a usable checkpoint"),
    (["--mode", "segmenter", "--segmenter-checkpoint", "{garbage}"],
     "LiteMedSAM checkpoint {garbage} is not a usable checkpoint"),
    (["--adapt-bn", "{pngs}"], "--adapt-bn: the model's vision tower has no BatchNorm layer"),
    (["--model", "embedded-convstem8", "--adapt-bn", "{empty_dir}"],
     "--adapt-bn: {empty_dir}: no images"),
])
def test_bad_file_is_one_line_naming_the_option(dataset, tmp_path, capsys, files, argv, says):
    fill = {k: str(v) for k, v in files.items()}
    err = _fails([a.format(**fill) for a in argv], dataset, tmp_path, capsys)
    assert says.format(**fill) in err
    assert not (tmp_path / "o").exists()


def test_no_overlays_writes_no_overlays_folder(dataset, tmp_path):
    out = tmp_path / "o"
    summary = cli.main(["--model", "embedded", "--data", str(dataset), "--mode", "saliency",
                        "--saliency", "centre_box", "--no-overlays", "--limit", "1", "--out", str(out)])
    assert summary["n_images"] == 1 and (out / "summary.json").is_file()
    assert not (out / "overlays").exists()


def test_positives_only_that_empties_the_split_is_named(dataset, tmp_path, capsys):
    for mask in (dataset / "test_masks").iterdir():
        write_png(mask, np.zeros((40, 40), bool))
    err = _fails(["--positives-only"], dataset, tmp_path, capsys)
    assert "--positives-only: no image of task 'toy'" in err


def test_hub_models_load_offline_only(monkeypatch):
    """The hub is never contacted at run time: open_clip runs with huggingface_hub offline."""
    import huggingface_hub.constants
    import open_clip

    import finetune.build as build

    seen, before = [], huggingface_hub.constants.is_offline_mode()  # CI exports HF_HUB_OFFLINE=1

    def fake_create(name, device="cpu"):
        seen.append(huggingface_hub.constants.is_offline_mode())
        raise OSError("incomplete cache entry")

    monkeypatch.setattr(build, "_check_hub_cached", lambda hub_id: None)
    monkeypatch.setattr(open_clip, "create_model_from_pretrained", fake_create)
    with pytest.raises(build.ModelSourceError, match="from the local Hugging Face cache"):
        build.build_clip("hf-hub:org/model")
    assert seen == [True] and huggingface_hub.constants.is_offline_mode() == before  # restored


def test_m2ib_refuses_a_beta_that_does_not_compress():
    from finetune.evaluation.m2ib import M2IBConfig, _check
    from tests.evaluation.conftest import make_tiny_clip

    with pytest.raises(ValueError, match="beta must be > 0"):
        _check(make_tiny_clip(), M2IBConfig(layer=1, beta=-1.0))


def test_prompt_and_segmenter_errors_are_user_errors():
    """Other callers of the loaders get a one-line error through shared.cli.run too."""
    from finetune.evaluation.prompts import PromptError
    from finetune.evaluation.segmenters import SegmenterError
    from shared.cli import USER_ERRORS

    assert issubclass(PromptError, USER_ERRORS) and issubclass(PromptError, ValueError)
    assert issubclass(SegmenterError, USER_ERRORS) and issubclass(SegmenterError, ValueError)


def test_local_dir_config_that_is_not_an_object(tmp_path):
    from finetune.build import ModelSourceError, build_clip

    (tmp_path / "open_clip_config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ModelSourceError, match="not a open_clip config: expected a JSON object, got list"):
        build_clip(f"local-dir:{tmp_path}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_saliency_on_cuda_matches_cpu():
    """`--device cuda` ran into a device mismatch (inputs stayed on the CPU); the same maps now."""
    import copy

    from finetune.evaluation.m2ib import M2IBConfig, m2ib_saliency
    from finetune.evaluation.saliency_baselines import cls_attention
    from tests.evaluation.conftest import make_tiny_clip

    cpu = make_tiny_clip()
    gpu = dataclasses.replace(cpu, model=copy.deepcopy(cpu.model).to("cuda"))
    images = [blob_image(1, (40, 48))[0], blob_image(2, (36, 36))[0]]
    cfg = M2IBConfig(layer=1, beta=0.1, steps=2, num_samples=2)
    for a, b in zip(m2ib_saliency(cpu, images, [["a tumor"]] * 2, cfg),
                    m2ib_saliency(gpu, images, [["a tumor"]] * 2, cfg), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)
    for a, b in zip(cls_attention(cpu, images), cls_attention(gpu, images), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-3)
