"""Tiny end-to-end run of the ablation runner: 2 variants, 1 seed, 3 images, 2 training steps."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from finetune.ablation import (
    CachedEncoder,
    cached_segmenter,
    load_ablation_config,
    run_ablation,
)
from shared.benchmark import build_benchmark
from shared.config import ConfigError


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    build_benchmark(out, domains=("breast_us", "chest_xray"), n_per_domain=8, size=64, seed=0)
    return out


def test_config_rejects_unknown_variant():
    with pytest.raises(ConfigError, match="unknown"):
        load_ablation_config({"variants": ["none", "stage3"]})


def test_report_only_before_any_result_says_so(tmp_path):
    from finetune.ablation import main

    with pytest.raises(ConfigError, match="holds no finished .* run the ablation first"):
        main(["--report-only", f"output_dir={tmp_path / 'nothing'}"])  # was: "No such file"
    with pytest.raises(ConfigError, match="holds no finished"):  # overrides on both sides of the
        main([f"output_dir={tmp_path / 'nothing'}", "--report-only", "n_resamples=10"])  # flag
    from finetune.acceptance import main as acceptance_main

    with pytest.raises(ConfigError, match="holds no acceptance.json yet"):
        acceptance_main(["--report-only", "--out", str(tmp_path / "nothing"),
                         "--report", str(tmp_path / "r.md")])
    assert not (tmp_path / "r.md").exists()


def test_presets_load():
    full = load_ablation_config("configs/ablation/full.yaml")
    assert len(full.variants) == 8 and len(full.seeds) >= 3 and full.n_positives >= 150
    small = load_ablation_config("configs/ablation/small.yaml")
    assert len(small.seeds) <= 2 and small.n_positives <= 50


def test_box_fields_default_to_the_base_models_rule(tmp_path):
    """Unset box fields take the base model's family rule (evaluate.BOX_RULES): 4 px per 128 for
    the 8 x 8 model, 12 for the conv-stem one; a field the user names wins, the rest still follow
    the model. The family of a local dir is read from its open_clip_config.json alone."""
    import shutil

    from finetune.build import EMBEDDED_CONVSTEM_DIR
    from finetune.evaluation.loading import clip_family

    eight = load_ablation_config({})
    assert (eight.box_component, eight.box_dilation_px, eight.box_scale) == ("peak", 0, 1.0)
    assert eight.box_dilation_frac == pytest.approx(4 / 128)
    stem = load_ablation_config({"base_model": "embedded-convstem8-pretrained"})
    assert stem.box_dilation_frac == pytest.approx(12 / 128) and stem.box_component == "peak"
    named = load_ablation_config({"base_model": "embedded-convstem8-pretrained",
                                  "box_component": "largest", "box_dilation_frac": 0.0})
    assert (named.box_component, named.box_dilation_frac, named.box_scale) == ("largest", 0.0, 1.0)
    shutil.copy(EMBEDDED_CONVSTEM_DIR / "open_clip_config.json", tmp_path)  # no weights, no text
    assert clip_family(tmp_path) == "embedded-convstem8"
    (tmp_path / "open_clip_config.json").write_text("{not json")  # a one-line error, no traceback
    with pytest.raises(ConfigError, match="open_clip_config.json"):
        load_ablation_config({"base_model": str(tmp_path)})


def test_cached_encoder_runs_once_per_input(tmp_path):
    import torch

    conv = torch.nn.Conv2d(3, 2, 1)
    enc = CachedEncoder(conv, tmp_path)
    x = torch.rand(1, 3, 4, 4)
    y1, y2 = enc(x), enc(x.clone())
    assert enc.calls == 1 and y1 is y2
    enc(x + 1)
    assert enc.calls == 2
    fresh = CachedEncoder(conv, tmp_path)  # another process: read from disk, no forward
    torch.testing.assert_close(fresh(x), y1, rtol=0, atol=0)
    assert fresh.calls == 0


_OTHER_PROCESS = """
import sys, torch
from finetune.ablation import CachedEncoder
torch.manual_seed(0)
CachedEncoder(torch.nn.Conv2d(3, 2, 1), sys.argv[1])(torch.zeros(1, 3, 4, 4))
"""


def test_encoder_cache_survives_another_process_writing_the_same_entry(tmp_path, monkeypatch):
    """Two ablation runs side by side share the embedding cache. Session 32 saw one die with
    'No such file ... .tmp -> .pt' when both wrote one entry: the temp name was per entry, not per
    process. Here a real second process writes the same entry between our save and our replace."""
    import subprocess
    import sys

    import torch

    import shared.io

    real_replace = shared.io.os.replace

    def other_process_then_replace(src, dst):
        subprocess.run([sys.executable, "-c", _OTHER_PROCESS, str(tmp_path)], check=True)
        real_replace(src, dst)

    monkeypatch.setattr(shared.io.os, "replace", other_process_then_replace)
    torch.manual_seed(0)
    enc = CachedEncoder(torch.nn.Conv2d(3, 2, 1), tmp_path)
    y = enc(torch.zeros(1, 3, 4, 4))
    (entry,) = tmp_path.iterdir()  # one entry, no temp file left behind
    assert entry.suffix == ".pt"
    torch.testing.assert_close(torch.load(entry, weights_only=True), y, rtol=0, atol=0)


@pytest.mark.slow  # ~60 s on the shared 2-core machine (LiteMedSAM load, 2 M2IB passes, training)
def test_tiny_end_to_end(tiny_bench, tmp_path, monkeypatch):
    import finetune.ablation as ablation

    segmenters = []

    def counting_segmenter(checkpoint="", cache_dir=""):
        segmenters.append(cached_segmenter(checkpoint, cache_dir))
        return segmenters[-1]

    monkeypatch.setattr(ablation, "cached_segmenter", counting_segmenter)
    cfg = load_ablation_config({
        "bench": str(tiny_bench), "output_dir": str(tmp_path / "abl"),
        "table_path": str(tmp_path / "table.md"), "variants": ["none", "control"],
        "seeds": [0], "n_positives": 3, "steps": 2, "batch_size": 4, "warmup_steps": 1,
        "train_max_items": 8, "n_resamples": 100,
        "negatives_cache_dir": str(tmp_path / "neg"),
        "m2ib": {"layer": 3, "beta": 0.1, "steps": 2, "num_samples": 2, "batch_size": 4},
    })
    report = run_ablation(cfg)
    text = report.read_text()
    assert (tmp_path / "table.md").read_text() == text
    rows = json.loads((tmp_path / "abl" / "rows.json").read_text())
    got = {(r["variant"], r["metric"]) for r in rows}
    metrics = {"dice", "iou", "nsd", "pointing", "faithfulness", "silhouette", "auroc"}
    assert got == ({(ref, m) for ref in ("oracle box (GT)", "centre box")
                    for m in ("dice", "iou", "nsd")}
                   | {(v, m) for v in ("none", "control") for m in metrics})
    res = json.loads((tmp_path / "abl" / "results" / "none__seed0.json").read_text())
    assert res["faithfulness"] == [a - b for a, b in zip(res["lesion_mass"],
                                                         res["lesion_mass_neg_prompt"], strict=True)]
    assert all(0.0 <= v <= 1.0 for v in res["lesion_mass"] + res["lesion_mass_neg_prompt"])
    for r in rows:
        if r["variant"] == "control":
            assert r["delta"]["control"] == [0.0, 0.0, 0.0]  # a variant against itself
            assert set(r["delta"]) == {"none", "control"}
        if r["variant"] == "none":
            assert r["delta"]["none"] == [0.0, 0.0, 0.0]
    assert "| control | dice |" in text and "| oracle box (GT) | dice |" in text
    assert "| centre box | dice |" in text
    # each image encoded once by LiteMedSAM across the oracle pass and both models
    assert segmenters[0].model.image_encoder.calls == 3
    assert (tmp_path / "abl" / "train" / "control" / "seed0" / "model").is_dir()
    # a rerun finds every result done and only re-renders
    assert run_ablation(cfg) == report
    assert segmenters[1].model.image_encoder.calls == 0  # nothing recomputed
    # threads are how a run trains, not what: training gets the process's threads (the demo's two
    # cores), and a rerun with another count reuses every trained variant
    assert "num_threads=2" in ablation.variant_run(dataclasses.replace(cfg, threads=2), "control", 0)[1]
    assert run_ablation(dataclasses.replace(cfg, threads=2)) == report
    # a run saved before a TrainConfig field existed trained as its default: still reused
    saved = tmp_path / "abl" / "train" / "control" / "seed0" / "config.json"
    old = json.loads(saved.read_text())
    from finetune.augment import AugmentConfig

    assert old.pop("wise_early_blocks") == 0  # a top-level field and a nested one
    assert old["augment"].pop("max_shift") == AugmentConfig().max_shift
    saved.write_text(json.dumps(old))
    assert run_ablation(cfg) == report
    # the variant's training recipe changed since (e.g. configs/embedded/control.yaml edited):
    # its export and results are not silently reused
    monkeypatch.setitem(ablation.VARIANTS, "control", ("control.yaml", ("wise_alpha=0.5",)))
    with pytest.raises(ConfigError, match=r"train/control/seed0 was trained with another config "
                                          r"\(differs in \['wise_alpha'\]\)"):
        run_ablation(cfg)


def test_lesion_mass_closed_form():
    from finetune.ablation_eval import lesion_mass

    sal = np.zeros((4, 4))
    sal[0, 0], sal[3, 3] = 3.0, 1.0
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = True
    assert lesion_mass(sal, mask) == pytest.approx(0.75)
    assert lesion_mass(np.zeros((4, 4)), mask) == 0.0


def test_in_domain_protocol_with_an_also_evaluated_domain(tiny_bench, tmp_path):
    """The researcher's protocol: variants fine-tune on breast_us's training split only and are
    evaluated on its test split, the same models on chest_xray (left out: forgetting row) and on
    an external breast set (real ultrasound from outside the benchmark's sources)."""
    from finetune.ablation import eval_targets, load_eval_set

    ext = tmp_path / "ext_breast"
    build_benchmark(ext, domains=("breast_us",), n_per_domain=6, size=64, seed=0, external=True)
    cfg = load_ablation_config({
        "bench": str(tiny_bench), "domain": "breast_us", "protocol": "in_domain",
        "splits": ["test"], "also_domains": ["chest_xray"], "output_dir": str(tmp_path / "abl"),
        "external": [str(ext)],
        "variants": ["none", "control"], "seeds": [0], "n_positives": 2, "steps": 2,
        "batch_size": 4, "warmup_steps": 1, "n_resamples": 50,
        "negatives_cache_dir": str(tmp_path / "neg"),
        "m2ib": {"layer": 3, "beta": 0.1, "steps": 2, "num_samples": 2, "batch_size": 4},
    })
    text = run_ablation(cfg).read_text()
    train_cfg = json.loads((tmp_path / "abl" / "train" / "control" / "seed0" / "config.json")
                           .read_text())
    assert train_cfg["data"]["domains"] == ["breast_us"] and train_cfg["data"]["held_out_domains"] == []
    results = tmp_path / "abl" / "results"
    for folder in (results, results / "also_chest_xray", results / "external_ext_breast"):
        for name in ("oracle", "centre_box", "none__seed0", "control__seed0"):
            assert (folder / f"{name}.json").is_file()
    assert "(test split)" in text and "The same models on `chest_xray`" in text
    assert "The same models on the external set `ext_breast`" in text
    also = json.loads((tmp_path / "abl" / "rows_also.json").read_text())
    assert {r["variant"] for r in also["chest_xray"]} >= {"none", "control", "centre box"}
    assert {r["variant"] for r in also["external_ext_breast"]} >= {"none", "control", "centre box"}
    target = eval_targets(cfg)["external_ext_breast"]  # scored on the external images
    ext_cfg, domain = target.cfg, target.domain
    assert domain == "breast_us" and all(
        p.image_path.resolve().is_relative_to(ext.resolve())
        for p in load_eval_set(ext_cfg, domain).pairs)
    with pytest.raises(ConfigError, match="distinct names"):  # two tables of one name
        load_ablation_config({"external": [str(ext), str(tmp_path / "other" / ext.name)]})
    with pytest.raises(ConfigError, match="splits=\\[test\\]"):
        load_ablation_config({"protocol": "in_domain", "domain": "breast_us"})
    for leaky in (["train"], ["val", "test"]):  # the fine-tuning split, or two splits at once
        with pytest.raises(ConfigError, match="one unseen split"):
            load_ablation_config({"protocol": "in_domain", "domain": "breast_us", "splits": leaky})
    assert load_ablation_config({"protocol": "in_domain", "domain": "breast_us",
                                 "splits": ["val"]}).splits == ("val",)  # choosing a recipe
    with pytest.raises(ConfigError, match="repeats"):
        load_ablation_config({"domain": "breast_us", "also_domains": ["breast_us"]})


def test_dense_saliency_ablation_keeps_m2ib_faithfulness_and_points_with_the_dense_map(
        tiny_bench, tmp_path, monkeypatch):
    """``saliency: dense``: the pipeline prompts LiteMedSAM from the caption-contrast map (its
    pointing is that map's argmax, recomputed here with ``dense_contrast`` and each positive's own
    lesion-free caption), while faithfulness, silhouette and AUROC stay what the M2IB run of the
    same model measures and ``m2ib_pointing`` equals that run's pointing. Fails if the dense run
    kept M2IB's maps, swapped or dropped the negative captions, or let the dense map leak into
    faithfulness."""
    from finetune.ablation import load_eval_set
    from finetune.ablation_eval import eval_config
    from finetune.build import build_clip
    from finetune.evaluation.clip_bundle import bundle_from_open_clip
    from finetune.evaluation.evaluate import saliency_to_coarse
    from finetune.evaluation.saliency_baselines import dense_contrast
    from shared.metrics import dice

    base = {"bench": str(tiny_bench), "domain": "breast_us", "variants": ["none"], "seeds": [0],
            "n_positives": 3, "n_resamples": 50,
            "m2ib": {"layer": 3, "beta": 0.1, "steps": 2, "num_samples": 2, "batch_size": 4}}
    import finetune.ablation as ablation

    real_evaluate = ablation.evaluate_model

    def side_by_side(cfg, *args):  # another run into the same output_dir finishes meanwhile
        (Path(cfg.output_dir) / "timings.json").write_text(json.dumps({"control/1": 2.0}))
        return real_evaluate(cfg, *args)

    monkeypatch.setattr(ablation, "evaluate_model", side_by_side)
    runs = {}
    for sal in ("m2ib", "dense"):
        cfg = load_ablation_config(base | {"saliency": sal, "output_dir": str(tmp_path / sal)})
        text = run_ablation(cfg).read_text()
        runs[sal] = json.loads((tmp_path / sal / "results" / "none__seed0.json").read_text())
    assert "dense caption contrast" in text and "m2ib_pointing" in text
    timings = json.loads((tmp_path / "dense" / "timings.json").read_text())
    assert set(timings) == {"control/1", "none/0"}  # the other run's entry is kept
    m2ib, dense = runs["m2ib"], runs["dense"]
    for key in ("faithfulness", "lesion_mass", "lesion_mass_neg_prompt", "silhouette", "p_pos",
                "p_neg"):
        assert dense[key] == pytest.approx(m2ib[key], abs=1e-6), key
    assert dense["m2ib_pointing"] == m2ib["pointing"] and "m2ib_pointing" not in m2ib
    data = load_eval_set(cfg)
    clip = build_clip(cfg.base_model)
    maps = dense_contrast(bundle_from_open_clip(clip.model, clip.tokenizer), data.pos,
                          [data.prompts.for_image(p.name) for p in data.pairs],
                          [[c] for c in data.captions_neg])
    assert dense["pointing"] == [float(m.flat[int(np.argmax(s))])
                                 for s, m in zip(maps, data.masks, strict=True)]
    ec = eval_config(cfg, "segmenter")
    assert (ec.saliency, ec.binarize, ec.threshold, ec.component) == ("dense", "threshold", 0.7,
                                                                      "peak")
    # the coarse mask LiteMedSAM is prompted from: the dense map above 0.7, peak component
    assert dense["coarse_dice"] == pytest.approx(
        [dice(saliency_to_coarse(s, ec), m) for s, m in zip(maps, data.masks, strict=True)])
    assert dense["coarse_dice"] != pytest.approx(m2ib["coarse_dice"])  # not M2IB's maps
    with pytest.raises(ConfigError, match="saliency='gradcam'"):
        load_ablation_config({"saliency": "gradcam"})
