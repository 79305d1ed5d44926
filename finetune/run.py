"""CLI: ``accelerate launch finetune/run.py --config configs/embedded/stage12.yaml [key=value ...]``.

Also runs without accelerate (``python finetune/run.py ...`` or ``python -m finetune.run``) as one
process. Two DDP processes on CPU (design §7): ``accelerate launch --multi_gpu --num_processes 2
--num_machines 1 --mixed_precision no --dynamo_backend no finetune/run.py --config ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from finetune.config import load_train_config  # noqa: E402
from finetune.train_loop import train  # noqa: E402

OBJECTIVE_HELP = {
    "clip": "symmetric image-text InfoNCE (the control)",
    "clip+dense": "CLIP + patch-caption term (pre-training of the embedded model)",
    "dhn": "DHN-NCE (MedCLIP-SAMv2's fine-tuning loss)",
    "dhn+entropy": "DHN-NCE + attention-entropy term",
    "dpo": "CLIP-DPO on (positive, negative) caption preferences; needs negatives",
    "stage1": "Stage 1: Sinkhorn OT + prototype contrastive on patch tokens",
    "stage2": "Stage 2: positive vs its lesion-free negative; needs negatives",
    "stage1+2": "Stage 1 and Stage 2 together; needs negatives",
}


def _epilog() -> str:
    """Objectives and the config keys (with defaults) that ``key=value`` overrides reach."""
    import dataclasses
    import textwrap

    from finetune.config import NEGATIVE_SOURCES, OBJECTIVES, TrainConfig

    lines = ["objectives (objective.name):"]
    lines += [f"  {name:<12} {OBJECTIVE_HELP.get(name, '')}" for name in OBJECTIVES]
    lines += [f"negative sources (negatives.source): {', '.join(NEGATIVE_SOURCES)}", "",
              "config keys (YAML or key=value; defaults shown):"]
    default = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        value = getattr(default, f.name)
        if dataclasses.is_dataclass(value):
            keys = ", ".join(f"{g.name}={getattr(value, g.name)!r}" for g in dataclasses.fields(value))
            lines += textwrap.wrap(keys, 98, initial_indent=f"  {f.name}.: ",
                                   subsequent_indent=" " * 6)
        else:
            lines.append(f"  {f.name}={value!r}")
    lines += ["", "example: python -m finetune.run --config configs/embedded/stage12.yaml "
              "objective.name=stage1+2 optim.max_steps=200 output_dir=runs/s12"]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="finetune/run.py", description=__doc__.splitlines()[0],
                                epilog=_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (TrainConfig fields)")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. optim.lr=1e-4")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_train_config(args.config, args.overrides)
    out = train(cfg)
    print(f"done: {out}", flush=True)
    return 0


if __name__ == "__main__":
    from shared.cli import run

    run(main, hard_exit=True, resumes=True)  # design §7: avoids the occasional gloo teardown abort
