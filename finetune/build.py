"""Build BiomedCLIP-family CLIP models (open_clip ``CustomTextCLIP``: timm ViT + HF BERT).

They are written back by ``finetune.export`` (open_clip local dir, MedCLIP-SAMv2 HF port).

Sources understood by :func:`build_clip`:

- ``"embedded"``: our small CLIP of the BiomedCLIP family, the open_clip local dir committed in
  ``finetune/modeling/embedded/`` (architecture + tokenizer, no weights: random init);
- ``"embedded-pretrained"``: the same architecture with the pre-trained weights committed in
  ``finetune/weights/embedded/`` (written by the trainer through :func:`export_local_dir`);
- ``"embedded-convstem8"``: the embedded CLIP with a convolutional stem before the same
  transformer (16 x 16 tokens at 128²; ``finetune.modeling.vit``), random init, from
  ``finetune/modeling/embedded_convstem8/`` (no HF-port export);
- ``"embedded-convstem8-pretrained"``: that architecture with the pre-trained weights committed in
  ``finetune/weights/embedded_convstem8/`` (``scripts/train_embedded_convstem8.sh``);
- ``"hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"`` (or any open_clip hub id):
  open_clip's own loader, from the local HF cache only (the hub is never contacted at run time:
  ``HF_HUB_OFFLINE`` while it loads);
- ``"local-dir:DIR"`` (or a directory holding ``open_clip_config.json``): open_clip local dir with
  ``open_clip_config.json`` + ``open_clip_model.safetensors`` + tokenizer files. A ``text_config/``
  sub-directory, when present, is used as the BERT config, so no hub access is needed;
- ``"hf-port:DIR"`` (or a directory whose ``config.json`` names ``BiomedCLIPModel``):
  MedCLIP-SAMv2's Hugging Face port, mapped back onto open_clip names;
- ``"ckpt:FILE"`` (or an existing file): an open_clip_train checkpoint (``{"state_dict": ...}``,
  ``module.`` prefixes) or a flat state dict (``model.`` prefixes as MedCLIP-SAMv2's convert.py
  wants), loaded into the architecture of ``base``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from open_clip.model import get_model_preprocess_cfg, set_model_preprocess_cfg
from open_clip.transform import PreprocessCfg, image_transform_v2
from safetensors.torch import load_file

import finetune.modeling.vit  # noqa: F401  (registers our timm ViTs)
from finetune.modeling.clip_configs import (
    BIOMEDCLIP_HUB_ID,
    BIOMEDCLIP_MODEL_CFG,
    BIOMEDCLIP_PREPROCESS_CFG,
    TEXT_CONFIG_SUBDIR,
    write_text_config,
)
from finetune.modeling.hf_port import port_to_open_clip
from shared.cli import brief, load_state_mismatch
from shared.config import ConfigError

EMBEDDED_DIR = Path(__file__).parent / "modeling" / "embedded"
EMBEDDED_CONVSTEM_DIR = Path(__file__).parent / "modeling" / "embedded_convstem8"
EMBEDDED_PRETRAINED_DIR = Path(__file__).parent / "weights" / "embedded"
# the committed pre-trained weights, by name (finetune.pretrain_embedded installs them)
PRETRAINED_DIRS = {
    "embedded-pretrained": EMBEDDED_PRETRAINED_DIR,
    "embedded-convstem8-pretrained": Path(__file__).parent / "weights" / "embedded_convstem8",
}
# ... and the random-init architecture each of them is
PRETRAINED_ARCHITECTURE = {"embedded-pretrained": EMBEDDED_DIR,
                           "embedded-convstem8-pretrained": EMBEDDED_CONVSTEM_DIR}
LOCAL_DIR_WEIGHTS = "open_clip_model.safetensors"
HF_PORT_WEIGHTS = "model.safetensors"


class ModelSourceError(ConfigError):
    """The model name, directory or checkpoint given to :func:`build_clip` cannot be used (a
    user's mistake: the command-line entry points print it as one line)."""


@dataclass(frozen=True)
class ClipBundle:
    """A built CLIP and what is needed to feed it; unpacks as ``model, preprocess, tokenizer``."""

    model: open_clip.CustomTextCLIP  # in eval mode on the requested device
    preprocess: Callable  # PIL image -> float tensor (3, S, S), normalised (open_clip eval transform)
    tokenizer: Callable  # list[str] -> LongTensor (B, context_length) (open_clip HFTokenizer)
    model_cfg: dict  # the open_clip model_cfg it was built from (what export writes back)
    source: str  # the name or path it came from

    def __iter__(self) -> Iterator:
        return iter((self.model, self.preprocess, self.tokenizer))


# ----------------------------------------------------------------------------- helpers


def _read_json(path: Path, what: str) -> dict:
    """The JSON object in ``path``; ModelSourceError naming the file if it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelSourceError(f"{path}: not a readable {what} ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict):
        raise ModelSourceError(f"{path}: not a {what}: expected a JSON object, got "
                               f"{type(data).__name__}")
    return data


def _model_cfg_of(config: dict, config_path: Path) -> dict:
    """``config["model_cfg"]`` of an open_clip local dir, checked for the towers' sections."""
    model_cfg = config.get("model_cfg")
    if not isinstance(model_cfg, dict) or not all(
        isinstance(model_cfg.get(k), dict) for k in ("vision_cfg", "text_cfg")
    ):
        raise ModelSourceError(
            f"{config_path}: no 'model_cfg' with 'vision_cfg' and 'text_cfg' objects (an open_clip "
            'local dir\'s config reads {"model_cfg": {...}, "preprocess_cfg": {...}})'
        )
    return model_cfg


@contextmanager
def _hub_offline() -> Iterator[None]:
    """huggingface_hub (and transformers through it) in offline mode inside the block: the local
    cache only, no HEAD request, no retry warnings."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _check_hub_cached(hub_id: str) -> None:
    """ModelSourceError unless the open_clip hub model's config is in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache

    repo = hub_id[len("hf-hub:"):]
    try:
        cached = try_to_load_from_cache(repo, "open_clip_config.json")
    except Exception as err:  # HFValidationError: not of the form org/name
        raise ModelSourceError(f"{hub_id}: not a hub id of the form hf-hub:org/name ({err})") from None
    if not isinstance(cached, str):
        raise ModelSourceError(
            f"{hub_id} is not in the local Hugging Face cache, and the hub is never contacted at "
            "run time: download it once (huggingface_hub.snapshot_download) or export it to an "
            "open_clip local dir and pass local-dir:DIR"
        )


def _preprocess_for(model: torch.nn.Module) -> Callable:
    cfg = get_model_preprocess_cfg(model)
    fields = PreprocessCfg.__dataclass_fields__
    return image_transform_v2(PreprocessCfg(**{k: v for k, v in cfg.items() if k in fields}), False)


def _text_dir(local_dir: Path, hf_model_name: str) -> str:
    """The BERT config source: ``DIR/text_config`` if present, else ``DIR/<name>``, else the name."""
    if (local_dir / TEXT_CONFIG_SUBDIR / "config.json").is_file():
        return str(local_dir / TEXT_CONFIG_SUBDIR)
    if (local_dir / hf_model_name / "config.json").is_file():
        return str(local_dir / hf_model_name)
    return hf_model_name


def _instantiate(model_cfg: dict, text_dir: str, preprocess_cfg: dict) -> open_clip.CustomTextCLIP:
    """Random-init ``CustomTextCLIP`` exactly as open_clip's factory builds it, text config local."""
    cfg = deepcopy(model_cfg)
    cfg["vision_cfg"]["timm_model_pretrained"] = False
    cfg["text_cfg"].update(hf_model_name=text_dir, hf_model_pretrained=False)
    model = open_clip.CustomTextCLIP(**cfg)
    size = cfg["vision_cfg"].get("image_size", 224)
    set_model_preprocess_cfg(model, {**BIOMEDCLIP_PREPROCESS_CFG, **preprocess_cfg, "size": size})
    return model


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a CLIP state dict from ``.safetensors``/``.pt``/``.bin``/``.pth``.

    Unwraps open_clip_train's ``{"state_dict": ...}`` and strips DDP ``module.`` and
    MedCLIP-SAMv2's ``model.`` key prefixes.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelSourceError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, EOFError, SafetensorError, zip errors, ...
        raise ModelSourceError(f"{path} is not a usable checkpoint: it does not load as a "
                               f"{'safetensors' if path.suffix == '.safetensors' else 'torch'} "
                               f"state dict ({brief(err)})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not state:
        raise ModelSourceError(f"{path} is not a usable checkpoint: it holds no state dict")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelSourceError(f"{path} is not a usable checkpoint: its state dict holds "
                               "entries that are not named tensors")
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _load_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.endswith("position_ids")}
    if "logit_scale" in state:
        state["logit_scale"] = state["logit_scale"].reshape(own["logit_scale"].shape)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # size mismatches
        raise ModelSourceError(f"{source} does not match the architecture: "
                               f"{load_state_mismatch(err)}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ModelSourceError(
            f"{source} does not match the architecture: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )


# ----------------------------------------------------------------------------- loaders


def _build_local_dir(local_dir: Path, device: str, source: str) -> ClipBundle:
    config_path = local_dir / "open_clip_config.json"
    if not config_path.is_file():
        raise ModelSourceError(f"{local_dir} is not an open_clip local dir: no open_clip_config.json")
    model_cfg = _model_cfg_of(_read_json(config_path, "open_clip config"), config_path)
    text_cfg = {**model_cfg["text_cfg"], "hf_model_pretrained": False}
    text_cfg["hf_model_name"] = _text_dir(local_dir, text_cfg.get("hf_model_name", ""))
    # open_clip's own local-dir loader (config + preferred weights file + preprocess_cfg), from
    # the directory only (a text config named by hub id is read from the local cache, if at all).
    try:
        with _hub_offline():
            model = open_clip.create_model(
                f"local-dir:{local_dir}", text_cfg=text_cfg, pretrained_text=False, device="cpu"
            )
            tokenizer = open_clip.get_tokenizer(f"local-dir:{local_dir}")
    except Exception as err:  # corrupt weights, a config open_clip cannot build, no tokenizer
        raise ModelSourceError(f"{local_dir} is not a usable open_clip local dir: "
                               f"{brief(err, 300)}") from None
    model = model.to(device)
    return ClipBundle(model.eval(), _preprocess_for(model), tokenizer, model_cfg, source)


def _build_hub(hub_id: str, device: str) -> ClipBundle:
    _check_hub_cached(hub_id)
    try:
        with _hub_offline():
            model, preprocess = open_clip.create_model_from_pretrained(hub_id, device="cpu")
            tokenizer = open_clip.get_tokenizer(hub_id)
    except Exception as err:  # an incomplete cache entry, corrupt files: say which model and why
        raise ModelSourceError(f"cannot load {hub_id} from the local Hugging Face cache (the hub "
                               f"is never contacted at run time): {brief(err, 300)}") from None
    model = model.to(device)
    model_cfg = deepcopy(BIOMEDCLIP_MODEL_CFG) if hub_id == BIOMEDCLIP_HUB_ID else {}
    return ClipBundle(model.eval(), preprocess, tokenizer, model_cfg, hub_id)


def _port_model_cfg(config: dict) -> dict:
    if "open_clip_model_cfg" in config:
        return deepcopy(config["open_clip_model_cfg"])
    vision = config["vision_config"]
    sizes = tuple(vision.get(k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                          "patch_size", "image_size"))
    if sizes != (768, 12, 12, 16, 224):
        raise ModelSourceError(f"HF port with vision sizes {sizes} has no known timm architecture")
    return deepcopy(BIOMEDCLIP_MODEL_CFG)


def _build_hf_port(port_dir: Path, device: str, source: str) -> ClipBundle:
    config_path = port_dir / "config.json"
    if not config_path.is_file():
        raise ModelSourceError(f"{port_dir} is not an HF port dir: no config.json")
    config = _read_json(config_path, "HF port config")
    if not isinstance(config.get("text_config"), dict) or not (
        "open_clip_model_cfg" in config or isinstance(config.get("vision_config"), dict)
    ):
        raise ModelSourceError(f"{config_path}: an HF port config needs 'text_config' and "
                               "'vision_config' (or 'open_clip_model_cfg') objects")
    model_cfg = _port_model_cfg(config)
    weights = next((port_dir / n for n in (HF_PORT_WEIGHTS, "pytorch_model.bin")
                    if (port_dir / n).is_file()), None)
    if weights is None:
        raise ModelSourceError(f"{port_dir} has no {HF_PORT_WEIGHTS} or pytorch_model.bin")
    with tempfile.TemporaryDirectory() as tmp:
        text_dir = write_text_config(Path(tmp) / TEXT_CONFIG_SUBDIR, config["text_config"])
        model = _instantiate(model_cfg, str(text_dir), {})
    _load_into(model, port_to_open_clip(load_state_dict_file(weights)), source)
    # Our exports carry tokenizer files; MedCLIP-SAMv2's own port dir does not (their processor
    # comes from the hub), so fall back to the model_cfg's tokenizer name (hub or HF cache).
    has_tok = (port_dir / "tokenizer_config.json").is_file()
    tok_src = str(port_dir) if has_tok else model_cfg["text_cfg"]["hf_tokenizer_name"]
    try:
        with _hub_offline():
            tokenizer = open_clip.tokenizer.HFTokenizer(
                tok_src, context_length=model_cfg["text_cfg"]["context_length"]
            )
    except Exception as err:
        raise ModelSourceError(f"{port_dir} has no tokenizer files and {tok_src!r} cannot be "
                               f"loaded: {err}") from err
    model = model.to(device)
    return ClipBundle(model.eval(), _preprocess_for(model), tokenizer, model_cfg, source)


def resolve_clip_source(name_or_path: str | Path) -> tuple[str, str]:
    """What :func:`build_clip` would load, checked without loading anything: ``(kind, where)``
    with kind ``local-dir`` / ``hub`` / ``hf-port`` / ``ckpt``. Cheap (file checks, the local
    HF cache), so command-line tools call it for every model they are given before they start
    working; ModelSourceError names the source and what is wrong with it."""
    name = str(name_or_path)
    if name == "embedded":
        return "local-dir", str(EMBEDDED_DIR)
    if name == "embedded-convstem8":
        return "local-dir", str(EMBEDDED_CONVSTEM_DIR)
    if name in PRETRAINED_DIRS:
        if not (PRETRAINED_DIRS[name] / LOCAL_DIR_WEIGHTS).is_file():
            raise ModelSourceError(f"no pre-trained weights for {name} in {PRETRAINED_DIRS[name]}")
        return "local-dir", str(PRETRAINED_DIRS[name])
    if name.startswith("hf-hub:"):
        _check_hub_cached(name)
        return "hub", name
    if name.startswith("local-dir:"):
        local = Path(name[len("local-dir:"):])
        if not (local / "open_clip_config.json").is_file():
            raise ModelSourceError(f"{local} is not an open_clip local dir: no open_clip_config.json")
        return "local-dir", str(local)
    if name.startswith("hf-port:"):
        port = Path(name[len("hf-port:"):])
        if not (port / "config.json").is_file():
            raise ModelSourceError(f"{port} is not an HF port dir: no config.json")
        return "hf-port", str(port)
    if name.startswith("ckpt:") or Path(name).is_file():
        path = Path(name[len("ckpt:"):] if name.startswith("ckpt:") else name)
        if not path.is_file():
            raise ModelSourceError(f"checkpoint file not found: {path}")
        return "ckpt", str(path)
    path = Path(name)
    if (path / "open_clip_config.json").is_file():
        return "local-dir", str(path)
    if (path / "config.json").is_file():
        arch = _read_json(path / "config.json", "model config").get("architectures", [])
        if isinstance(arch, list) and "BiomedCLIPModel" in arch:
            return "hf-port", str(path)
    raise ModelSourceError(
        f"unknown CLIP source {name!r}: expected 'embedded', 'embedded-pretrained', "
        "'embedded-convstem8', 'embedded-convstem8-pretrained', 'hf-hub:ID', "
        "'local-dir:DIR', "
        "'hf-port:DIR', 'ckpt:FILE', or an existing directory/file"
    )


def _check_clip_state(state: dict[str, torch.Tensor], path: Path) -> None:
    """ModelSourceError unless the state dict has the towers of an open_clip CLIP."""
    towers = ("visual.", "text.", "transformer.", "token_embedding", "logit_scale")
    if not any(k.startswith(towers) for k in state):
        shown = ", ".join(list(state)[:3])
        raise ModelSourceError(
            f"{path} is not a usable CLIP checkpoint: its state dict has no CLIP weights "
            f"(visual.*, text.*, logit_scale); its first keys are {shown}"
        )


def build_clip(
    name_or_path: str | Path = "embedded", *, device: str = "cpu", base: str = BIOMEDCLIP_HUB_ID
) -> ClipBundle:
    """Build a BiomedCLIP-family CLIP from a name, directory or checkpoint (see module docstring).

    ``base`` is the architecture (any other accepted source) that a bare checkpoint file
    (``ckpt:FILE``) is loaded into. Returns a :class:`ClipBundle` in eval mode.
    """
    name = str(name_or_path)
    kind, where = resolve_clip_source(name)
    if kind == "local-dir":
        return _build_local_dir(Path(where), device, name)
    if kind == "hub":
        return _build_hub(where, device)
    if kind == "hf-port":
        return _build_hf_port(Path(where), device, name)
    path = Path(where)
    state = load_state_dict_file(path)
    _check_clip_state(state, path)
    try:
        bundle = build_clip(base, device="cpu")
    except ModelSourceError as err:
        raise ModelSourceError(f"{path}: cannot build the architecture it is loaded into "
                               f"(base {base}): {err}") from None
    _load_into(bundle.model, state, str(path))
    bundle.model.to(device)
    return ClipBundle(bundle.model.eval(), bundle.preprocess, bundle.tokenizer,
                      bundle.model_cfg, name)
