"""What makes two ablation runs the same setup: the fields of a trained variant's config that
define its model (:func:`recipe`), and the ablation fields that define its results
(:func:`setup_diff`). Results or exports are reused only when these agree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from finetune.config import TrainConfig
from shared.config import ConfigError, to_dict, with_defaults
from shared.io import write_text_atomic

if TYPE_CHECKING:
    from finetune.ablation import AblationConfig

# how generated negatives are fetched, not what they are: the service and the in-process
# predictor give the same content-addressed negatives (the demo trains stage1+2 over HTTP and the
# ablation then reuses it)
_TRANSPORT = ("url", "api_key", "max_concurrency", "max_retries", "timeout_s")


def recipe(train_cfg: dict) -> dict:
    """A saved training config without its transport-only fields (``service`` ≡ ``inprocess``,
    threads); a field added to :class:`TrainConfig` since it was saved reads as its default (the
    run trained as that default does)."""
    train_cfg = with_defaults(train_cfg, TrainConfig)
    neg = {k: v for k, v in train_cfg.get("negatives", {}).items() if k not in _TRANSPORT}
    if neg.get("source") == "service":
        neg["source"] = "inprocess"
    return {**train_cfg, "negatives": neg, "num_threads": None}


# fields that may change between runs sharing an output_dir (the rest define the results)
_RESUMABLE = ("variants", "seeds", "table_path", "n_resamples", "embedding_cache_dir",
              "also_domains", "external", "threads")


def setup_diff(cfg: AblationConfig, path: Path) -> list[str] | None:
    """Setup fields (all but the resumable ones) where ``cfg`` differs from the setup recorded at
    ``path`` (an ``ablation_config.json``); None when nothing is recorded there."""
    if not path.is_file():
        return None
    old, new = json.loads(path.read_text()), json.loads(json.dumps(to_dict(cfg)))
    return sorted(k for k in set(old) | set(new) if k not in _RESUMABLE and old.get(k) != new.get(k))


def check_same_setup(cfg: AblationConfig, path: Path) -> None:
    """Refuse to mix results of different setups in one output_dir; record the setup."""
    diff = setup_diff(cfg, path)
    if diff:
        raise ConfigError(f"{path.parent} holds results of another setup (differs in {diff}); "
                          "use another output_dir")
    write_text_atomic(path, json.dumps(to_dict(cfg), indent=2) + "\n")
