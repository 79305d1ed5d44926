"""AdaBN: re-estimate the vision tower's BatchNorm statistics on unlabelled target images.

Li et al. 2016, "Revisiting Batch Normalization For Practical Domain Adaptation": a network's
BatchNorm running mean/variance describe the source its training images came from; replacing
them by the statistics of the target source's images (no labels, no weight changed) adapts the
network to that source. Here: every ``_BatchNorm`` layer of ``model.visual`` is reset and
re-estimated as the cumulative average over the target images (``momentum=None``, the layer in
train mode so it normalises each batch with the batch's own statistics, as in training; every
other module stays in eval mode, so dropout is off; no gradient). The embedded convstem models
have BatchNorm in their conv stem; BiomedCLIP's ViT has none (the function refuses it).

    python -m finetune.evaluate --model M --data D --adapt-bn FOLDER ...
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from finetune.evaluation.clip_bundle import ClipBundle, preprocess
from finetune.modeling.vit import batchnorm_layers
from shared.config import ConfigError


class AdaBNError(ConfigError):
    """The model or the images cannot be used for AdaBN (a user's mistake)."""


@torch.no_grad()
def adapt_batchnorm(bundle: ClipBundle, images: Sequence[np.ndarray], *,
                    batch_size: int = 32) -> int:
    """Replace the running statistics of every BatchNorm layer of ``bundle.model.visual`` by
    their cumulative average over ``images`` (preprocessed as evaluation feeds them), in place;
    returns the number of layers re-estimated.

    The images go in ⌈N / batch_size⌉ batches of nearly equal size; layer input x_b of batch b
    (per channel, over batch and space): running_mean = mean_b(mean(x_b)), running_var =
    mean_b(var_unbiased(x_b)) — PyTorch's ``momentum=None`` rule, as in
    ``torch.optim.swa_utils.update_bn`` (which also puts dropout in train mode; here it stays
    off). The model's train/eval flags and each layer's momentum are restored afterwards, and on
    an error the old statistics too. Raises ``AdaBNError`` when the tower has no BatchNorm or
    ``images`` is empty.
    """
    layers = batchnorm_layers(bundle.model.visual)
    if not layers:
        raise AdaBNError("the model's vision tower has no BatchNorm layer: AdaBN has nothing to "
                          "re-estimate (BiomedCLIP's ViT normalises with LayerNorm)")
    if not images:
        raise AdaBNError("AdaBN needs at least one image of the target source")
    if batch_size < 1:
        raise AdaBNError(f"AdaBN batch_size must be >= 1, got {batch_size}")
    modes = {m: m.training for m in bundle.model.modules()}
    momenta = [m.momentum for m in layers]
    old = [{k: v.clone() for k, v in m.state_dict().items()} for m in layers]
    try:
        bundle.model.eval()
        for m in layers:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over batches
            m.train()
        n_batches = -(-len(images) // batch_size)  # nearly equal batches: each counts the same
        for chunk in np.array_split(np.arange(len(images)), n_batches):
            pixels, _ = preprocess(bundle, [images[i] for i in chunk])
            bundle.model.encode_image(pixels)
    except BaseException:
        for m, state in zip(layers, old, strict=True):
            m.load_state_dict(state)
        raise
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        for m, mode in modes.items():
            m.training = mode
    return len(layers)
