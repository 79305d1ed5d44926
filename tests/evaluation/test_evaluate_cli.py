import csv
import json

import numpy as np
import pytest

import finetune.evaluation.cli as cli
import finetune.evaluation.evaluate as evaluate_mod
from finetune.evaluation.evaluate import EvalConfig, evaluate_dataset
from finetune.evaluation.m2ib import PRESETS, M2IBConfig
from finetune.evaluation.prompts import single_prompt
from shared.datasets import list_pairs
from shared.io import read_image, read_mask, write_png
from tests.evaluation.conftest import blob_image
from tests.evaluation.test_segmenters import _tiny_sam

SIZES = [(48, 48), (40, 64), (56, 36)]


@pytest.fixture
def dataset(tmp_path):
    """MedCLIP-SAMv2 layout: root/toy/test_images|test_masks, mixed sizes, one RGB image."""
    task = tmp_path / "data" / "toy"
    (task / "test_images").mkdir(parents=True)
    (task / "test_masks").mkdir()
    for i, size in enumerate(SIZES):
        image, mask = blob_image(10 + i, size)
        if i == 1:
            image = np.stack([image, image * 0.9, image * 0.8], axis=2)
        write_png(task / "test_images" / f"case {i}.png", image)
        write_png(task / "test_masks" / f"case {i}.png", mask)
    return task


class BoxFill:
    """A 'segmenter' that fills its boxes: oracle Dice then has a closed form."""

    name = "boxfill"

    def __init__(self):
        self.calls = 0

    def segment(self, image, *, boxes=None, points=None):
        self.calls += 1
        out = np.zeros(image.shape[:2], dtype=bool)
        for x0, y0, x1, y1 in boxes:
            out[y0 : y1 + 1, x0 : x1 + 1] = True
        return out


def test_oracle_mode_closed_form(dataset):
    pairs = list_pairs(dataset.parent, "toy", "test")
    res = evaluate_dataset(None, pairs, segmenter=BoxFill(), prompts=None, cfg=EvalConfig(mode="oracle"))
    for r, (i, size) in zip(res.images, enumerate(SIZES), strict=True):
        _, gt = blob_image(10 + i, size)
        ys, xs = np.nonzero(gt)
        box_area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        assert r.score.dice == pytest.approx(2 * gt.sum() / (gt.sum() + box_area))
        assert r.coarse_dice == 1.0 and not r.coarse_empty
    assert res.summary["metrics"]["dice"]["mean"] == pytest.approx(np.mean([r.score.dice for r in res.images]))


def test_ablation_reference_rows_keep_exact_boxes(dataset):
    """The ablation's default box rule dilates saliency boxes (the embedded rule); its oracle row
    must still prompt with the GT box itself, or the upper bound moves with the rule."""
    from finetune.ablation import load_ablation_config
    from finetune.ablation_eval import eval_config, reference_config

    abl = load_ablation_config({})
    assert eval_config(abl, "segmenter").box_dilation_frac > 0  # the rule the reference must drop
    pairs = list_pairs(dataset.parent, "toy", "test")
    res = evaluate_dataset(None, pairs, segmenter=BoxFill(), prompts=None,
                           cfg=reference_config(abl, "oracle"))
    for r, (i, size) in zip(res.images, enumerate(SIZES), strict=True):
        _, gt = blob_image(10 + i, size)
        ys, xs = np.nonzero(gt)
        assert r.boxes == [[xs.min(), ys.min(), xs.max(), ys.max()]]


def test_box_dilation_fraction_follows_the_image_size():
    """4/128 of the longer side: 4 px at 128², 8 px at 256 × 200 (the rule chosen at 128² keeps
    its meaning on a user's larger scans)."""
    from finetune.evaluation.evaluate import prompts_from_mask

    cfg = EvalConfig(box_dilation_frac=4 / 128)
    for shape, grow in (((128, 128), 4), ((200, 256), 8)):
        m = np.zeros(shape, dtype=bool)
        m[50:60, 70:90] = True
        boxes, _ = prompts_from_mask(m, cfg, 0)
        np.testing.assert_array_equal(boxes, [[70 - grow, 50 - grow, 89 + grow, 59 + grow]])
    with pytest.raises(ValueError, match="box dilation"):
        prompts_from_mask(m, EvalConfig(box_dilation_frac=-0.1), 0)


def test_empty_saliency_gives_empty_prediction_counted(dataset, monkeypatch):
    monkeypatch.setattr(evaluate_mod, "compute_saliency",
                        lambda bundle, images, prompts, cfg, first_index=0, neg_prompts=None: [np.zeros(im.shape[:2]) for im in images])
    seg = BoxFill()
    pairs = list_pairs(dataset.parent, "toy", "test")
    res = evaluate_dataset(None, pairs, segmenter=seg, prompts=single_prompt("x"),
                           cfg=EvalConfig(saliency="centre_box"))
    assert seg.calls == 0  # nothing to prompt with: the segmenter is never called (upstream crashes)
    assert res.summary["n_empty_coarse"] == 3 and res.summary["n_empty_prediction"] == 3
    assert all(r.score.dice == 0.0 and r.boxes == [] for r in res.images)


def test_cli_end_to_end_saliency_mode(dataset, tmp_path):
    # one lesion-free image (empty mask) so that t-SNE has negatives
    write_png(dataset / "test_images" / "normal 3.png", np.full((40, 40), 0.3, np.float32))
    write_png(dataset / "test_masks" / "normal 3.png", np.zeros((40, 40), bool))
    csv_path = tmp_path / "cls.csv"
    csv_path.write_text("image_path,class_label,caption\n" + "".join(
        f"{dataset / 'test_images' / n},{lab},{cap}\n" for n, lab, cap in [
            ("case 0.png", "tumor", "a tumor"), ("normal 3.png", "normal", "normal tissue"),
            ("case 2.png", "tumor", "a tumor")]))
    out = tmp_path / "out"
    summary = cli.main([
        "--model", "embedded", "--data", str(dataset), "--mode", "saliency", "--preset", "embedded",
        "--steps", "2", "--samples", "2", "--prompt", "A scan showing a bright tumor.",
        "--out", str(out), "--threads", "1", "--classification-csv", str(csv_path), "--tsne",
    ])
    assert summary["classification"]["n"] == 3 and "tumor" in summary["classification"]["per_class"]
    assert set(summary["tsne"]["model"]) == {"patches", "images"}
    assert (out / "tsne" / "tsne_model_patches.png").is_file()
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert [r["name"] for r in rows] == ["case 0.png", "case 1.png", "case 2.png", "normal 3.png"]
    saved = json.loads((out / "summary.json").read_text())
    assert saved["n_images"] == 4 and saved["task"] == "toy"
    assert saved["metrics"]["dice"]["mean"] == pytest.approx(np.mean([float(r["dice"]) for r in rows]), abs=1e-6)
    assert saved["config"]["m2ib"]["layer"] == PRESETS["embedded"].layer
    assert summary["metrics"] == saved["metrics"]
    assert len(list((out / "overlays").iterdir())) == 4
    assert "| dice |" in (out / "report.md").read_text()


def test_cli_segmenter_mode_with_sam_backend(dataset, tmp_path, monkeypatch):
    from finetune.evaluation.segmenters import SamSegmenter

    monkeypatch.setattr(cli, "build_segmenter", lambda name, ckpt, device="cpu": SamSegmenter(_tiny_sam()))
    out = tmp_path / "out2"
    summary = cli.main([
        "--model", "embedded", "--data", str(dataset.parent), "--task", "toy", "--segmenter", "sam_vit_b",
        "--saliency", "cls_attention", "--prompt-kind", "components", "--num-components", "2",
        "--box-dilation", "3", "--no-overlays", "--out", str(out),
    ])
    assert summary["n_images"] == 3 and summary["segmenter"] == "sam"
    assert summary["config"]["box_dilation_px"] == 3
    assert not (out / "overlays").exists()


def test_missing_mask_is_an_error_naming_the_file(dataset, tmp_path):
    (dataset / "test_masks" / "case 2.png").unlink()
    with pytest.raises(ValueError, match="case 2.png"):
        cli.main(["--data", str(dataset), "--mode", "oracle", "--out", str(tmp_path / "o")])


def test_m2ib_through_evaluate_dataset_matches_direct_call(dataset, tiny_clip):
    from finetune.evaluation.m2ib import m2ib_saliency
    from shared.io import read_image

    cfg = EvalConfig(mode="saliency", m2ib=M2IBConfig(layer=1, beta=0.1, steps=2, num_samples=2, batch_size=2))
    pairs = list_pairs(dataset.parent, "toy", "test")
    res = evaluate_dataset(tiny_clip, pairs, segmenter=None, prompts=single_prompt("a tumor"), cfg=cfg,
                           keep_maps=True)
    direct = m2ib_saliency(tiny_clip, [read_image(p.image_path) for p in pairs], [["a tumor"]] * 3, cfg.m2ib)
    for r, d in zip(res.images, direct, strict=True):
        np.testing.assert_allclose(r.saliency, d, atol=1e-5)


def test_overlays_of_images_sharing_a_stem_are_both_kept(dataset, tmp_path, monkeypatch):
    """a.png and a.tif in one split were both evaluated but overlays/a.png was written twice."""
    from PIL import Image

    image, mask = read_image(dataset / "test_images" / "case 0.png"), read_mask(dataset / "test_masks" / "case 0.png")
    Image.fromarray((image * 255).astype(np.uint8)).save(dataset / "test_images" / "case 0.tif")
    Image.fromarray(mask.astype(np.uint8) * 255).save(dataset / "test_masks" / "case 0.tif")
    monkeypatch.setattr(cli, "build_segmenter", lambda name, ckpt, device="cpu": BoxFill())
    out = tmp_path / "o"
    cli.main(["--data", str(dataset), "--mode", "oracle", "--limit", "2", "--out", str(out)])
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["case 0.png", "case 0.tif.png"]
    # a second run into the same --out leaves no overlay of the first beside its summary
    (out / "notes.txt").write_text("the user's")
    cli.main(["--data", str(dataset), "--mode", "oracle", "--limit", "1", "--out", str(out)])
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["case 0.png"]
    assert (out / "notes.txt").is_file()


def test_cli_positives_only_skips_lesion_free_images(dataset, tmp_path, monkeypatch, capsys):
    write_png(dataset / "test_images" / "normal 3.png", np.full((40, 40), 0.3, np.float32))
    write_png(dataset / "test_masks" / "normal 3.png", np.zeros((40, 40), bool))
    monkeypatch.setattr(cli, "build_segmenter", lambda name, ckpt, device="cpu": BoxFill())
    common = ["--data", str(dataset), "--mode", "oracle", "--no-overlays"]
    every = cli.main([*common, "--out", str(tmp_path / "a")])
    # the lesion-free image is counted and named in a warning (it scores Dice 1 or 0 by itself)
    assert every["n_empty_gt"] == 1 and "1 image(s) have an empty ground-truth" in capsys.readouterr().err
    positives = cli.main([*common, "--positives-only", "--out", str(tmp_path / "b")])
    assert every["n_images"] == 4 and positives["n_images"] == 3 and positives["n_empty_gt"] == 0
    assert "1 of 4 image(s) with an empty mask left out" in capsys.readouterr().err
    # the lesion-free image has an empty GT box -> no prompt -> empty prediction -> Dice 1 (both empty)
    assert every["n_empty_prediction"] == 1


def _one_image_task(tmp_path):
    """A task folder named like a known task (brain_mri) with one test image and its mask."""
    task = tmp_path / "brain_mri"
    (task / "test_images").mkdir(parents=True)
    (task / "test_masks").mkdir()
    image, mask = blob_image(3, (64, 64))
    write_png(task / "test_images" / "a.png", image)
    write_png(task / "test_masks" / "a.png", mask)
    return task


def test_defaults_follow_the_model_on_a_fresh_folder(tmp_path):
    """`python -m finetune.evaluate --data DIR --out OUT` with every default (the conv-stem
    model, M2IB, LiteMedSAM) runs on a folder named like a known task: the embedded models get
    their preset instead of upstream's layer 9 (issue 20: a traceback before), and each its own
    box rule (12 px per 128 for the default's 16 x 16 maps, box_rule_val9.md; 4 for the 8 x 8
    model's, box_rule_val.md)."""
    task = _one_image_task(tmp_path)
    summary = cli.main(["--data", str(task), "--steps", "1", "--samples", "1", "--out",
                        str(tmp_path / "out")])
    assert summary["n_images"] == 1 and summary["segmenter"] == "litemedsam"
    assert summary["model"] == "embedded-convstem8-pretrained"
    assert summary["config"]["m2ib"]["layer"] == PRESETS["embedded"].layer
    assert summary["config"]["m2ib"]["beta"] == PRESETS["embedded"].beta
    assert summary["config"]["component"] == "peak"
    assert summary["config"]["box_dilation_frac"] == pytest.approx(12 / 128)
    # an explicit flag wins over the model's rule, the rest of the rule stays
    summary = cli.main(["--data", str(task), "--steps", "1", "--samples", "1", "--component",
                        "largest", "--out", str(tmp_path / "out2")])
    assert summary["config"]["component"] == "largest"
    assert summary["config"]["box_dilation_frac"] == pytest.approx(12 / 128)
    summary = cli.main(["--data", str(task), "--model", "embedded-pretrained", "--steps", "1",
                        "--samples", "1", "--out", str(tmp_path / "out3")])
    assert summary["config"]["box_dilation_frac"] == pytest.approx(4 / 128)


def test_a_per_dataset_preset_brings_its_own_box_margin(tmp_path):
    """`--preset embedded-brain` sets the M2IB block *and* the margin chosen with it on brain's
    validation split (12 px per 128, box_rule_val6.md); the other per-dataset presets keep the
    global 4; an explicit flag still wins; every preset rule names an M2IB preset."""
    from finetune.evaluation.evaluate import PRESET_BOX_RULES

    assert set(PRESET_BOX_RULES) <= set(PRESETS)
    task = _one_image_task(tmp_path)
    base = ["--data", str(task), "--steps", "1", "--samples", "1"]
    brain = cli.main([*base, "--preset", "embedded-brain", "--out", str(tmp_path / "o1")])["config"]
    assert brain["m2ib"]["layer"] == PRESETS["embedded-brain"].layer
    assert brain["box_dilation_frac"] == pytest.approx(12 / 128) and brain["component"] == "peak"
    breast = cli.main([*base, "--preset", "embedded-breast", "--out", str(tmp_path / "o2")])["config"]
    assert breast["box_dilation_frac"] == pytest.approx(4 / 128)
    flag = cli.main([*base, "--preset", "embedded-brain", "--box-dilation-frac", "0",
                     "--out", str(tmp_path / "o3")])["config"]
    assert flag["box_dilation_frac"] == 0 and flag["m2ib"]["layer"] == PRESETS["embedded-brain"].layer


def test_dense_saliency_through_evaluate_dataset_matches_direct_call(dataset, tiny_clip):
    """saliency "dense": the maps are dense_contrast's with each image's caption and lesion-free
    caption (not swapped: the mirrored map would differ), the coarse mask follows the dense rule
    (threshold 0.7 of the map's range); without negative prompts it is an error naming them."""
    from finetune.evaluation.evaluate import DENSE_BOX_RULE, default_box_rule, saliency_to_coarse
    from finetune.evaluation.saliency_baselines import dense_contrast

    rule = default_box_rule(tiny_clip, "embedded-brain", "dense")
    assert rule == DENSE_BOX_RULE and (rule["binarize"], rule["threshold"]) == ("threshold", 0.7)
    assert default_box_rule(tiny_clip)["binarize"] == "kmeans"  # M2IB keeps 2-means
    cfg = EvalConfig(mode="saliency", saliency="dense", **rule)
    pairs = list_pairs(dataset.parent, "toy", "test")
    res = evaluate_dataset(tiny_clip, pairs, segmenter=None, prompts=single_prompt("a tumor"),
                           neg_prompts=single_prompt("healthy tissue"), cfg=cfg, keep_maps=True)
    images = [read_image(p.image_path) for p in pairs]
    direct = dense_contrast(tiny_clip, images, [["a tumor"]] * 3, [["healthy tissue"]] * 3)
    for r, d in zip(res.images, direct, strict=True):
        np.testing.assert_allclose(r.saliency, d, atol=1e-6)
        assert np.array_equal(r.coarse, saliency_to_coarse(d, cfg))
        assert r.coarse.any() and not r.coarse[d <= 0.7].any()  # the threshold, not 2-means
    with pytest.raises(ValueError, match="negative prompts"):
        evaluate_dataset(tiny_clip, pairs, segmenter=None, prompts=single_prompt("a tumor"), cfg=cfg)


def test_cli_dense_saliency_uses_the_tasks_healthy_caption_and_the_dense_rule(tmp_path):
    """`--saliency dense` on a folder named like a known task reads configs/prompts/
    <task>_healthy.txt and gets the dense rule (threshold 0.7, peak component, 4 px per 128);
    an explicit --binarize still wins."""
    task = _one_image_task(tmp_path)
    base = ["--data", str(task), "--saliency", "dense", "--mode", "saliency"]
    cfg = cli.main([*base, "--out", str(tmp_path / "o1")])["config"]
    assert (cfg["saliency"], cfg["binarize"], cfg["threshold"]) == ("dense", "threshold", 0.7)
    assert cfg["component"] == "peak" and cfg["box_dilation_frac"] == pytest.approx(4 / 128)
    cfg = cli.main([*base, "--binarize", "kmeans", "--neg-prompt", "normal brain",
                    "--out", str(tmp_path / "o2")])["config"]
    assert cfg["binarize"] == "kmeans"


@pytest.mark.parametrize("argv, says", [
    ([], "no text prompt for task 'toy'"),  # a task without a built-in prompt file
    (["--prompt", "a tumor", "--layer", "9"], "pass --layer 0..5"),
    (["--prompt", "a tumor", "--preset", "brain"], "has 6 blocks"),
    (["--prompt", "a tumor", "--box-scale", "0"], "box scale must be > 0"),
    (["--prompt", "a tumor", "--box-dilation-frac", "-0.1"], "box dilation must be >= 0"),
    (["--prompt", "a tumor", "--model", "local-dir:/nope"], "is not an open_clip local dir"),
    (["--prompt", "a tumor", "--classification-csv", "/nope.csv"], "no such classification CSV"),
])
def test_user_mistakes_end_in_one_error_line(dataset, tmp_path, capsys, argv, says):
    """Through the module's entry point: exit status 2 and one `error:` line, no traceback."""
    from shared.cli import run

    with pytest.raises(SystemExit) as stop:
        run(lambda: cli.main(["--model", "embedded", "--data", str(dataset), "--steps", "1", *argv,
                              "--out", str(tmp_path / "o")]))
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("error: ") and says in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_every_embedded_preset_fits_the_committed_model():
    """The embedded presets (global and per domain) name blocks the committed model has, and the
    CLI offers each of them."""
    from finetune.evaluation.loading import load_clip_bundle
    from finetune.evaluation.m2ib import _check, default_config

    bundle = load_clip_bundle("embedded-pretrained")
    names = [n for n in PRESETS if n.startswith("embedded")]
    assert {"embedded", "embedded-brain", "embedded-retina", "embedded-breast"} <= set(names)
    for name in names:
        _check(bundle, PRESETS[name])
        assert cli.parse_args(["--data", "x", "--out", "y", "--preset", name]).preset == name
    assert default_config(bundle) == PRESETS["embedded"]
    conv = load_clip_bundle("embedded-convstem8-pretrained")  # the default model: two fused blocks
    _check(conv, PRESETS["convstem8"])
    assert default_config(conv) == PRESETS["convstem8"]
    assert (PRESETS["convstem8"].layer, PRESETS["convstem8"].fuse_layer) == (3, 1)
    args = ["--data", "x", "--out", "y"]
    assert cli._m2ib_config(cli.parse_args(args), conv).fuse_layer == 1
    one = cli._m2ib_config(cli.parse_args([*args, "--layer", "2"]), conv)  # an explicit block: alone
    assert (one.layer, one.fuse_layer) == (2, None)


def test_classification_csv_is_checked_before_the_run_and_may_carry_a_bom(dataset, tmp_path):
    """A CSV naming a missing image fails before any image is segmented (nothing written); a
    header with a UTF-8 byte-order mark (as spreadsheets save it) is read."""
    bad = tmp_path / "bad.csv"
    bad.write_text("image_path,class_label,caption\nnot_there.png,tumor,a tumor\n")
    out = tmp_path / "o"
    from finetune.evaluation.metrics_report import ClassificationCsvError

    with pytest.raises(ClassificationCsvError, match="bad.csv: row 1: image .*not_there.png does not exist"):
        cli.main(["--model", "embedded", "--data", str(dataset), "--prompt", "a tumor", "--steps", "1",
                  "--out", str(out), "--classification-csv", str(bad)])
    assert not out.exists()  # failed before the run: no model call, no overlay, no table
    bom = tmp_path / "bom.csv"
    bom.write_text("image_path,class_label,caption\n" + "".join(
        f"{dataset / 'test_images' / n},{lab},{cap}\n" for n, lab, cap in [
            ("case 0.png", "tumor", "a tumor"), ("case 1.png", "normal", "normal tissue")]),
        encoding="utf-8-sig")
    summary = cli.main(["--model", "embedded", "--data", str(dataset), "--prompt", "a tumor",
                        "--steps", "1", "--samples", "1", "--out", str(tmp_path / "o2"),
                        "--no-overlays", "--classification-csv", str(bom)])
    assert summary["classification"]["n"] == 2


def test_adapt_bn_re_estimates_the_model_on_the_named_folder(tmp_path, monkeypatch):
    """`--adapt-bn FOLDER`: the evaluated model's BatchNorm statistics come from every image in
    FOLDER (not the evaluated split's), and the summary records the folder."""
    import finetune.evaluation.loading as loading

    task = _one_image_task(tmp_path)
    stats = tmp_path / "target_images"
    stats.mkdir()
    for i in range(3):
        write_png(stats / f"t{i}.png", blob_image(40 + i, (50, 60))[0])
    seen = []
    real = loading.adapt_batchnorm
    monkeypatch.setattr(loading, "adapt_batchnorm",
                        lambda bundle, images: seen.append([i.shape for i in images])
                        or real(bundle, images))
    summary = cli.main(["--data", str(task), "--mode", "saliency", "--steps", "1", "--samples",
                        "1", "--adapt-bn", str(stats), "--out", str(tmp_path / "out")])
    assert seen == [[(50, 60)] * 3]
    assert summary["adapt_bn"] == str(stats)
    summary = cli.main(["--data", str(task), "--mode", "saliency", "--steps", "1", "--samples",
                        "1", "--out", str(tmp_path / "out2")])
    assert summary["adapt_bn"] is None and len(seen) == 1
