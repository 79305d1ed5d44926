"""Is the held-out domain's zero-shot AUROC at chance because of its captions' unseen words, or
because the image tower does not see its lesions? (validation split only; a diagnostic)

The same held-out images (first ``--n`` validation positives, their exact lesion-free versions
and the domain's normals) are scored with their own captions and with the captions rewritten
into the words of a domain each model was trained on (modality and lesion noun replaced; size,
shape, margin and location words kept). If only the rewritten captions separate the classes, the
text is the bottleneck; if none does, the image tower is.

    python bench/diag_heldout_text.py --model committed=embedded-pretrained \
        --model aux=local-dir:runs/pt_aux/model --out bench/results/heldout_text.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from finetune.ablation_report import auroc  # noqa: E402
from finetune.build import build_clip  # noqa: E402
from finetune.evaluation.clip_bundle import bundle_from_open_clip  # noqa: E402
from finetune.evaluation.zero_shot import zero_shot_probs  # noqa: E402
from shared.benchmark import load_manifest  # noqa: E402
from shared.benchmark.lesions import MODALITY, caption_negative  # noqa: E402
from shared.io import read_image  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", default="data/bench128_n750")
    p.add_argument("--domain", default="chest_xray")
    p.add_argument("--as-domains", nargs="+", default=["extremity_xray", "brain_mri"],
                   help="rewrite the captions into these domains' words")
    p.add_argument("--model", action="append", required=True, help="NAME=SOURCE")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(1)
    items = [it for it in load_manifest(args.bench) if it.domain == args.domain and it.split == "val"]
    tumors = sorted((it for it in items if it.label == "tumor"), key=lambda it: it.id)[: args.n]
    normals = [it for it in items if it.label == "normal"]
    pos = [read_image(it.image) for it in tumors]
    neg = [read_image(it.gt_negative) for it in tumors] + [read_image(it.image) for it in normals]
    own_mod, own_noun, _ = MODALITY[args.domain]
    rewrites = {f"own ({args.domain})": (lambda c: c, caption_negative(args.domain))}
    for d in args.as_domains:
        mod, noun, _ = MODALITY[d]
        rewrites[f"as {d}"] = (lambda c, mod=mod, noun=noun: c.replace(own_mod, mod).replace(own_noun, noun),
                               caption_negative(d))
    lines = [f"## Held-out {args.domain}: text or image? (validation split, diagnostic)", "",
             f"Command: `python bench/diag_heldout_text.py {' '.join('--model ' + m for m in args.model)}`",
             "", f"{len(pos)} positives vs {len(neg)} negatives (exact lesion-free versions + normals); "
             "zero-shot AUROC of p(tumor) with each caption set.", "",
             "| model | " + " | ".join(rewrites) + " |", "|---|" + "---|" * len(rewrites)]
    for spec in args.model:
        name, source = spec.split("=", 1)
        built = build_clip(source)
        bundle = bundle_from_open_clip(built.model, built.tokenizer)
        row = []
        for rewrite, normal in rewrites.values():
            classes = {"normal": [normal], "tumor": sorted({rewrite(it.caption) for it in tumors})}
            probs, names = zero_shot_probs(bundle, pos + neg, classes)
            p_t = probs[:, names.index("tumor")]
            row.append(f"{auroc(p_t[: len(pos)], p_t[len(pos):]):.3f}")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
