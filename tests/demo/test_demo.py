"""The main job end to end at smoke size: benchmark, live service, accelerate-launched Stage 1+2
over HTTP, small ablation, report (CI runs this; the full-size demo is `make demo`)."""

import json

import pytest

from demo.__main__ import main


@pytest.mark.slow
def test_demo_smoke_end_to_end(tmp_path, capsys):
    out, bench = tmp_path / "demo", tmp_path / "bench"
    assert main(["--smoke", f"out={out}", f"bench={bench}"]) == 0
    printed = capsys.readouterr().out
    assert f"report: {out / 'report.md'}" in printed
    report = (out / "report.md").read_text()
    for section in ("Negatives from the generator service", "Small ablation", "overlays", "t-SNE",
                    "The same models on `chest_xray`", "Negative utility U on dice",
                    "The evaluation default, zero-shot"):
        assert section in report
    summary = (out / "summary.txt").read_text()
    for row in ("oracle box (GT)", "centre box", "none", "control", "stage1", "stage1+2-gt",
                "stage1+2", "forgetting row", "Negative utility", "default eval model"):
        assert row in summary
    # the evaluation default's row, on both tables, scored on the ablation's own test positives
    for folder in (out.glob("ablation-gen*/results"), out.glob("ablation-gen*/results/also_*")):
        (folder,) = folder
        mine = json.loads((folder / "default_model__seed0.json").read_text())
        none = json.loads((folder / "none__seed0.json").read_text())
        assert len(mine["dice"]) == len(none["dice"]) == 2 and mine["p_pos"] != none["p_pos"]
    # negatives came over HTTP and are exact outside the dilated mask
    stats = json.loads((out / "negatives_sheet.json").read_text())
    assert stats and all(s["outside_mask_max_diff"] == 0 for s in stats)
    assert list((out / "negatives_cache").rglob("*.png"))
    figures = json.loads(next(out.glob("ablation-gen*/figures.json")).read_text())
    assert all((out / p).is_file() for p in figures["overlays"] + figures["tsne_pngs"])
    # the stage1+2 model was trained by the accelerate-launched run and reused by the ablation
    (ablation,) = out.glob("ablation-gen*")
    assert (ablation / "train" / "stage1+2" / "seed0" / "model").is_dir()
    rows = json.loads((ablation / "rows.json").read_text())
    assert {r["variant"] for r in rows} == {"oracle box (GT)", "centre box", "none", "control",
                                            "stage1", "stage1+2-gt", "stage1+2"}
    # in-domain protocol: every variant fine-tuned on the demo domain's training split only
    control = json.loads((ablation / "train" / "control" / "seed0" / "config.json").read_text())
    assert control["data"]["domains"] == ["brain_mri"]


def test_a_mistyped_setting_is_one_error_line():
    """`python -m demo foo=1` / `n_eval=abc` print `error: ...` and exit 2 (was a traceback)."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    for arg, says in (("foo=1", "unknown config key"), ("n_eval=abc", "expected an integer")):
        proc = subprocess.run([sys.executable, "-m", "demo", arg], cwd=repo, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and proc.stderr.startswith("error: ") and says in proc.stderr
        assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("override, says", [
    ("steps=0", "steps must be >= 1, got 0"),  # was: a child process's error after minutes
    ("n_sheet=-1", "n_sheet must be >= 1, got -1"),  # was: one row fewer, rc 0
    ("n_eval=0", "n_eval must be >= 2, got 0"),  # was: "n_positives must be >= 2"
    ("threads=0", "threads must be >= 1, got 0"),  # was: torch's traceback
    ("size=30", "size must be between 32 and 1024"),
    ("domain=chest_xray", "domain='chest_xray': the demo fine-tunes on one of"),
    ("domain=brain", "domain='brain': the demo fine-tunes on one of"),
])
def test_bad_sizes_end_before_any_work(tmp_path, override, says):
    from shared.config import ConfigError

    with pytest.raises(ConfigError, match=says):
        main(["--smoke", f"out={tmp_path / 'o'}", f"bench={tmp_path / 'b'}", override])
    assert not (tmp_path / "o").exists() and not (tmp_path / "b").exists()


def test_the_ablation_folder_follows_the_generator_as_it_runs(tmp_path, monkeypatch):
    """The demo reuses trained models by folder: a change of the classical prior's rule (same
    weights) must start a new folder, not reuse Stage 1+2 models trained on the old negatives (the
    folder was keyed by the weights' directory hash alone)."""
    import generator.kriging as kriging
    from demo.__main__ import SMOKE, ablation_config
    from generator.build import DEFAULT_CHECKPOINT, load_generator

    cfg = SMOKE
    first = ablation_config(cfg, tmp_path).output_dir
    assert f"ablation-gen{load_generator(DEFAULT_CHECKPOINT).checkpoint_hash[:10]}" in first
    monkeypatch.setattr(kriging, "KRIGING_RULE", kriging.KRIGING_RULE + " (changed)")
    assert ablation_config(cfg, tmp_path).output_dir != first


def test_the_default_eval_row_uses_that_models_box_rule():
    """The demo's zero-shot row of the evaluation default keeps the ablation's M2IB settings but
    draws its box by the conv-stem model's rule (12 px per 128, box_rule_val9.md), not by the
    fine-tuned 8 x 8 model's 4."""
    from demo.default_model import default_model_config, load_default_bundle
    from finetune.ablation import load_ablation_config

    abl = load_ablation_config({"bench": "unused"})
    cfg = default_model_config(abl, load_default_bundle())
    assert abl.box_dilation_frac == pytest.approx(4 / 128)
    assert cfg.box_dilation_frac == pytest.approx(12 / 128) and cfg.box_component == "peak"
    assert cfg.m2ib == abl.m2ib and cfg.base_model == abl.base_model
