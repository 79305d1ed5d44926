"""Warm-start one CLIP architecture from another's trained weights, then write a local dir.

    python -m finetune.warm_start --from embedded-pretrained --to embedded-convstem8 \
        --out runs/convstem8_warm

Every tensor whose name and shape match is copied (the whole text tower, the logit scale, the
transformer blocks, the final norm and the image projection); the absolute position embedding is
resampled from the source's token grid to the target's (timm ``resample_abs_pos_embed``, bicubic,
the CLS slot copied as is); everything else keeps the target's initialisation (for
``embedded-convstem8``: the convolutional stem and its 1x1 projection). This is the usual way of
moving a ViT to a new resolution or patch size (DeiT/FlexiViT-style position interpolation); the
blocks then adapt to the new stem in a short continuation (``python -m finetune.run
model=local-dir:OUT ...``). The printed report says which tensors were copied, resampled or left.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from timm.layers import resample_abs_pos_embed

from finetune.build import build_clip
from finetune.export import export_local_dir
from finetune.modeling.tokens import patch_grid

POS_EMBED = "visual.trunk.pos_embed"


def transfer_state(src: torch.nn.Module, dst: torch.nn.Module, src_grid: tuple[int, int],
                   dst_grid: tuple[int, int], num_prefix_tokens: int = 1) -> dict[str, list[str]]:
    """Copy ``src``'s matching tensors (parameters and buffers) into ``dst`` in place.

    Returns ``{"copied": [...], "resampled": [...], "kept": [...]}`` (names of ``dst``'s state):
    same name and shape -> copied; the position embedding -> resampled from ``src_grid`` to
    ``dst_grid`` (prefix tokens copied); anything else (absent in ``src`` or another shape) -> kept.
    """
    src_state = src.state_dict()
    new_state = dst.state_dict()
    report: dict[str, list[str]] = {"copied": [], "resampled": [], "kept": []}
    for name, value in new_state.items():
        have = src_state.get(name)
        if have is not None and have.shape == value.shape:
            new_state[name] = have.to(value.dtype).clone()
            report["copied"].append(name)
        elif have is not None and name == POS_EMBED:
            new_state[name] = resample_abs_pos_embed(
                have.float(), new_size=list(dst_grid), old_size=list(src_grid),
                num_prefix_tokens=num_prefix_tokens, interpolation="bicubic", antialias=False,
            ).to(value.dtype)
            report["resampled"].append(name)
        else:
            report["kept"].append(name)
    dst.load_state_dict(new_state)
    return report


def warm_start(source: str, target: str, out: str | Path) -> dict[str, list[str]]:
    """Build ``target`` (an architecture), fill it from ``source``'s weights, export to ``out``."""
    src, dst = build_clip(source), build_clip(target)
    report = transfer_state(src.model.float(), dst.model, patch_grid(src.model),
                            patch_grid(dst.model))
    export_local_dir(dst.model, dst.tokenizer, dst.model_cfg, out)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune.warm_start", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", default="embedded-pretrained",
                   help="trained weights (any model source build_clip accepts)")
    p.add_argument("--to", dest="target", default="embedded-convstem8",
                   help="the architecture to fill (any model source build_clip accepts)")
    p.add_argument("--out", required=True, help="local dir to write (open_clip format)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    report = warm_start(args.source, args.target, args.out)
    for kind, names in report.items():
        print(f"{kind}: {len(names)} tensors" + (f" ({', '.join(names)})" if kind != "copied" else ""))
    print(f"written: {args.out}  (load with model=local-dir:{args.out})")
    return 0


if __name__ == "__main__":
    from shared.cli import run

    run(main, hard_exit=True)
