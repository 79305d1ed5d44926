"""Gather every benchmark's section (bench/results/*.md) into bench/RESULTS.md.

Each benchmark script writes its own section file, so that benchmarks can be re-run one at a
time; this script only concatenates them, in a fixed order, under one header.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HERE = Path(__file__).parent
ORDER = ["demo", "generator", "copy_texture_rule", "copy_texture_val_256", "copy_texture_val_512",
         "fill_detector_bands", "generator_heldout_auroc_256", "generator_heldout_auroc_512",
         "kriging_prior_round5", "generator_stacked_test_256",
         "generator_stacked_test_512", "generator_kriging4_test_256", "generator_kriging4_test_512",
         "texture_lowcut_rule", "texture_lowcut_val_256", "texture_lowcut_val_512",
         "kriging_prior_round3", "kriging_prior_round4", "texture_ring", "noise_texture_rule",
         "noise_texture_val_256", "noise_texture_val_512", "dpo_composed",
         "generator_kriging_rule", "generator_kriging_test_256",
         "generator_kriging_test_512", "generator_kriging_val_256", "generator_kriging_val_512",
         "kriging_prior", "kriging_prior_round2", "generator_realsize_256", "generator_realsize_512", "generator_realsize_512_native_exact",
         "generator_realsize_committed", "generator_texture_match", "generator_texture_match_val_256",
         "generator_texture_match_val_512", "generator_projection", "generator_projection_biharmonic",
         "generator_biharmonic", "generator_sampling", "symmetric_prior",
         "clip_protocol", "box_rule_rule", "box_rule_val", "box_rule_val2", "box_rule_val3", "box_rule_test",
         "box_rule_val4", "box_rule_val5", "box_rule_val6", "box_rule_test6", "box_rule_val7",
         "box_rule_val8", "box_rule_test8", "box_rule_val9", "box_rule_test9", "box_rule_val10",
         "box_rule_test10",
         "box_rule_val8_captions_no-region", "box_rule_val8_captions_generic",
         "m2ib_selection", "m2ib_boxes", "negatives_experiment", "negatives_box_rule", "negatives_convstem", "negatives_fused_readout", "negatives_early_blocks", "negatives_frozenbn", "adabn_external", "stage1_weights_external",
         "negatives_retina_dense", "negatives_retina_dense_test", "twin_gradients", "stage2_text",
         "stage2_strength",
         "anchor_experiment", "clip_aux_anatomy", "clip_multisource", "clip_contrast_rand",
         "clip_contrast_rand_val", "clip_spatial", "local_detector", "clip_convstem", "clip_protocol_convstem", "dense_pointing", "litemedsam_tokens", "tinyvit_head_rule", "tinyvit_head", "tinyvit_head_seed1",
         "tinyvit_head_ms", "tinyvit_head_ms_seed1", "heldout_text",
         "embedded_models", "dpo",
         "attack", "service", "stage1", "m2ib", "trainer", "ablation"]


def collect(results_dir: Path = HERE / "results", out: Path = HERE / "RESULTS.md") -> Path:
    sections = sorted(results_dir.glob("*.md"),
                      key=lambda p: (ORDER.index(p.stem) if p.stem in ORDER else len(ORDER), p.stem))
    parts = ["# Benchmark results\n",
             "Each section below is written by the script named in it; re-run that script to "
             "refresh it, then `python bench/collect.py`. Ratios are measured within one run on the "
             "machine the section names.\n"]
    parts += [p.read_text().strip() + "\n" for p in sections]
    out.write_text("\n".join(parts))
    return out


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__).parse_args()
    print(collect())
