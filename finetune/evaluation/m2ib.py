"""M2IB saliency (Multi-Modal Information Bottleneck; Wang et al., NeurIPS 2023), as used by
MedCLIP-SAMv2, batched over images.

An information bottleneck after vision block L replaces the tokens x (B, N, D) by

    λ = sigmoid(α),   z = λ·x + (1 − λ)·ε,   ε ~ N(μ, σ²)

with one mask parameter α (N, D) per image (init 5). In the normalised coordinates
x̃ = (x − μ)/σ the bottleneck is z̃ = λ·x̃ + (1 − λ)·ε̃, ε̃ ~ N(0, 1), and its information cost is
the closed-form Gaussian KL per token and channel

    KL = −½ (1 + log (1 − λ)² − (λ x̃)² − (1 − λ)²).

α is fitted with Adam (lr 1, 10 steps) on  β · mean(KL) − mean_s cos(text_emb, img_emb(z_s)),
over S noise samples (10). With ``contrast`` the fit is the caption *contrast*
cos(T, img_emb(z_s)) − cos(T⁻, img_emb(z_s)) between the lesion caption T and the lesion-free
caption T⁻: what the two captions share (the anatomy, "a brain MRI") no longer pays for keeping a
token, only evidence for T over T⁻ does — the question MedCLIP-SAMv2's users ask when a "normal"
prompt still highlights the tumour (our variant; upstream fits cos(T, ·) alone). Measured on
validation it localises worse than the plain fit on 4 of 5 held-out sets
(bench/results/fused_saliency_r9.md), so no pipeline default uses it; it stays for that diagnostic.
The saliency map is Σ_D KL per patch token (prefix tokens dropped), bilinear to image size and
min-max normalised. It is taken from α after all steps (upstream reads the KL buffer of the last
forward, i.e. α before the final update).
With ``fuse_layer`` a second bottleneck is fitted after another block (same image, captions and
noise seeds) and the map returned is the min-max of the mean of the two (``fuse_mean``): the
conv-stem model's default, block 3 with block 1 (bench/results/m2ib_block_fusion.md).

Noise statistics: ``noise_stats="prior"`` uses μ = 0, σ² = ``var`` — the estimator MedCLIP-SAMv2
builds from ``--vvar`` but then never uses (their bottleneck always samples N(0, 1)); with
var = 1 it is exactly upstream. ``"tokens"`` uses each image's per-channel token mean and std,
σ scaled by √var (the original IBA recipe with per-image statistics).

Written by hand (no library batches M2IB): the blocks up to L and the text tower run once per
image (no grad); only the suffix runs in the 10 optimisation steps, for all images and samples
at once. Adam is element-wise and the loss is a sum of per-image losses, so each image's α
follows exactly the trajectory it would follow alone; with per-image noise generators
(seed + i) a batched run equals a per-image run. :func:`m2ib_saliency_loop` is the per-image
procedure in the upstream manner (full forward of image and text every step, bottleneck as a
hook), kept for the parity test and the benchmark.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from finetune.evaluation.clip_bundle import (
    ClipBundle,
    ResizeMode,
    encode_prompts,
    frozen_eval,
    preprocess,
    token_map_to_image,
    vision_prefix,
    vision_suffix,
)


@dataclass(frozen=True)
class M2IBConfig:
    """M2IB settings; presets in :data:`PRESETS`."""

    layer: int = 9  # bottleneck after this vision block (0-based index into trunk.blocks)
    beta: float = 1.0  # weight of the KL (compression) term, > 0 (presets: 0.03 .. 2)
    var: float = 1.0  # variance of the noise prior (upstream's --vvar, honoured here)
    steps: int = 10  # Adam steps on alpha (upstream 10)
    lr: float = 1.0  # Adam learning rate (upstream 1)
    num_samples: int = 10  # noise samples per image and step (upstream batch_size 10)
    init_alpha: float = 5.0  # initial alpha: sigmoid(5) = 0.993, almost no noise at start
    noise_stats: Literal["prior", "tokens"] = "prior"  # see module docstring
    resize_mode: ResizeMode = "pad"  # "pad" keeps aspect ratio; "stretch" squashes to square
    batch_size: int = 8  # images optimised together (memory: batch_size*num_samples suffixes)
    contrast: bool = False  # fit cos(T, ·) − cos(T⁻, ·) (needs negative prompts); module docstring
    # also fit a bottleneck after this block (same image, captions and noise seeds) and return the
    # min-max of the mean of the two maps (fuse_mean; bench/results/m2ib_block_fusion.md)
    fuse_layer: int | None = None


# Per-dataset presets of MedCLIP-SAMv2 (zeroshot_scripts), plus the embedded 6-block model: after
# block 3 of 6, beta 1, chosen for the committed weights on the validation split by a fixed rule
# (bench/select_m2ib.py -> bench/results/m2ib_selection.md; earlier weights used block 2 / beta
# 0.03 and, before issue 17, block 3 / beta 0.1). Upstream's "layer 9" indexes ``layers[9]``.
PRESETS: dict[str, M2IBConfig] = {
    "breast": M2IBConfig(layer=9, beta=1.0, var=1.0),
    "brain": M2IBConfig(layer=9, beta=2.0, var=0.3),
    "embedded": M2IBConfig(layer=3, beta=1.0, var=1.0),
    # the same rule applied to one domain's validation positives at a time (per-dataset presets,
    # as upstream's brain / breast): bench/results/m2ib_selection.md, one column each
    "embedded-brain": M2IBConfig(layer=4, beta=1.0, var=1.0),
    "embedded-retina": M2IBConfig(layer=2, beta=1.0, var=1.0),
    "embedded-breast": M2IBConfig(layer=2, beta=0.03, var=1.0),
    # embedded-convstem8-pretrained (16 x 16 tokens): its default is "embedded" (block 3, chosen
    # in bench/results/clip_convstem.md round 3); retina alone gains from another block there
    # (pointing 0.70 at block 2 vs 0.48), box_rule_rule.md round 10
    "convstem8-retina": M2IBConfig(layer=2, beta=1.0, var=1.0),
    # the conv-stem default since session 40: block 3's map fused with block 1's (block 1 finds
    # the bright lesions block 3 misses; chosen on validation, bench/results/m2ib_block_fusion.md)
    "convstem8": M2IBConfig(layer=3, beta=1.0, var=1.0, fuse_layer=1),
}


def default_config(bundle: ClipBundle) -> M2IBConfig:
    """The settings a model gets when none are named: ``convstem8`` for the conv-stem family
    (16 × 16 tokens), the ``embedded`` preset for the 8 × 8 embedded model, upstream's defaults
    (layer 9 of BiomedCLIP's 12) otherwise."""
    if bundle.family == "embedded-convstem8":
        return PRESETS["convstem8"]
    if bundle.is_embedded:
        return PRESETS["embedded"]
    return M2IBConfig()


def _check(bundle: ClipBundle, cfg: M2IBConfig) -> None:
    for name, layer in (("layer", cfg.layer), ("fuse layer", cfg.fuse_layer)):
        if layer is not None and not 0 <= layer < bundle.num_blocks:
            raise ValueError(
                f"bottleneck {name} {layer} out of range: the vision tower has "
                f"{bundle.num_blocks} blocks (valid 0..{bundle.num_blocks - 1})"
            )
    if cfg.fuse_layer == cfg.layer:
        raise ValueError(f"M2IB fuse layer {cfg.fuse_layer} is the bottleneck layer itself")
    if not cfg.beta > 0:  # beta <= 0 rewards information instead of compressing it
        raise ValueError(f"M2IB beta must be > 0, got {cfg.beta}")
    if not cfg.var > 0:
        raise ValueError(f"M2IB var must be > 0, got {cfg.var}")
    if cfg.steps < 1 or cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ValueError("M2IB steps, num_samples and batch_size must all be >= 1")


def _noise_stats(tokens: torch.Tensor, cfg: M2IBConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, N, D) tokens -> μ, σ broadcastable to (B, 1, N, D)."""
    if cfg.noise_stats == "prior":
        mu = torch.zeros(1, 1, 1, 1, device=tokens.device)
        sigma = torch.full((1, 1, 1, 1), cfg.var**0.5, device=tokens.device)
    elif cfg.noise_stats == "tokens":
        mu = tokens.mean(dim=1)[:, None, None]  # (B, 1, 1, D)
        sigma = tokens.std(dim=1).clamp_min(1e-6)[:, None, None] * cfg.var**0.5
    else:
        raise ValueError(f"unknown noise_stats {cfg.noise_stats!r}; expected 'prior' or 'tokens'")
    return mu, sigma


def _bottleneck(
    tokens: torch.Tensor, alpha: torch.Tensor, eps: torch.Tensor, mu: torch.Tensor,
    sigma: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B, N, D), alpha (B, 1, N, D), eps (B, S, N, D) -> z (B, S, N, D), KL (B, N, D)."""
    lam = torch.sigmoid(alpha)
    x_norm = (tokens[:, None] - mu) / sigma
    masked_mu = lam * x_norm
    masked_var = (1 - lam) ** 2
    kl = -0.5 * (1 + torch.log(masked_var) - masked_mu**2 - masked_var)
    z = (masked_mu + (1 - lam) * eps) * sigma + mu
    return z, kl[:, 0]


def _kl_to_maps(kl: torch.Tensor, bundle: ClipBundle, placements) -> list[np.ndarray]:
    gh, gw = bundle.grid_size
    patch = kl.sum(-1)[:, bundle.num_prefix_tokens :]  # (B, gh*gw): CLS/register tokens dropped
    return token_map_to_image(patch.reshape(-1, gh, gw), bundle, placements)


def _seeds(seed: int | Sequence[int], n: int) -> list[int]:
    if isinstance(seed, int):
        return [seed + i for i in range(n)]
    seeds = list(seed)
    if len(seeds) != n:
        raise ValueError(f"got {len(seeds)} seeds for {n} images")
    return seeds


def _draw(gens: Sequence[torch.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """One (S, N, D) standard-normal draw per image generator -> (B, S, N, D)."""
    return torch.stack([torch.randn(shape, generator=g) for g in gens])


def m2ib_saliency(
    bundle: ClipBundle,
    images: Sequence[np.ndarray],
    prompts: Sequence[Sequence[str]],
    cfg: M2IBConfig = M2IBConfig(),
    *,
    seed: int | Sequence[int] = 0,
    class_token_shortcut: bool = True,
    neg_prompts: Sequence[Sequence[str]] | None = None,
) -> list[np.ndarray]:
    """Batched M2IB saliency.

    Args:
        bundle: CLIP model (timm ViT trunk) with tokenizer and geometry.
        images: B float images in [0, 1], each HxW or HxWx3, any size.
        prompts: B lists of captions (one caption, or several averaged as an ensemble).
        cfg: bottleneck settings.
        seed: int -> image i uses seed + i; or one seed per image.
        class_token_shortcut: run the last block for the class token only (same maps, less
            work; see ``clip_bundle.vision_suffix``). False only to measure what it saves.
        neg_prompts: B lists of lesion-free captions; required with ``cfg.contrast``.
    Returns:
        B float32 maps in [0, 1], each of its image's (H, W).
    """
    _check_prompts(images, prompts, neg_prompts, cfg)
    _check(bundle, cfg)
    seeds = _seeds(seed, len(images))
    out: list[np.ndarray] = []
    for start in range(0, len(images), cfg.batch_size):
        stop = start + cfg.batch_size
        negs = neg_prompts[start:stop] if cfg.contrast else None
        out += _m2ib_batch(bundle, images[start:stop], prompts[start:stop], cfg, seeds[start:stop],
                           class_token_shortcut, negs)
    if cfg.fuse_layer is None:
        return out
    other = m2ib_saliency(bundle, images, prompts, replace(cfg, layer=cfg.fuse_layer, fuse_layer=None),
                          seed=seeds, class_token_shortcut=class_token_shortcut,
                          neg_prompts=neg_prompts)
    return [fuse_mean(a, b) for a, b in zip(out, other, strict=True)]


def minmax_map(m: np.ndarray) -> np.ndarray:
    """A saliency map min-max to [0, 1], float32; one whose span is ≤ 1e-6 (flat on these [0, 1]
    scales) -> zeros, i.e. nothing salient."""
    m = np.asarray(m, np.float64)
    span = m.max() - m.min()
    return ((m - m.min()) / span if span > 1e-6 else np.zeros_like(m)).astype(np.float32)


def fuse_mean(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`minmax_map` of (a + b) / 2 for two [0, 1] maps of one image."""
    return minmax_map((np.asarray(a, np.float64) + np.asarray(b, np.float64)) / 2)


def _check_prompts(images, prompts, neg_prompts, cfg: M2IBConfig) -> None:
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompt lists")
    if cfg.contrast and (neg_prompts is None or len(neg_prompts) != len(images)):
        raise ValueError("M2IB with contrast needs one list of lesion-free captions per image")


def _fit(emb: torch.Tensor, text: torch.Tensor, text_neg: torch.Tensor | None) -> torch.Tensor:
    """(..., E) embeddings vs (..., E) caption(s) -> cos(T, emb) [− cos(T⁻, emb)], shape (...)."""
    fit = F.cosine_similarity(emb, text, dim=-1, eps=1e-6)
    if text_neg is not None:
        fit = fit - F.cosine_similarity(emb, text_neg, dim=-1, eps=1e-6)
    return fit


def _m2ib_batch(bundle, images, prompts, cfg: M2IBConfig, seeds,
                class_token_shortcut: bool, neg_prompts=None) -> list[np.ndarray]:
    with frozen_eval(bundle.model):
        pixels, placements = preprocess(bundle, images, resize_mode=cfg.resize_mode)
        with torch.no_grad():
            tokens = vision_prefix(bundle, pixels, cfg.layer)  # (B, N, D)
            text = encode_prompts(bundle, prompts)  # (B, E)
            text_neg = None if neg_prompts is None else encode_prompts(bundle, neg_prompts)[:, None]
        b, n, d = tokens.shape
        mu, sigma = _noise_stats(tokens, cfg)
        alpha = torch.full((b, 1, n, d), cfg.init_alpha, device=tokens.device, requires_grad=True)
        optimizer = torch.optim.Adam([alpha], lr=cfg.lr)
        gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
        s = cfg.num_samples
        with torch.enable_grad():
            for _ in range(cfg.steps):
                optimizer.zero_grad()
                eps = _draw(gens, (s, n, d)).to(tokens.device)  # CPU generators: same noise anywhere
                z, kl = _bottleneck(tokens, alpha, eps, mu, sigma)
                emb = vision_suffix(bundle, z.reshape(b * s, n, d), cfg.layer,
                                    class_token_only=class_token_shortcut).reshape(b, s, -1)
                fit = _fit(emb, text[:, None], text_neg).mean(1)  # (B,)
                loss = (cfg.beta * kl.mean(dim=(1, 2)) - fit).sum()  # sum: images independent
                loss.backward()
                optimizer.step()
        with torch.no_grad():
            _, kl = _bottleneck(tokens, alpha, torch.zeros(b, 1, n, d, device=tokens.device), mu, sigma)
        return _kl_to_maps(kl, bundle, placements)


@contextmanager
def _upstream_eval(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode, weights left trainable (as upstream); weight gradients dropped on exit."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        for p in model.parameters():
            p.grad = None
        model.train(was_training)


def m2ib_saliency_loop(
    bundle: ClipBundle,
    images: Sequence[np.ndarray],
    prompts: Sequence[Sequence[str]],
    cfg: M2IBConfig = M2IBConfig(),
    *,
    seed: int | Sequence[int] = 0,
    param_grads: bool = True,
    neg_prompts: Sequence[Sequence[str]] | None = None,
) -> list[np.ndarray]:
    """Per-image M2IB in the upstream manner (reference for tests and the benchmark).

    For each image, each step runs the whole vision tower on S copies with the bottleneck
    inserted by a forward hook on block L, and re-encodes S copies of the prompt, as
    MedCLIP-SAMv2's ``IBAInterpreter`` does. With ``param_grads`` (upstream never freezes the
    model) the backward pass also computes every weight gradient of both towers; they are
    discarded afterwards. Same maths, noise and seeds as :func:`m2ib_saliency`, so the maps
    must agree.
    """
    _check_prompts(images, prompts, neg_prompts, cfg)
    _check(bundle, cfg)
    if cfg.fuse_layer is not None:
        raise ValueError("m2ib_saliency_loop is the one-block reference: run it per block and "
                         "fuse the maps with fuse_mean")
    negs = neg_prompts if cfg.contrast else [None] * len(images)
    model = bundle.model
    s = cfg.num_samples
    out = []
    with _upstream_eval(model) if param_grads else frozen_eval(model):
        for image, prompt, neg, sd in zip(images, prompts, negs, _seeds(seed, len(images)),
                                          strict=True):
            pixels, placements = preprocess(bundle, [image], resize_mode=cfg.resize_mode)
            batch = pixels.expand(s, -1, -1, -1)
            gen = torch.Generator().manual_seed(int(sd))
            state: dict[str, torch.Tensor] = {}
            alpha: torch.Tensor | None = None

            def hook(_module, _inp, output, state=state, gen=gen):
                x = output.reshape(1, s, *output.shape[1:])[:, 0]  # identical copies -> (1, N, D)
                nonlocal alpha
                if alpha is None:  # first call: shapes known now
                    alpha = torch.full((1, 1, *x.shape[1:]), cfg.init_alpha, device=x.device,
                                       requires_grad=True)
                    state["mu"], state["sigma"] = _noise_stats(x.detach(), cfg)
                    state["tokens"] = x.detach()
                eps = torch.randn((s, *x.shape[1:]), generator=gen)[None].to(x.device)
                z, kl = _bottleneck(x, alpha, eps, state["mu"], state["sigma"])
                return z[0]

            handle = bundle.trunk.blocks[cfg.layer].register_forward_hook(hook)
            try:
                with torch.no_grad():  # first forward only to create alpha
                    gen_state = gen.get_state()
                    model.encode_image(batch[:s])
                    gen.set_state(gen_state)
                optimizer = torch.optim.Adam([alpha], lr=cfg.lr)
                with torch.enable_grad():
                    for _ in range(cfg.steps):
                        optimizer.zero_grad()
                        text = encode_prompts(bundle, [prompt] * s)  # re-encoded every step
                        text_neg = None if neg is None else encode_prompts(bundle, [neg] * s)
                        emb = model.encode_image(batch)
                        fit = _fit(emb, text, text_neg).mean()
                        kl = _bottleneck(
                            state["tokens"], alpha, torch.zeros(1, 1, 1, 1, device=alpha.device),
                            state["mu"],
                            state["sigma"],
                        )[1]
                        loss = cfg.beta * kl.mean() - fit
                        loss.backward()
                        optimizer.step()
            finally:
                handle.remove()
            with torch.no_grad():
                _, kl = _bottleneck(
                    state["tokens"], alpha, torch.zeros(1, 1, 1, 1, device=alpha.device),
                    state["mu"], state["sigma"],
                )
            out += _kl_to_maps(kl, bundle, placements)
    return out
