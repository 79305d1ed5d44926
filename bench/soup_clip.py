"""A weight-space soup of two CLIPs of one architecture: ``θ = θ_a + α (θ_b − θ_a)``.

Model soups / WiSE-FT (Wortsman et al., ICML 2022 and CVPR 2022): two models fine-tuned from one
start lie in one basin, and their linear interpolation often keeps what each gained, including
robustness under distribution shift that neither endpoint has alone. Here the two endpoints are
pre-training continuations of the embedded conv-stem CLIP (``bench/results/clip_convstem.md``,
round 6): round 3 (installed) and round 5 (round 3 + 600 steps with random intensity maps).

    python bench/soup_clip.py --a embedded-convstem8-pretrained \
        --b local-dir:runs/pt_convstem8_lut/model --alpha 0.5 --out runs/soup_a05/model

The interpolation is the trainer's own (``finetune.train_loop.interpolate_weights``), done in
fp32 (an fp16 endpoint is upcast first); the soup is written as an open_clip local dir
(``finetune.export.export_local_dir``) with ``a``'s config and tokenizer, loadable as
``local-dir:OUT``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.build import build_clip  # noqa: E402
from finetune.export import export_local_dir  # noqa: E402
from finetune.train_loop import interpolate_weights, resolve_model_source  # noqa: E402


def soup(a: str, b: str, alpha: float, out: str | Path) -> Path:
    """Write ``θ_a + α (θ_b − θ_a)`` of models ``a`` and ``b`` (any ``build_clip`` source) to
    ``out``; both must have the same vision and text configuration."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"--alpha must lie in [0, 1], got {alpha}")
    ma, mb = build_clip(resolve_model_source(a)), build_clip(resolve_model_source(b))
    if json.dumps(ma.model_cfg, sort_keys=True) != json.dumps(mb.model_cfg, sort_keys=True):
        raise ValueError(f"{a} and {b} are different architectures: no soup")
    sa = {k: v.float() if v.is_floating_point() else v for k, v in ma.model.state_dict().items()}
    sb = {k: v.float() if v.is_floating_point() else v for k, v in mb.model.state_dict().items()}
    model = ma.model.float()
    model.load_state_dict(interpolate_weights(sa, sb, alpha))
    return export_local_dir(model, ma.tokenizer, ma.model_cfg, out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--a", required=True, help="the model at α = 0 (any --model source)")
    p.add_argument("--b", required=True, help="the model at α = 1")
    p.add_argument("--alpha", type=float, required=True)
    p.add_argument("--out", required=True, help="folder of the soup (open_clip local dir)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print(f"soup written: local-dir:{soup(args.a, args.b, args.alpha, args.out)}")
    return 0


if __name__ == "__main__":
    from shared.cli import run

    run(main)
