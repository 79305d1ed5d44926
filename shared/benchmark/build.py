"""Build the lesion-injection benchmark: MedCLIP-SAMv2 layout, GT negatives, manifest, DPO CSV.

Every positive is a healthy image with one synthetic lesion; its ground-truth negative is the
untouched image, so pixels outside the mask are identical (exact supervision real data never
gives). Lesion-free "normal" images are added too (empty mask, no GT negative).

Determinism: item ``i`` of domain ``d`` draws from ``np.random.default_rng([seed, index of d in
DOMAINS, i, kind])``, so the same seed gives byte-identical files whatever other domains are built.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.benchmark import multisource
from shared.benchmark.anatomy import AUX_SOURCES, SOURCES
from shared.benchmark.external import EXTERNAL_ALTERNATES, EXTERNAL_SOURCES
from shared.benchmark.lesions import RENDER_AS, caption, caption_negative, render, sample_lesion
from shared.datasets import DpoRow, write_dpo_csv
from shared.io import InputError, to_uint8, write_png

DOMAINS = ("brain_mri", "chest_xray", "retina", "breast_us")
HELD_OUT_DOMAIN = "chest_xray"  # the "external" domain consumers hold out by default
# Training-only lesion domains on auxiliary anatomy (other radiographs, MR and CT than any
# benchmark domain): more sources to learn "a lesion" from, never evaluated on.
AUX_DOMAINS = tuple(RENDER_AS)
SPLIT_FRACTIONS = (("train", 0.6), ("val", 0.2), ("test", 0.2))
NORMAL_FRACTION = 0.25  # lesion-free images per domain, as a fraction of the positives


@dataclass(frozen=True)
class BenchmarkItem:
    """One benchmark image (see ``manifest.jsonl``); paths are absolute."""

    id: str  # unique name, e.g. "brain_mri_0007"
    domain: str  # one of DOMAINS
    split: str  # train | val | test
    label: str  # "tumor" or "normal"
    image: Path  # the image (positive or normal)
    mask: Path  # binary 0/255 mask (all zero for normal images)
    gt_negative: Path | None  # the same image without the lesion (None for normal images)
    caption: str  # MedCLIP-SAMv2-style description of the image
    caption_neg: str  # description of the lesion-free version
    lesion: dict | None  # lesion parameters (None for normal images)


def _splits(n: int, rng: np.random.Generator) -> list[str]:
    counts = [int(round(n * f)) for _, f in SPLIT_FRACTIONS]
    counts[0] = n - sum(counts[1:])
    labels = [name for (name, _), c in zip(SPLIT_FRACTIONS, counts, strict=True) for _ in range(c)]
    return [labels[i] for i in rng.permutation(n)]


def _clear_old_benchmark(out: Path) -> None:
    """Make ``out`` ready for a new benchmark: absent or empty as it is, or an earlier benchmark's
    folder, whose image folders are removed (a rebuild with fewer or smaller images would otherwise
    leave stale files that folder-scanning readers, such as the MedCLIP-SAMv2 layout, pick up)."""
    if not out.exists() or not any(out.iterdir()):
        return
    if not ((out / "manifest.jsonl").is_file() and (out / "benchmark.json").is_file()):
        # both: a generator run's --out also holds a manifest.jsonl (and was overwritten)
        raise ValueError(f"{out} is not empty and holds no benchmark (manifest.jsonl and "
                         "benchmark.json): choose a new or empty folder")
    ours = set(DOMAINS) | set(AUX_DOMAINS) | {f"ms_{name}" for name in
                                               multisource.MS_SOURCES + multisource.MS_EXTRA}
    for child in out.iterdir():
        if child.is_dir() and child.name in ours:
            shutil.rmtree(child)
    for name in ("manifest.jsonl", "dpo_pairs.csv", "benchmark.json", "preview.png"):
        (out / name).unlink(missing_ok=True)


def build_benchmark(
    out: str | Path, *, domains: tuple[str, ...] | list[str] = DOMAINS, n_per_domain: int = 100,
    size: int = 224, seed: int = 0, progress: bool = False, external: bool = False,
    aux_per_source: int = 0, multi_source: int = 0, multi_source_extra: bool = False,
    multi_source_t2_look: bool = False,
    external_source: str | None = None, train_t2_look: float = 0.0,
) -> Path:
    """Write the benchmark under ``out`` and return the manifest's path.

    ``n_per_domain`` positives per domain plus ``ceil(NORMAL_FRACTION·n)`` normal images.
    ``external``: draw the anatomy from each domain's external source
    (``external.EXTERNAL_SOURCES``: another subject and scanner, never used in training) and put
    every image in the test split — an external set of the same modality. ``external_source``
    (with ``external``): a named set of ``external.EXTERNAL_ALTERNATES`` replaces its domain's
    default (e.g. ``"dipy_t2_head"``: whole T2 slices of another head for ``brain_mri``).
    ``aux_per_source``: also that many positives (plus normals) on each auxiliary anatomy source
    (``AUX_DOMAINS``: a leg radiograph, a shoulder MR, an abdominal CT), all in the *train* split,
    with the lesion appearance of the benchmark domain they share physics with
    (``lesions.RENDER_AS``) and their own captions. The benchmark domains' files are unchanged.
    ``multi_source``: that many positives (plus normals) on every training anatomy source and on
    procedural textures (``multisource``), train split; ``multi_source_extra`` adds the sources
    found later (``sources.EXTRA_TRAIN``) without changing the other domains' images;
    ``multi_source_t2_look`` draws half of their brain-look lesions as T2 shows a tumour (bright).
    ``train_t2_look``: that share of the ``brain_mri`` domain's *training* positives is drawn with
    the T2 look instead (bright core, captioned "hyperintense"; a coin from its own random stream),
    so both polarities stand behind "brain tumor"; validation, test and every other item are
    byte-identical to a build without it.
    """
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown:
        raise ValueError(f"unknown domain(s) {unknown}; choose from {list(DOMAINS)}")
    if n_per_domain < 1:
        raise ValueError(f"n_per_domain must be at least 1, got {n_per_domain}")
    if not 32 <= size <= 1024:
        raise ValueError(f"size must be between 32 and 1024 pixels, got {size}")
    if external:
        missing = [d for d in domains if d not in EXTERNAL_SOURCES]
        if missing:
            raise ValueError(f"no external anatomy source for {missing}; external sets exist for "
                             f"{sorted(EXTERNAL_SOURCES)}")
    if external_source is not None:
        if not external:
            raise ValueError("external_source names an external set: give external=True as well")
        if external_source not in EXTERNAL_ALTERNATES:
            raise ValueError(f"unknown external source {external_source!r}; choose from "
                             f"{sorted(EXTERNAL_ALTERNATES)}")
        domain = EXTERNAL_ALTERNATES[external_source].name
        if domain not in domains:
            raise ValueError(f"external source {external_source!r} is a {domain} set; the domains "
                             f"{list(domains)} do not include it")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    for name, n in (("aux_per_source", aux_per_source), ("multi_source", multi_source)):
        if n < 0:
            raise ValueError(f"{name} must be >= 0, got {n}")
        if n and external:
            raise ValueError(f"{name} cannot be combined with external (an external set is all test)")
    if not 0.0 <= train_t2_look <= 1.0:
        raise ValueError(f"train_t2_look is a share in [0, 1], got {train_t2_look}")
    if train_t2_look and (external or "brain_mri" not in domains):
        raise ValueError("train_t2_look changes the brain_mri training positives: give brain_mri, "
                         "not an external set")
    if multi_source_t2_look and not multi_source:
        raise ValueError("multi_source_t2_look changes the multi-source lesions: give multi_source > 0")
    if multi_source_extra and not multi_source:
        raise ValueError("multi_source_extra adds sources to the multi-source set: give multi_source > 0")
    out = Path(out)
    _clear_old_benchmark(out)
    records, dpo_rows = [], []
    n_normal = math.ceil(NORMAL_FRACTION * n_per_domain)
    n_aux_normal = math.ceil(NORMAL_FRACTION * aux_per_source)
    n_ms_normal = math.ceil(NORMAL_FRACTION * multi_source)
    ms_names = multisource.MS_SOURCES + (multisource.MS_EXTRA if multi_source_extra else ())
    ms_domains = tuple(f"ms_{name}" for name in ms_names) if multi_source else ()
    tasks = [(d, i, lab) for d in domains for lab, n in (("tumor", n_per_domain), ("normal", n_normal))
             for i in range(n)]
    tasks += [(d, i, lab) for d in (AUX_DOMAINS if aux_per_source else ())
              for lab, n in (("tumor", aux_per_source), ("normal", n_aux_normal)) for i in range(n)]
    tasks += [(d, i, lab) for d in ms_domains
              for lab, n in (("tumor", multi_source), ("normal", n_ms_normal)) for i in range(n)]
    iterator = tasks
    if progress:
        from shared.progress import progress as progress_bar

        iterator = progress_bar(tasks, desc="benchmark", every=500)
    sources = {d: (EXTERNAL_SOURCES if external else SOURCES)[d]() for d in domains}
    if external_source is not None:
        alternate = EXTERNAL_ALTERNATES[external_source]()
        sources[alternate.name] = alternate
    split_of = {
        (d, lab): ["test"] * n if external else
        _splits(n, np.random.default_rng([seed, DOMAINS.index(d), 10**6, lab == "tumor"]))
        for d in domains for lab, n in (("tumor", n_per_domain), ("normal", n_normal))
    }
    if aux_per_source:
        sources |= {d: AUX_SOURCES[d]() for d in AUX_DOMAINS}
        split_of |= {(d, lab): ["train"] * n for d in AUX_DOMAINS
                     for lab, n in (("tumor", aux_per_source), ("normal", n_aux_normal))}
    index = {d: k for k, d in enumerate(DOMAINS + AUX_DOMAINS)}
    index |= {d: 200 + k for k, d in enumerate(ms_domains)}
    for domain, i, label in iterator:
        rng = np.random.default_rng([seed, index[domain], i, label == "tumor"])
        name = f"{domain}_{i:04d}.png" if label == "tumor" else f"{domain}_n{i:04d}.png"
        if domain in ms_domains:  # every real training source at many scales, procedural textures
            split = "train"
            background, preset, lesion, positive, mask = multisource.draw_item(
                domain[3:], rng, size, tumor=label == "tumor", t2_look=multi_source_t2_look)
            words = multisource.caption_domain(domain[3:], preset)
        else:
            split = split_of[(domain, label)][i]
            background, tissue = sources[domain].sample(rng, size)
            lesion, words = None, domain
            if label == "tumor":
                looks = getattr(sources[domain], "lesion_as", domain)  # its lesions' appearance
                if (train_t2_look and domain == "brain_mri" and split == "train"
                        and np.random.default_rng([seed, index[domain], i, 2]).random() < train_t2_look):
                    looks = "brain_mri_t2"  # the coin has its own stream: nothing else moves
                lesion = sample_lesion(looks, rng, tissue)
                positive, mask = render(looks, background, lesion, rng)
        image_rel = f"{domain}/{split}_images/{name}"
        mask_rel = f"{domain}/{split}_masks/{name}"
        if label == "tumor":
            neg_rel = f"{domain}/gt_negatives/{name}"
            write_png(out / neg_rel, to_uint8(background))
            text, params = caption(words, lesion), lesion.as_json()
            dpo_rows.append(DpoRow(image_rel, neg_rel, text, caption_negative(words)))
        else:
            positive, mask = to_uint8(background), np.zeros((size, size), bool)
            neg_rel, text, params = None, caption_negative(words), None
        write_png(out / image_rel, positive)
        write_png(out / mask_rel, mask)
        records.append({
            "id": name[:-4], "domain": domain, "split": split, "label": label,
            "image": image_rel, "mask": mask_rel, "gt_negative": neg_rel, "caption": text,
            "caption_neg": caption_negative(words), "lesion": params,
        })
    manifest = out / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    write_dpo_csv(out / "dpo_pairs.csv", dpo_rows)
    (out / "benchmark.json").write_text(json.dumps(
        {"domains": list(domains), "n_per_domain": n_per_domain, "size": size, "seed": seed,
         "held_out_domain": HELD_OUT_DOMAIN, "external": external,
         **({"external_source": external_source} if external_source else {}),
         "aux_per_source": aux_per_source, "multi_source": multi_source,
         "multi_source_extra": multi_source_extra,
         **({"multi_source_t2_look": True} if multi_source_t2_look else {}),
         **({"train_t2_look": train_t2_look} if train_t2_look else {})},
        indent=2, sort_keys=True) + "\n")
    return manifest


def load_manifest(path: str | Path) -> list[BenchmarkItem]:
    """Read ``manifest.jsonl`` (or the folder holding it) into items with absolute paths."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no benchmark manifest (build it with python -m shared.benchmark)")
    root = path.parent.resolve()
    items = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{path}:{n}: not a benchmark manifest line (JSON); pass the benchmark "
                             "folder (python -m shared.benchmark builds one)") from None
        try:
            items.append(BenchmarkItem(
                id=r["id"], domain=r["domain"], split=r["split"], label=r["label"],
                image=root / r["image"], mask=root / r["mask"],
                gt_negative=root / r["gt_negative"] if r["gt_negative"] else None,
                caption=r["caption"], caption_neg=r["caption_neg"], lesion=r["lesion"],
            ))
        except (KeyError, TypeError) as err:  # e.g. generate.py's manifest.jsonl in a data folder
            raise InputError(f"{path}:{n}: not a benchmark manifest line (no field {err}); pass a "
                             "benchmark folder (python -m shared.benchmark builds one) or a "
                             "MedCLIP-SAMv2 folder without a manifest.jsonl") from None
    return items
