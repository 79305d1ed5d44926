"""Statistics of the ablation table: AUROC closed form, paired CIs, table rows."""

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from finetune.ablation_report import auroc, build_rows, paired_auroc_ci, render_table


def _run(rng, n_pos=20, n_neg=30, shift=0.0):
    return {"dice": rng.uniform(size=n_pos).tolist(), "iou": rng.uniform(size=n_pos).tolist(),
            "nsd": rng.uniform(size=n_pos).tolist(),
            "pointing": rng.integers(0, 2, n_pos).astype(float).tolist(),
            "silhouette": rng.uniform(-1, 1, n_pos).tolist(),
            "p_pos": (rng.uniform(size=n_pos) + shift).tolist(),
            "p_neg": rng.uniform(size=n_neg).tolist()}


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 40) / 4, rng.integers(0, 5, 60) / 4  # many ties
    want = roc_auc_score(np.r_[np.ones(40), np.zeros(60)], np.r_[pos, neg])
    assert auroc(pos, neg) == pytest.approx(want, abs=1e-12)


def test_paired_auroc_self_is_exactly_zero_and_point_is_difference():
    rng = np.random.default_rng(1)
    a = [(rng.uniform(size=15) + 0.3, rng.uniform(size=25)) for _ in range(2)]
    b = [(rng.uniform(size=15), rng.uniform(size=25))]
    assert paired_auroc_ci(a, a, n_resamples=200) == (0.0, 0.0, 0.0)
    diff, lo, hi = paired_auroc_ci(a, b, n_resamples=500)
    want = np.mean([auroc(*s) for s in a]) - auroc(*b[0])
    assert diff == pytest.approx(want, abs=1e-12)
    assert lo <= diff <= hi


def test_paired_auroc_bootstrap_resample_equals_direct_auroc():
    # a single resample's weighted kernel mean must equal the AUROC of the resampled scores
    rng = np.random.default_rng(2)
    pos, neg = rng.uniform(size=12), rng.uniform(size=9)
    ip, jn = rng.integers(0, 12, 12), rng.integers(0, 9, 9)
    wp, wn = np.bincount(ip, minlength=12), np.bincount(jn, minlength=9)
    k = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    assert wp @ k @ wn / (12 * 9) == pytest.approx(auroc(pos[ip], neg[jn]), abs=1e-12)


def test_paired_auroc_rejects_unpaired_inputs():
    a = [(np.zeros(3), np.zeros(4))]
    with pytest.raises(ValueError, match="same positives"):
        paired_auroc_ci(a, [(np.zeros(3), np.zeros(5))])


def test_rows_self_delta_zero_and_seed_averaging():
    rng = np.random.default_rng(3)
    results = {"none": {0: _run(rng)}, "control": {0: _run(rng), 1: _run(rng)},
               "stage1+2": {0: _run(rng, shift=0.5)}}
    oracle = {"dice": [0.9, 0.8], "iou": [0.8, 0.7], "nsd": [1.0, 0.9]}
    rows = build_rows(results, {"oracle box (GT)": oracle}, n_resamples=200)
    by = {(r["variant"], r["metric"]): r for r in rows}
    assert by[("oracle box (GT)", "dice")]["mean"] == pytest.approx(0.85)
    for m in ("dice", "iou", "nsd", "pointing", "silhouette", "auroc"):
        assert by[("none", m)]["delta"]["none"] == (0.0, 0.0, 0.0)
        assert by[("control", m)]["delta"]["control"] == (0.0, 0.0, 0.0)
    # control vs none on Dice: per-image mean over the two seeds, minus none's
    ctrl = (np.asarray(results["control"][0]["dice"]) + results["control"][1]["dice"]) / 2
    want = float(np.mean(ctrl - np.asarray(results["none"][0]["dice"])))
    assert by[("control", "dice")]["delta"]["none"][0] == pytest.approx(want, abs=1e-12)
    assert len(by[("control", "auroc")]["seeds"]) == 2
    assert by[("stage1+2", "auroc")]["delta"]["none"][0] > 0  # shifted positive scores
    table = render_table(rows)
    assert table.count("\n") == len(rows) + 1
    assert "| control | dice |" in table


def test_negative_utility_closed_form():
    """Generated gains half of what GT negatives gain over Stage 1: U = 0.5 exactly (every
    resample too, since the per-image gains are proportional); a missing variant gives None."""
    from finetune.ablation_report import negative_utility

    rng = np.random.default_rng(0)
    s1 = rng.uniform(size=30)
    gain = rng.uniform(0.1, 0.3, size=30)
    runs = {"stage1": {0: {"dice": s1.tolist()}},
            "stage1+2-gt": {0: {"dice": (s1 + gain).tolist()}, 1: {"dice": (s1 + gain).tolist()}},
            "stage1+2": {0: {"dice": (s1 + 0.5 * gain).tolist()}}}
    u, lo, hi = negative_utility(runs, "dice", n_resamples=200)
    assert u == pytest.approx(0.5) and lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    assert negative_utility({k: v for k, v in runs.items() if k != "stage1"}, "dice") is None


def test_negative_utility_pairs_each_form_with_its_own_twin():
    """U of the text form divides by the text form's exact-negative gain, not the hinge's: with
    the hinge's GT gain 4 × the text's, a text-generated run at the text GT's level is U = 1 (a
    denominator taken from the wrong twin would give 0.25); the report names the pair."""
    from finetune.ablation import UTILITY_PAIRS
    from finetune.ablation_report import negative_utility, render_report

    rng = np.random.default_rng(1)
    s1 = rng.uniform(size=25)
    gain = rng.uniform(0.05, 0.1, size=25)
    run = lambda x: {0: {"dice": x.tolist()}}  # noqa: E731
    runs = {"stage1": run(s1), "stage1+2-gt": run(s1 + 4 * gain),
            "stage1+2-text-gt": run(s1 + gain), "stage1+2-text": run(s1 + gain)}
    assert ("stage1+2-text", "stage1+2-text-gt") in UTILITY_PAIRS
    u = negative_utility(runs, "dice", generated="stage1+2-text", gt="stage1+2-text-gt",
                         n_resamples=100)
    assert u == pytest.approx((1.0, 1.0, 1.0))
    assert negative_utility(runs, "dice", n_resamples=100) is None  # no hinge-generated run
    meta = {"domain": "d", "splits": ["test"], "command": "c", "steps": 1, "batch_size": 1,
            "base_model": "m", "seeds": [0], "n_pos": 25, "n_neg": 0, "completed": {},
            "n_resamples": 100, "timings_s": {},
            "utility": [("stage1+2-text", "stage1+2-text-gt", "dice", u)]}
    text = render_report([], meta)
    assert ("Negative utility U on dice = (stage1+2-text − stage1) / (stage1+2-text-gt − stage1): "
            "+1.00") in text


def test_ablation_pairs_reads_every_variant_and_seed(tmp_path, capsys):
    """bench/ablation_pairs.py: ``stage1+2-gt__seed2.json`` is variant ``stage1+2-gt`` seed 2 (not
    ``stage1+2``), seeds are averaged per image before the paired difference, a side written
    ``FOLDER/VARIANT`` is read from that folder, ``--pool`` concatenates another evaluation set's
    images, and a pair with an unfinished variant is refused in one line."""
    from bench.ablation_pairs import load_results, main

    rng = np.random.default_rng(0)
    base = rng.uniform(size=20)
    per = {"stage1+2__seed0": base, "stage1+2__seed1": base + 0.2, "stage1+2-gt__seed2": base}
    for name, dice in per.items():
        p_pos, p_neg = rng.uniform(size=20).tolist(), rng.uniform(size=5).tolist()
        (tmp_path / f"{name}.json").write_text(json.dumps({
            "dice": dice.tolist(), "pointing": dice.tolist(), "faithfulness": dice.tolist(),
            "p_pos": p_pos, "p_neg": p_neg}))
    (tmp_path / "oracle.json").write_text("{}")
    res = load_results(tmp_path)
    assert {v: sorted(s) for v, s in res.items()} == {"stage1+2": [0, 1], "stage1+2-gt": [2]}
    assert main([str(tmp_path), "stage1+2:stage1+2-gt"]) == 0
    dice_line = [ln for ln in capsys.readouterr().out.splitlines() if ", dice:" in ln][0]
    assert "+0.100 [+0.100, +0.100] *" in dice_line  # seeds averaged: (0 + 0.2) / 2
    with pytest.raises(SystemExit):
        main([str(tmp_path), "stage1+2:control"])
    # a side "FOLDER/VARIANT" comes from another results folder (here its control = base + 0.3)
    other = tmp_path / "other"
    other.mkdir()
    (other / "control__seed0.json").write_text(json.dumps({
        "dice": (base + 0.3).tolist(), "pointing": base.tolist(), "faithfulness": base.tolist(),
        "p_pos": p_pos, "p_neg": p_neg}))
    assert main([str(tmp_path), f"{other}/control:stage1+2-gt"]) == 0
    dice_line = [ln for ln in capsys.readouterr().out.splitlines() if ", dice:" in ln][0]
    assert "+0.300 [+0.300, +0.300] *" in dice_line
    with pytest.raises(SystemExit):
        main([str(tmp_path), f"{other}/stage1+2:stage1+2-gt"])
    # --pool: a second evaluation set of the same models, pooled image by image; there
    # stage1+2 − stage1+2-gt = −0.3 on 20 images, here +0.1 on 20 -> pooled −0.1
    draw2 = tmp_path / "draw2"
    draw2.mkdir()
    y = rng.uniform(size=20)
    for name, dice in {"stage1+2__seed0": y, "stage1+2__seed1": y, "stage1+2-gt__seed2": y + 0.3,
                       "control__seed0": y}.items():
        (draw2 / f"{name}.json").write_text(json.dumps({
            "dice": dice.tolist(), "pointing": dice.tolist(), "faithfulness": dice.tolist(),
            "p_pos": p_pos, "p_neg": p_neg}))
    assert main([str(tmp_path), "stage1+2:stage1+2-gt", "--pool", str(draw2)]) == 0
    dice_line = [ln for ln in capsys.readouterr().out.splitlines() if ", dice:" in ln][0]
    assert dice_line.split(": ")[1].startswith("-0.100 [")
    with pytest.raises(SystemExit):  # control is not finished in the positional folder
        main([str(tmp_path), "stage1+2:control", "--pool", str(draw2)])
    with pytest.raises(SystemExit):  # a side from another folder cannot be pooled
        main([str(tmp_path), f"{other}/control:stage1+2-gt", "--pool", str(draw2)])


def test_wise_alpha_sweep_recovers_the_line_from_one_export():
    """bench/wise_alpha_sweep.py: from θ0 and the export θ_0.3 = θ0 + 0.3 (θ − θ0) (the trainer's
    own interpolate_weights), α' = 1 gives the fine-tune θ and α' = 0.6 the trainer's θ_0.6; an
    integer buffer is the export's. Fails if the ratio α'/α is inverted or α' used unscaled."""
    import torch

    from bench.wise_alpha_sweep import reweighted_state
    from finetune.train_loop import interpolate_weights
    from shared.config import ConfigError

    g = torch.Generator().manual_seed(0)
    start = {"w": torch.randn(5, 3, generator=g), "n": torch.tensor(7)}
    tuned = {"w": start["w"] + torch.randn(5, 3, generator=g), "n": torch.tensor(9)}
    exported = interpolate_weights(start, tuned, 0.3)
    full = reweighted_state(start, exported, 0.3, 1.0)
    torch.testing.assert_close(full["w"], tuned["w"], rtol=0, atol=1e-5)
    torch.testing.assert_close(reweighted_state(start, exported, 0.3, 0.6)["w"],
                               interpolate_weights(start, tuned, 0.6)["w"], rtol=0, atol=1e-5)
    assert int(full["n"]) == 9
    with pytest.raises(ConfigError, match="WiSE-FT"):
        reweighted_state(start, exported, 0.0, 1.0)


def test_soup_clip_writes_the_interpolated_model(tmp_path):
    """bench/soup_clip.py: the soup loaded back is θ_a + α (θ_b − θ_a) tensor by tensor (a
    wrong direction, a dropped upcast of the fp16 endpoint or a lost tensor fails it); two
    architectures are refused."""
    import torch

    from bench.soup_clip import soup
    from finetune.build import build_clip
    from finetune.export import export_local_dir

    b = build_clip("embedded-convstem8")  # random init: an endpoint unlike the committed one
    export_local_dir(b.model, b.tokenizer, b.model_cfg, tmp_path / "b")
    sa = build_clip("embedded-convstem8-pretrained").model.state_dict()
    sb = build_clip(f"local-dir:{tmp_path / 'b'}").model.state_dict()
    out = soup("embedded-convstem8-pretrained", f"local-dir:{tmp_path / 'b'}", 0.25, tmp_path / "s")
    ss = build_clip(f"local-dir:{out}").model.state_dict()
    assert ss.keys() == sa.keys()
    floats = [k for k in ss if ss[k].is_floating_point()]
    assert floats and all(ss[k].dtype == torch.float32 for k in floats)
    for k in floats:
        want = sa[k].float() + 0.25 * (sb[k].float() - sa[k].float())
        assert torch.allclose(ss[k], want, atol=1e-6), k
    assert any(not torch.equal(sa[k].float(), sb[k].float()) for k in floats)
    with pytest.raises(ValueError, match="different architectures"):
        soup("embedded-pretrained", "embedded-convstem8-pretrained", 0.5, tmp_path / "x")


def test_external_sets_keep_two_sets_of_one_domain_apart(tmp_path):
    """bench scripts' --external DOMAIN=DIR: a domain's single set keeps the plain label (the
    recorded reports' rows), two sets of one domain are labelled and filed by folder (labelling
    by domain alone would merge them into one row); a spec without '=' and a folder without a
    benchmark manifest are refused up front."""
    from bench.bench_clip_protocol import external_sets

    t1, us, t2 = (tmp_path / n for n in ("t1", "us", "t2"))
    for d in (t1, us, t2):
        d.mkdir()
        (d / "manifest.jsonl").write_text("")
    sets = external_sets([f"brain_mri={t1}", f"breast_us={us}", f"brain_mri={t2}"], print)
    assert sets == [("brain_mri", str(t1), "brain_mri (external t1)", "t1"),
                    ("breast_us", str(us), "breast_us (external)", ""),
                    ("brain_mri", str(t2), "brain_mri (external t2)", "t2")]
    errors = []
    external_sets(["brain_mri", f"breast_us={tmp_path / 'missing'}"], errors.append)
    assert errors == ["--external 'brain_mri': expected DOMAIN=DIR",
                      f"--external 'breast_us={tmp_path / 'missing'}': no benchmark manifest in "
                      f"{tmp_path / 'missing'} (build it with python -m shared.benchmark --external)"]


def test_fused_saliency_rule_clauses():
    """bench/diag_fused_saliency.py's rule, clause by clause on hand-made rates: (a) one training
    domain more than 0.05 below the baseline, (b) held-out mean gain under +0.05, (c) one held-out
    set more than 0.05 below; a candidate with none of these is eligible. The fusions are the
    elementwise mean and product."""
    from bench.diag_fused_saliency import TRAINING, fuse, judge

    held = ["chest_xray", "t2"]
    base = {**{d: 0.8 for d in TRAINING}, "chest_xray": 0.1, "t2": 0.2}
    good = {**base, "t2": 0.35}  # held-out mean +0.075, nothing below
    assert judge(good, base, held) == []
    assert judge({**good, TRAINING[0]: 0.74}, base, held) == ["a"]
    assert judge({**good, "t2": 0.29}, base, held) == ["b"]
    assert judge({**good, "chest_xray": 0.04, "t2": 0.5}, base, held) == ["c"]
    a, b = np.array([[0.0, 1.0]]), np.array([[1.0, 0.5]])
    maps = fuse(a, b)
    np.testing.assert_allclose(maps["mean"], [[0.5, 0.75]])
    np.testing.assert_allclose(maps["product"], [[0.0, 0.5]])


def test_reweighted_state_puts_back_only_the_stem_and_the_first_blocks():
    """bench/wise_alpha_sweep.py --early-blocks 2 (the trainer's ``wise_early_blocks``): the trunk's input layers and blocks 0, 1 are
    θ0; block 10 (a prefix test would take it for block 1), block 2, the trunk's final norm, the
    head and the text tower stay on the α' line. Fails on an off-by-one in the block bound or a
    name match that is not per component."""
    import torch

    from bench.wise_alpha_sweep import reweighted_state

    keys = ["visual.trunk.patch_embed.backbone.0.conv.weight", "visual.trunk.cls_token",
            "visual.trunk.pos_embed", "visual.trunk.blocks.0.attn.qkv.weight",
            "visual.trunk.blocks.1.mlp.fc1.weight", "visual.trunk.blocks.2.mlp.fc1.weight",
            "visual.trunk.blocks.10.mlp.fc1.weight", "visual.trunk.norm.weight",
            "visual.head.proj.weight", "text.transformer.embeddings.weight"]
    g = torch.Generator().manual_seed(0)
    start = {k: torch.randn(4, generator=g) for k in keys}
    exported = {k: v + torch.randn(4, generator=g) for k, v in start.items()}
    line = reweighted_state(start, exported, 0.3, 0.3)
    out = reweighted_state(start, exported, 0.3, 0.3, 2)
    early = set(keys[:5])
    for k in keys:
        torch.testing.assert_close(out[k], start[k] if k in early else line[k], rtol=0, atol=0)
    assert all(torch.equal(a, b) for a, b in zip(reweighted_state(start, exported, 0.3, 0.3, 0).values(),
                                                  line.values(), strict=True))


def test_wise_alpha_sweep_copies_results_only_from_the_same_eval_set(tmp_path):
    """Results of an ablation evaluated on the test split (or with another readout) are not copied
    into a sweep on the val split (a ``none`` measured on other images, or read another way, would
    be paired with the new rows); which variants or seeds it ran does not matter."""
    from bench.wise_alpha_sweep import _same_eval_set
    from finetune.ablation import load_ablation_config
    from shared.config import to_dict

    cfg = load_ablation_config(str(Path(__file__).resolve().parents[2] / "configs/ablation/negatives.yaml"),
                               ["domain=breast_us", "also_domains=[]", "splits=[test]"])
    recorded = tmp_path / "ablation_config.json"
    assert not _same_eval_set(cfg, recorded)  # no record: nothing is known to match
    fields = json.loads(json.dumps(to_dict(cfg)))
    recorded.write_text(json.dumps({**fields, "splits": ["test"], "seeds": [7]}))
    assert _same_eval_set(cfg, recorded)
    recorded.write_text(json.dumps({**fields, "splits": ["val"]}))
    assert not _same_eval_set(cfg, recorded)
    recorded.write_text(json.dumps({**fields, "splits": ["test"], "n_positives": 100}))
    assert not _same_eval_set(cfg, recorded)
    recorded.write_text(json.dumps({**fields, "m2ib": {**fields["m2ib"], "fuse_layer": 1}}))
    assert not _same_eval_set(cfg, recorded)


def test_bn_stats_at_start_touch_only_the_running_statistics():
    """bench/wise_alpha_sweep.py --bn-stats-at-start: running mean / var and the batch counter
    come from θ0, a BatchNorm's learned weight and bias (names that also end in 'bias' /
    'weight') stay the re-weighted ones."""
    import torch

    from bench.wise_alpha_sweep import with_start_bn_stats

    start = {"stem.bn.running_mean": torch.zeros(3), "stem.bn.running_var": torch.ones(3),
             "stem.bn.num_batches_tracked": torch.tensor(5), "stem.bn.weight": torch.ones(3),
             "stem.bn.bias": torch.zeros(3)}
    state = {k: v + 1 for k, v in start.items()}
    out = with_start_bn_stats(state, start)
    for k in start:
        want = start[k] if k.rsplit(".", 1)[1] in ("running_mean", "running_var",
                                                   "num_batches_tracked") else state[k]
        assert torch.equal(out[k], want), k
