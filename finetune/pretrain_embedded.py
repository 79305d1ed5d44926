"""Pre-train the embedded CLIP and install it as ``finetune/weights/embedded`` (fp16 safetensors).

1. ``python -m shared.benchmark --out data/bench128 --n-per-domain 300 --size 128 --seed 0``
2. ``python -m finetune.pretrain_embedded`` (trains configs/embedded/pretrain_clip.yaml from the
   random-init ``embedded`` architecture, then installs the export), or
   ``python -m finetune.pretrain_embedded --install-from runs/pretrain_embedded`` to install a
   finished run. Extra ``key=value`` arguments override the config. The committed weights are two
   such runs back to back (the second from the first's weights): see the config's header.

``--dest NAME`` installs into another committed model's folder (``finetune.build.PRETRAINED_DIRS``):
``embedded-convstem8-pretrained`` is installed with ``--install-from`` by
``scripts/train_embedded_convstem8.sh`` (warm start and three continuations of this config).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from finetune.build import PRETRAINED_ARCHITECTURE, PRETRAINED_DIRS, build_clip
from finetune.config import load_train_config
from finetune.export import export_local_dir
from finetune.train_loop import EMBEDDED_PRETRAINED, EXPORT, train

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "embedded" / "pretrain_clip.yaml"


def _vision_cfg(folder: Path) -> dict:
    return json.loads((folder / "open_clip_config.json").read_text())["model_cfg"]["vision_cfg"]


def install(run_dir: str | Path, dest: str | Path = EMBEDDED_PRETRAINED) -> Path:
    """Copy the run's exported model to ``dest`` with fp16 weights; returns ``dest``."""
    bundle = build_clip(f"local-dir:{Path(run_dir) / EXPORT}")
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    export_local_dir(bundle.model.half(), bundle.tokenizer, bundle.model_cfg, dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finetune.pretrain_embedded", description=__doc__)
    p.add_argument("--install-from", default=None, help="install a finished run, do not train")
    p.add_argument("--dest", default="embedded-pretrained", choices=sorted(PRETRAINED_DIRS),
                   help="which committed model the run becomes (default: embedded-pretrained)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    run_dir = args.install_from
    if run_dir is not None and not (Path(run_dir) / EXPORT).is_dir():
        p.error(f"--install-from {run_dir}: no finished run there (no {EXPORT}/ folder)")
    if run_dir is None and args.dest != "embedded-pretrained":
        p.error(f"--dest {args.dest} needs --install-from RUN: this config trains the "
                "embedded-pretrained architecture (scripts/train_embedded_convstem8.sh trains it)")
    if run_dir is not None and \
            _vision_cfg(Path(run_dir) / EXPORT) != _vision_cfg(PRETRAINED_ARCHITECTURE[args.dest]):
        p.error(f"--install-from {run_dir}: its vision tower is not {args.dest}'s architecture")
    if run_dir is None:
        run_dir = train(load_train_config(CONFIG, args.overrides))
    print(f"installed: {install(run_dir, PRETRAINED_DIRS[args.dest])}")
    return 0


if __name__ == "__main__":
    from shared.cli import run

    run(main, hard_exit=True)  # as finetune.run: a config mistake is one line, not a traceback
