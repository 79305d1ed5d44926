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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="finetune/run.py", description=__doc__.splitlines()[0])
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

    run(main, hard_exit=True)  # design §7: avoids the occasional gloo teardown abort
