"""LiteMedSAM's frozen image tokens for the TinyViT-head diagnostic (issue 17), cached per image.

    python bench/tinyvit_tokens.py --shard 0/2 &  python bench/tinyvit_tokens.py --shard 1/2

The encoder input is the segmenter's own (``litemedsam_input``: longest side → 256, min-max, zero
pad), the neck output (256 × 64 × 64) is average-pooled to 32 × 32 tokens and stored as fp16 under
``runs/tinyvit_tokens/<sha1 of the encoder input>.pt``; an embedding the evaluation pipeline already
cached (``runs/litemedsam_embeddings``, same key) is pooled instead of recomputed. The work list is
fixed by ``work_list`` (training split of the three training domains, then the evaluation sets'
normals and exact negatives) so that shards are disjoint and a rerun only fills gaps.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from finetune.ablation_eval import embedding_key  # noqa: E402
from finetune.evaluation.segmenters import _rgb, litemedsam_input  # noqa: E402
from shared.benchmark import load_manifest  # noqa: E402
from shared.io import read_image, save_torch_atomic  # noqa: E402

GRID = 32
TOKENS = Path("runs/tinyvit_tokens")
FULL = Path("runs/litemedsam_embeddings")
TRAIN_ROOT, TRAIN_DOMAINS = "data/bench128_n750", ("brain_mri", "retina", "breast_us")
EVAL_SETS = {  # name -> (benchmark root, domain); test split
    "brain_mri": ("data/bench128_n750", "brain_mri"),
    "retina": ("data/bench128_n750", "retina"),
    "breast_us": ("data/bench128_n750", "breast_us"),
    "head MR (external)": ("data/external_brain128", "brain_mri"),
    "ultrasound (external)": ("data/external_breast128", "breast_us"),
    "chest_xray (held-out domain)": ("data/bench128_n750", "chest_xray"),
}
N_TRAIN, N_EVAL_POS, N_EVAL_NEG = 120, 150, 30
# More anatomy sources for the head's training (``--multi-source``): lesions injected into every
# training source at 1-4x zoom and on procedural textures (``python -m shared.benchmark --out
# data/bench128_n750_ms --n-per-domain 750 --size 128 --seed 0 --multi-source 250``); none of them
# is a held-out source.
MS_ROOT, N_MS = "data/bench128_n750_ms", 60
MS_SOURCES = ("ms_mni_brain", "ms_shoulder_mri", "ms_head_ct", "ms_extremity_xray", "ms_retina",
              "ms_breast_us", "ms_procedural")


def key_of(image: np.ndarray) -> tuple[str, torch.Tensor]:
    """The segmenter's encoder input for ``image`` and its embedding-cache key."""
    x = litemedsam_input(_rgb(image), 256)[0]
    return embedding_key(x), x


def cached_tokens(image: np.ndarray, encoder=None) -> torch.Tensor | None:
    """(256, 32, 32) fp32 tokens of one image; computed with ``encoder`` when given and missing."""
    key, x = key_of(image)
    path = TOKENS / f"{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True).float()
    if (FULL / f"{key}.pt").is_file():
        emb = torch.load(FULL / f"{key}.pt", weights_only=True)
    elif encoder is None:
        return None
    else:
        with torch.no_grad():
            emb = encoder(x)
    tok = F.avg_pool2d(emb.float(), 64 // GRID)[0]
    TOKENS.mkdir(parents=True, exist_ok=True)
    save_torch_atomic(tok.half(), path)
    return tok


def train_items(n: int = N_TRAIN, root: str = TRAIN_ROOT, domains=TRAIN_DOMAINS) -> list:
    """Per training domain the first ``n`` training positives (each computed with its exact
    negative), interleaved across domains so that a partial run covers every domain."""
    manifest = load_manifest(Path(root))
    per = [[e for e in manifest if e.domain == d and e.split == "train" and e.label == "tumor"][:n]
           for d in domains]
    return [e for group in zip(*per, strict=True) for e in group]


def ms_items() -> list:
    return train_items(N_MS, MS_ROOT, MS_SOURCES)


def eval_items(root: str, domain: str) -> tuple[list, list]:
    es = [e for e in load_manifest(Path(root)) if e.domain == domain and e.split == "test"]
    pos = [e for e in es if e.label == "tumor"][:N_EVAL_POS]
    normals = [e for e in es if e.label == "normal"][:N_EVAL_NEG]
    return pos, normals


def work_list(multi_source: bool = False) -> list[Path]:
    if multi_source:
        return [Path(MS_ROOT) / p for e in ms_items() for p in (e.image, e.gt_negative)]
    paths = []
    for root, dom in EVAL_SETS.values():
        pos, normals = eval_items(root, dom)
        paths += [Path(root) / e.image for e in normals]
        paths += [Path(root) / e.gt_negative for e in pos[:N_EVAL_NEG]]
    for e in train_items():
        paths += [Path(TRAIN_ROOT) / e.image, Path(TRAIN_ROOT) / e.gt_negative]
    for root, dom in EVAL_SETS.values():
        paths += [Path(root) / e.image for e in eval_items(root, dom)[0]]
    return paths


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shard", default="0/1")
    p.add_argument("--multi-source", action="store_true", help="the MS_SOURCES training items")
    args = p.parse_args()
    i, n = map(int, args.shard.split("/"))
    torch.set_num_threads(1)
    from finetune.evaluation.segmenters import LiteMedSAMSegmenter

    encoder = LiteMedSAMSegmenter().model.image_encoder
    todo = work_list(args.multi_source)[i::n]
    t0 = time.time()
    for k, path in enumerate(todo):
        cached_tokens(read_image(path), encoder)
        if k % 50 == 0:
            print(f"{k}/{len(todo)} {time.time() - t0:.0f}s", flush=True)
    print(f"done {len(todo)} in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
