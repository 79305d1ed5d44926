"""Training augmentation (finetune.augment) and the dense patch-caption loss (clip+dense)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from finetune.augment import AugmentConfig, augment_batch, random_lut
from finetune.patch_losses import patch_text_loss

NO_INTENSITY = dict(gamma=(1.0, 1.0), contrast=(1.0, 1.0), brightness=0.0, blur_prob=0.0,
                    max_noise=0.0)


def _batch(b: int = 6, s: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    masks = torch.zeros(b, s, s, dtype=torch.bool)
    for i in range(b):  # an off-centre disc per sample: orientation is visible
        cy, cx = torch.randint(6, s - 10, (2,), generator=g).tolist()
        masks[i] = (yy - cy) ** 2 + (xx - cx) ** 2 <= 16
    background = (torch.rand(b, s, s, generator=g) * 120 + 40).round().to(torch.uint8)
    images = torch.where(masks, torch.full_like(background, 250), background)
    return images, masks, background


def test_disabled_is_identity():
    images, masks, negs = _batch()
    out = augment_batch(images, masks, negs, AugmentConfig(enabled=False))
    assert out[0] is images and out[1] is masks and out[2] is negs


def test_quarter_turns_are_exact_rot90_of_every_tensor():
    """Pure 90° turns: each sample equals torch.rot90 of its input for one k, and image, mask and
    negative share that k (fails on a transposed affine, a sign error, or per-tensor draws)."""
    images, masks, negs = _batch()
    cfg = AugmentConfig(enabled=True, flip=False, rot90=True, max_rotation_deg=0.0,
                        zoom=(1.0, 1.0), max_shift=0.0, **NO_INTENSITY)
    torch.manual_seed(3)
    a_img, a_mask, a_neg = augment_batch(images, masks, negs, cfg)
    ks = []
    for i in range(len(images)):
        k = [k for k in range(4) if torch.equal(a_img[i], torch.rot90(images[i], k, (0, 1)))]
        assert len(k) == 1, f"sample {i} is not a quarter turn of its input"
        ks.append(k[0])
        assert torch.equal(a_mask[i], torch.rot90(masks[i], k[0], (0, 1)))
        assert torch.equal(a_neg[i], torch.rot90(negs[i], k[0], (0, 1)))
    assert len(set(ks)) > 1, "every sample drew the same turn"


def test_pair_stays_a_pair_and_mask_follows_the_lesion():
    """Full augmentation: the positive and its negative differ only where the (warped) lesion is,
    and the warped mask covers the warped lesion (fails if the negative draws its own intensity,
    noise or geometry, or if the mask is warped differently from the image)."""
    images, masks, negs = _batch(b=8)
    torch.manual_seed(0)
    a_img, a_mask, a_neg = augment_batch(images, masks, negs, AugmentConfig(enabled=True))
    diff = (a_img.float() - a_neg.float()).abs()
    near_lesion = F.max_pool2d(a_mask.float()[:, None], 5, stride=1, padding=2)[:, 0] > 0
    assert diff[~near_lesion].max() <= 1  # uint8 rounding only
    inside = diff[a_mask]
    assert inside.float().mean() > 20  # the lesion is still there, under the mask


def test_same_seed_same_batch_and_ranges_hold():
    images, masks, negs = _batch()
    cfg = AugmentConfig(enabled=True)
    torch.manual_seed(7)
    first = augment_batch(images, masks, negs, cfg)
    torch.manual_seed(7)
    second = augment_batch(images, masks, negs, cfg)
    for x, y in zip(first, second, strict=True):
        assert torch.equal(x, y)
    assert first[0].dtype == torch.uint8 and first[1].dtype == torch.bool
    assert not torch.equal(first[0], images)
    img_only = augment_batch(images, masks, None, cfg)
    assert img_only[2] is None and img_only[0].shape == images.shape


def test_random_lut_closed_form():
    """Knots at 0, 1/2, 1 with values 0.2, 1.0, 0.0: x = 1/4 → 0.6 (halfway up), x = 3/4 → 0.5
    (halfway down: non-monotone), the knots themselves exact (fails on an off-by-one knot index
    or interpolating towards the wrong neighbour)."""
    knots = torch.tensor([[0.2, 1.0, 0.0]])
    x = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]).view(1, 1, 1, 5)
    out = random_lut(x, knots).flatten()
    torch.testing.assert_close(out, torch.tensor([0.2, 0.6, 1.0, 0.5, 0.0]))
    identity = torch.linspace(0, 1, 5)[None]
    y = torch.rand(1, 2, 4, 4)
    torch.testing.assert_close(random_lut(y, identity), y)


def test_contrast_and_resolution_randomisation_keep_the_pair():
    """With every sample remapped and resized, positive and negative still differ only near the
    lesion (one draw per pair), and the draws change the image (the options are not ignored)."""
    images, masks, negs = _batch(b=8)
    cfg = AugmentConfig(enabled=True, flip=False, rot90=False, max_rotation_deg=0.0, zoom=(1.0, 1.0),
                        max_shift=0.0, lut_prob=1.0, low_res_prob=1.0, max_downsample=2.0,
                        **NO_INTENSITY)
    torch.manual_seed(3)
    a_img, a_mask, a_neg = augment_batch(images, masks, negs, cfg)
    assert torch.equal(a_mask, masks)  # no geometry drawn
    near = F.max_pool2d(masks.float()[:, None], 7, stride=1, padding=3)[:, 0] > 0
    diff = (a_img.float() - a_neg.float()).abs()
    assert diff[~near].max() <= 1
    assert (a_img.float() - images.float()).abs().mean() > 10
    off = dataclasses.replace(cfg, lut_prob=0.0, low_res_prob=0.0)
    torch.manual_seed(3)
    assert torch.equal(augment_batch(images, masks, negs, off)[0], images)


def _unit(*vecs):
    return [torch.tensor(v, dtype=torch.float32) for v in vecs]


def test_patch_text_loss_closed_form():
    """Orthonormal captions, lesion patches = the lesion caption, background = the lesion-free
    one: z = ±1/τ, so every patch costs softplus(−1/τ); swapping the captions costs softplus(1/τ).
    An invalid row (a lesion-free image) changes nothing."""
    t_pos, t_neg = _unit([1, 0, 0], [0, 1, 0])
    soft = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])
    patches = torch.where(soft[..., None] > 0.5, t_pos, t_neg) * 3.0  # norm is irrelevant
    text, text_neg = torch.stack([t_pos, t_pos]), torch.stack([t_neg, t_neg])
    valid = torch.tensor([True, False])
    tau = 0.25
    out = patch_text_loss(patches, text, text_neg, soft, valid, temperature=tau)
    torch.testing.assert_close(out["loss"], torch.tensor(math.log1p(math.exp(-1 / tau))))
    assert float(out["accuracy"]) == 1.0
    swapped = patch_text_loss(patches, text_neg, text, soft, valid, temperature=tau)
    torch.testing.assert_close(swapped["loss"], torch.tensor(math.log1p(math.exp(1 / tau))))
    assert float(swapped["accuracy"]) == 0.0
    other = patches.clone()
    other[1] = torch.randn(4, 3)
    same = patch_text_loss(other, text, text_neg, soft, valid, temperature=tau)
    torch.testing.assert_close(same["loss"], out["loss"])


def test_patch_text_loss_spatial_closed_form():
    """Two lesion patches of four at z = +1/τ, two background at −1/τ: q = ½ on each lesion patch
    and −Σ q log softmax(z) = log(2 + 2 e^{−2/τ}); a valid row without lesion patches and an
    invalid row change nothing; moving the lesion to the background patches costs
    log(2 + 2 e^{2/τ})."""
    t_pos, t_neg = _unit([1, 0, 0], [0, 1, 0])
    soft = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    patches = torch.where(soft[..., None] > 0.5, t_pos, t_neg)
    patches[2] = torch.randn(4, 3)
    text, text_neg = t_pos.expand(3, 3), t_neg.expand(3, 3)
    tau = 0.5
    out = patch_text_loss(patches, text, text_neg, soft, torch.tensor([True, True, False]),
                          temperature=tau)
    torch.testing.assert_close(out["spatial"], torch.tensor(math.log(2 + 2 * math.exp(-2 / tau))))
    moved = patch_text_loss(patches, text, text_neg, soft[:, [1, 0, 3, 2]],
                            torch.tensor([True, False, False]), temperature=tau)
    torch.testing.assert_close(moved["spatial"], torch.tensor(math.log(2 + 2 * math.exp(2 / tau))))


def test_patch_text_loss_balances_lesion_and_background():
    """One lesion patch among many background ones weighs half the loss: with the lesion patch
    wrong and the rest right the loss is ½[softplus(1/τ) + softplus(−1/τ)], whatever N is."""
    t_pos, t_neg = _unit([1, 0], [0, 1])
    tau = 0.5
    for n in (4, 16):
        soft = torch.zeros(1, n)
        soft[0, 0] = 1.0
        patches = t_neg.expand(1, n, 2).clone()  # the lesion patch looks like background
        out = patch_text_loss(patches, t_pos[None], t_neg[None], soft, torch.tensor([True]),
                              temperature=tau)
        expected = 0.5 * (math.log1p(math.exp(1 / tau)) + math.log1p(math.exp(-1 / tau)))
        torch.testing.assert_close(out["loss"], torch.tensor(expected))


def test_patch_text_loss_without_positives_is_zero_with_a_graph():
    patches = torch.randn(2, 4, 3, requires_grad=True)
    out = patch_text_loss(patches, torch.randn(2, 3), torch.randn(2, 3), torch.zeros(2, 4),
                          torch.tensor([False, False]))
    assert float(out["loss"].detach()) == 0.0
    out["loss"].backward()
    with pytest.raises(ValueError, match="soft_mask"):
        patch_text_loss(patches, torch.randn(2, 3), torch.randn(2, 3), torch.zeros(2, 5),
                        torch.tensor([True, True]))


def _features(b: int = 4, n: int = 4, w: int = 6, d: int = 5, seed: int = 0) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(seed)
    out = {"image_emb": torch.randn(b, d, generator=g), "text_emb": torch.randn(b, d, generator=g),
           "logit_scale": torch.tensor(10.0), "patch_tokens": torch.randn(b, n, w, generator=g),
           "patch_emb": torch.randn(b, n, d, generator=g),
           "neg_image_emb": torch.randn(b, d, generator=g),
           "neg_patch_tokens": torch.randn(b, n, w, generator=g),
           "text_neg_emb": torch.randn(b, d, generator=g)}
    soft = torch.zeros(b, n)
    soft[:, 0] = 1.0
    return out, {"soft_mask": soft, "is_tumor": torch.tensor([True, True, False, True])}


def test_counterfactual_stage2_puts_negatives_with_their_captions_into_infonce():
    from finetune.config import ObjectiveConfig
    from finetune.losses import stage2_counterfactual
    from finetune.objectives import clip_infonce, compute_objective

    out, batch = _features()
    cfg = ObjectiveConfig(name="stage2", stage2_form="counterfactual", stage2_weight=0.5)
    parts = compute_objective("stage2", cfg, out, batch, step=0, max_steps=10)
    want_clip = clip_infonce(torch.cat([out["image_emb"], out["neg_image_emb"]]),
                             torch.cat([out["text_emb"], out["text_neg_emb"]]), out["logit_scale"])
    torch.testing.assert_close(parts["clip_loss"], want_clip)
    s2 = stage2_counterfactual(out["patch_tokens"], out["neg_patch_tokens"], batch["soft_mask"],
                               margin=cfg.stage2_margin)
    torch.testing.assert_close(parts["loss"], want_clip + 0.5 * s2["loss"])
    hinge = compute_objective("stage2", ObjectiveConfig(name="stage2"), out, batch, step=0,
                              max_steps=10)
    torch.testing.assert_close(hinge["clip_loss"], clip_infonce(out["image_emb"], out["text_emb"],
                                                                out["logit_scale"]))


def test_text_stage2_objective_is_anchor_plus_weighted_stage2_text():
    """stage2_form text: plain InfoNCE anchor (negatives stay out of it) + w · losses.stage2_text
    on the positives' and negatives' patch embeddings and the two captions; needs the captions."""
    from finetune.config import ObjectiveConfig
    from finetune.losses import stage2_text
    from finetune.objectives import clip_infonce, compute_objective, needs_of

    out, batch = _features(seed=3)
    g = torch.Generator().manual_seed(9)
    out["neg_patch_emb"] = torch.randn(out["patch_emb"].shape, generator=g)
    cfg = ObjectiveConfig(name="stage2", stage2_form="text", stage2_weight=0.5, proto_tau=0.2)
    parts = compute_objective("stage2", cfg, out, batch, step=0, max_steps=10)
    want_clip = clip_infonce(out["image_emb"], out["text_emb"], out["logit_scale"])
    s2 = stage2_text(out["patch_emb"], out["neg_patch_emb"], out["image_emb"], out["neg_image_emb"],
                     out["text_emb"], out["text_neg_emb"], batch["soft_mask"], temperature=0.2)
    torch.testing.assert_close(parts["loss"], want_clip + 0.5 * s2["loss"])
    torch.testing.assert_close(parts["stage2_dense_loss"], s2["dense_loss"])
    assert needs_of(cfg).text_neg and needs_of(cfg).negatives and needs_of(cfg).tokens


def test_clip_dense_objective_is_infonce_plus_weighted_patch_loss():
    from finetune.config import ObjectiveConfig
    from finetune.objectives import clip_infonce, compute_objective

    out, batch = _features(seed=1)
    cfg = ObjectiveConfig(name="clip+dense", dense_weight=0.3, dense_tau=0.2)
    parts = compute_objective("clip+dense", cfg, out, batch, step=0, max_steps=10)
    dense = patch_text_loss(out["patch_emb"], out["text_emb"], out["text_neg_emb"],
                            batch["soft_mask"], batch["is_tumor"], temperature=0.2)
    want = clip_infonce(out["image_emb"], out["text_emb"], out["logit_scale"]) + 0.3 * dense["loss"]
    torch.testing.assert_close(parts["loss"], want)
    spatial = compute_objective("clip+dense", ObjectiveConfig(
        name="clip+dense", dense_weight=0.3, dense_tau=0.2, spatial_weight=0.7), out, batch,
        step=0, max_steps=10)
    assert float(dense["spatial"]) > 0
    torch.testing.assert_close(spatial["loss"], want + 0.7 * dense["spatial"])
    torch.testing.assert_close(spatial["spatial_loss"], dense["spatial"])


@pytest.mark.parametrize("name", ["clip", "stage1", "stage1+2"])
def test_dense_anchor_adds_the_weighted_patch_loss_to_any_fine_tuning_objective(name):
    """anchor_dense_weight = w: the objective's loss + w · patch_text_loss exactly, and the
    needs grow by the patch tokens and the lesion-free captions."""
    import dataclasses

    from finetune.config import ObjectiveConfig
    from finetune.objectives import compute_objective, needs_of

    out, batch = _features(seed=2)
    base = ObjectiveConfig(name=name, dense_tau=0.2)
    anchored = dataclasses.replace(base, anchor_dense_weight=0.4)
    plain = compute_objective(name, base, out, batch, step=3, max_steps=10)
    both = compute_objective(name, anchored, out, batch, step=3, max_steps=10)
    dense = patch_text_loss(out["patch_emb"], out["text_emb"], out["text_neg_emb"],
                            batch["soft_mask"], batch["is_tumor"], temperature=0.2)
    torch.testing.assert_close(both["loss"], plain["loss"] + 0.4 * dense["loss"])
    torch.testing.assert_close(both["anchor_dense_loss"], dense["loss"])
    assert "anchor_dense_loss" not in plain
    assert needs_of(anchored).tokens and needs_of(anchored).text_neg
    assert not needs_of(base).text_neg


def test_counterfactual_form_trains_end_to_end_and_only_it_encodes_negative_captions(
        tiny_bench, tmp_path):
    from finetune.config import ObjectiveConfig, load_train_config
    from finetune.objectives import needs_of
    from finetune.train_loop import train
    from tests.trainer.conftest import tiny_overrides

    assert needs_of(ObjectiveConfig(name="stage1+2", stage2_form="counterfactual")).text_neg
    assert not needs_of(ObjectiveConfig(name="stage1+2")).text_neg  # hinge: no extra text pass
    cfg = load_train_config(tiny_overrides(
        tiny_bench, tmp_path / "run",
        objective={"name": "stage1+2", "stage2_form": "counterfactual"}))
    assert (train(cfg) / "model").is_dir()  # a missing text_neg would fail in the objective
    cfg = load_train_config(tiny_overrides(
        tiny_bench, tmp_path / "run_text", objective={"name": "stage1+2", "stage2_form": "text"}))
    assert (train(cfg) / "model").is_dir()  # neg_patch_emb from the forward pass
