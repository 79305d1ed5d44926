"""Does an embedded CLIP see lesions? Per-domain zero-shot numbers of CLIP models, no fine-tune.

    OMP_NUM_THREADS=1 python bench/bench_clip_protocol.py --bench data/bench128_n750 \
        --model session6=local-dir:runs/clip_session6 \
        --model committed=embedded-pretrained --m2ib committed=3,1.0 \
        --external brain_mri=data/external_brain128 \
        --external breast_us=data/external_breast128 --report bench/results/clip_protocol.md

(``mkdir -p runs/clip_session6 && git archive b0048d4 finetune/weights/embedded | tar x
--strip-components=3 -C runs/clip_session6`` restores the weights before issue 17; the external
sets: ``python -m shared.benchmark --out data/external_brain128 --domains brain_mri
--n-per-domain 150 --size 128 --external``, the same with ``breast_us`` and
``data/external_breast128``.)

For every benchmark domain (the training domains and the held-out one), on the first
``--n-positives`` tumour images of the *test* split (never used in pre-training), each model runs
the MedCLIP-SAMv2 pipeline through the ablation runner's evaluation (``finetune.ablation``,
variant ``none`` with ``base_model`` = the model): zero-shot AUROC (positives vs their exact
lesion-free versions + the domain's normal images), M2IB pointing game, saliency-prompted
LiteMedSAM Dice, prompt faithfulness (saliency mass inside the lesion, lesion caption minus
lesion-free caption), patch silhouette. Each table has the model-independent reference rows:
the oracle box (upper bound) and a fixed centre box (the floor). The last model is compared with
the first by paired bootstrap (images; AUROC stratified).

The benchmark's anatomy sources cannot all be split by source: brain MRI is slices of one MNI
volume, chest and retina crops of one image each, breast ultrasound procedural (every image a
new draw). So test images are new lesions on *seen* anatomy for brain/chest/retina, and the
held-out domain (chest X-ray, never trained on) is the stress row; see the report's header.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from finetune.ablation import load_ablation_config, run_ablation  # noqa: E402
from finetune.ablation_report import auroc, compare  # noqa: E402
from shared.benchmark import DOMAINS, HELD_OUT_DOMAIN  # noqa: E402

GOALS = "AUROC ≥ 0.95 (training domains) / ≥ 0.80 (held-out); pointing ≥ 0.6 and Dice ≥ 0.6 × " \
        "oracle in-domain; Dice ≥ centre box + 0.15 on the held-out domain (issue 17)"


DEFAULT_M2IB = (3, 0.1)  # finetune.evaluation.m2ib.PRESETS["embedded"] before issue 17


def evaluate(bench: str, domain: str, name: str, source: str, *, out: Path, n_positives: int,
             embedding_cache: str, m2ib: tuple[int, float] = DEFAULT_M2IB) -> dict:
    """Run (or reuse) the ``none`` variant of ``source`` on ``domain``'s test split; the results
    JSON of the model plus the oracle/centre reference results."""
    cfg = load_ablation_config({
        "bench": bench, "domain": domain, "splits": ["test"], "output_dir": str(out / domain / name),
        "variants": ["none"], "seeds": [0], "n_positives": n_positives, "base_model": source,
        "embedding_cache_dir": embedding_cache,
        "m2ib": {"layer": m2ib[0], "beta": m2ib[1], "var": 1.0, "steps": 10, "num_samples": 10,
                 "batch_size": 16},
    })
    run_ablation(cfg, command="bench/bench_clip_protocol.py")
    res = out / domain / name / "results"
    return {"model": json.loads((res / "none__seed0.json").read_text()),
            "oracle": json.loads((res / "oracle.json").read_text()),
            "centre": json.loads((res / "centre_box.json").read_text())}


def summarise(r: dict) -> dict:
    m = r["model"]
    n = len(m["p_pos"])
    return {"auroc": auroc(m["p_pos"], m["p_neg"]),
            "auroc_gt": auroc(m["p_pos"], m["p_neg"][:n]),
            "pointing": float(np.mean(m["pointing"])), "dice": float(np.mean(m["dice"])),
            "faithfulness": float(np.mean(m["faithfulness"])),
            "lesion_mass": float(np.mean(m["lesion_mass"])),
            "silhouette": float(np.mean(m["silhouette"])),
            "oracle_dice": float(np.mean(r["oracle"]["dice"])),
            "centre_dice": float(np.mean(r["centre"]["dice"])), "n_pos": n,
            "n_neg": len(m["p_neg"])}


def _ci(d: tuple[float, float, float]) -> str:
    star = " *" if d[1] > 0 or d[2] < 0 else ""
    return f"{d[0]:+.3f} [{d[1]:+.3f}, {d[2]:+.3f}]{star}"


def render(results: dict, models: list[tuple[str, str]], command: str, timings: dict,
           m2ib_of: dict) -> str:
    lines = ["## Embedded CLIP: does it see lesions? (zero-shot, no fine-tune)", "",
             f"Command: `{command}`", "",
             "Test split of every domain (never used in pre-training); chest_xray is held out of "
             "all training. Brain (one MNI volume), chest and retina (one image each) cannot be "
             "split by source: their test images are new lesions on seen anatomy; breast "
             "ultrasound is procedural. Pipeline: M2IB → 2-means → "
             "box → LiteMedSAM. A domain marked (external) comes from another source of the same "
             "modality (`python -m shared.benchmark --external`: another head, scanner and "
             "contrast for brain MRI; a real B-mode scan of another organ for the procedural "
             "breast ultrasound), never used in training. AUROC: positives vs their exact "
             "lesion-free versions + normals (`AUROC gt`: vs the exact negatives only). Faithfulness: saliency mass inside the "
             "lesion with the lesion caption minus with the lesion-free caption. M2IB (layer, β) "
             "per model: " + ", ".join(f"{n} {m2ib_of[n]}" for n, _ in models)
             + "".join(f"; {k} {v}" for k, v in m2ib_of.items() if "@" in k) + ".", "",
             f"Goals: {GOALS}.", "",
             "| domain | model | AUROC | AUROC gt | pointing | Dice | Dice / oracle | "
             "faithfulness | lesion mass | silhouette |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    first, last = models[0][0], models[-1][0]
    deltas = []
    for domain, per_model in results.items():
        ref = None
        for name, _ in models:
            s = summarise(per_model[name])
            ref = s
            lines.append(
                f"| {domain} | {name} | {s['auroc']:.3f} | {s['auroc_gt']:.3f} | "
                f"{s['pointing']:.3f} | {s['dice']:.3f} | {s['dice'] / s['oracle_dice']:.2f} | "
                f"{s['faithfulness']:+.3f} | {s['lesion_mass']:.3f} | {s['silhouette']:.3f} |")
        lines.append(f"| {domain} | oracle box (GT) | — | — | — | {ref['oracle_dice']:.3f} | 1.00 "
                     "| — | — | — |")
        lines.append(f"| {domain} | centre box | — | — | — | {ref['centre_dice']:.3f} | "
                     f"{ref['centre_dice'] / ref['oracle_dice']:.2f} | — | — | — |")
        if first != last:
            a, b = {0: per_model[last]["model"]}, {0: per_model[first]["model"]}
            deltas.append(f"| {domain} | " + " | ".join(
                _ci(compare(a, b, m, n_resamples=2000)) for m in
                ("auroc", "pointing", "dice", "faithfulness")) + " |")
    lines += ["", f"n = {ref['n_pos']} positives and {ref['n_neg']} AUROC negatives per domain."]
    if deltas:
        lines += ["", f"`{last}` − `{first}` (paired bootstrap over images, 2000 resamples; "
                  "`*` = 95% CI excludes 0):", "",
                  "| domain | Δ AUROC | Δ pointing | Δ Dice | Δ faithfulness |",
                  "|---|---|---|---|---|", *deltas]
    lines += ["", "Wall time per (domain, model), s, shared 2-core CPU, 1 thread (≈1 s: results "
              "reused from an earlier run of the same command): "
              + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()), ""]
    return "\n".join(lines)


def external_sets(specs: list[str], error) -> list[tuple[str, str, str, str]]:
    """``--external DOMAIN=DIR`` specs as (domain, dir, label, folder name): a domain with one
    external set is labelled "DOMAIN (external)"; two sets of one domain keep apart, each labelled
    and filed by its folder's name ("" = no subfolder). A DIR without a benchmark manifest is
    refused before anything runs (a missing set would otherwise fail after the others' hours)."""
    domains = [spec.partition("=")[0] for spec in specs]
    sets = []
    for spec in specs:
        domain, sep, root = spec.partition("=")
        if not sep or not domain or not root:
            error(f"--external {spec!r}: expected DOMAIN=DIR")
        elif not (Path(root) / "manifest.jsonl").is_file():
            error(f"--external {spec!r}: no benchmark manifest in {root} (build it with python -m "
                  "shared.benchmark --external)")
        name = "" if domains.count(domain) == 1 else Path(root).name
        sets.append((domain, root, f"{domain} (external{' ' + name if name else ''})", name))
    return sets


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bench", default="data/bench128_n750")
    p.add_argument("--model", action="append", required=True,
                   help="NAME=SOURCE (finetune.build source or embedded-pretrained); repeat")
    p.add_argument("--m2ib", action="append", default=[],
                   help="NAME=LAYER,BETA: the model's M2IB bottleneck (chosen on validation by "
                        f"bench/select_m2ib.py); default {DEFAULT_M2IB}. NAME@DOMAIN=LAYER,BETA "
                        "sets it for one domain only (a per-dataset preset, as upstream's)")
    p.add_argument("--external", action="append", default=[],
                   help="DOMAIN=BENCH: also evaluate DOMAIN from this benchmark, an external set "
                        "(python -m shared.benchmark --external: a source never trained on); repeat")
    p.add_argument("--domains", nargs="+", default=[HELD_OUT_DOMAIN] + [
        d for d in DOMAINS if d != HELD_OUT_DOMAIN])
    p.add_argument("--n-positives", type=int, default=150)
    p.add_argument("--out", default="runs/clip_protocol")
    p.add_argument("--embedding-cache", default="runs/litemedsam_embeddings")
    p.add_argument("--report", default="bench/results/clip_protocol.md")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    models = []
    for spec in args.model:
        if "=" not in spec:
            p.error(f"--model {spec!r}: expected NAME=SOURCE")
        models.append(tuple(spec.split("=", 1)))
    command = "python bench/bench_clip_protocol.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    m2ib = {}
    for spec in args.m2ib:
        name, _, lb = spec.partition("=")
        layer, beta = lb.split(",")
        m2ib[name] = (int(layer), float(beta))
    entries = [(d, args.bench, d, Path(args.out)) for d in args.domains]
    for domain, bench, label, name in external_sets(args.external, p.error):
        entries.append((domain, bench, label, Path(args.out) / "external" / name))
    results, timings = {}, {}
    for domain, bench, label, out in entries:
        results[label] = {}
        for name, source in models:
            start = time.perf_counter()
            results[label][name] = evaluate(
                bench, domain, name, source, out=out, n_positives=args.n_positives,
                embedding_cache=args.embedding_cache,
                m2ib=m2ib.get(f"{name}@{domain}", m2ib.get(name, DEFAULT_M2IB)))
            timings[f"{label}/{name}"] = time.perf_counter() - start
    text = render(results, models, command, timings,
                  {n: m2ib.get(n, DEFAULT_M2IB) for n, _ in models}
                  | {k: v for k, v in m2ib.items() if "@" in k})
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
