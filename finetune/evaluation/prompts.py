"""Text prompts for saliency, read from files: one prompt for all images, per image, or per class.

Text format (``configs/prompts/*.txt``), one entry per line, ``#`` starts a comment::

    A brain MRI showing a tumor.                    # no key: used for every image
    benign* | A breast ultrasound with a benign mass.   # glob key: per class (by file name)
    case_007.png | A CT slice with a hypodense liver lesion.   # exact key: per image

Several lines for the same key form an ensemble (their text embeddings are averaged), as do
several unkeyed lines. For an image, exact-name keys win over glob keys, glob keys (first
matching pattern in file order) over unkeyed lines. MedCLIP-SAMv2's JSON files
(``{"NAME.png": "caption", ...}``, their P2/P3 sets) are read too.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path

from shared.io import InputError


class PromptError(InputError):
    """A prompt file is malformed or has no prompt for an image (a user's mistake: an
    ``InputError``, which the command-line entry points print as one line)."""


@dataclass(frozen=True)
class PromptSet:
    """Captions keyed by image name or name pattern."""

    default: tuple[str, ...] = ()  # unkeyed captions, used when no key matches
    keyed: dict[str, tuple[str, ...]] = field(default_factory=dict)  # pattern -> captions

    def for_image(self, name: str) -> list[str]:
        """Captions for the image file ``name`` (raises PromptError if there are none)."""
        if name in self.keyed:
            return list(self.keyed[name])
        for pattern, captions in self.keyed.items():
            if fnmatch.fnmatchcase(name, pattern):
                return list(captions)
        if self.default:
            return list(self.default)
        raise PromptError(f"no prompt for image {name!r}: no key matches and no default prompt")


def parse_prompts(text: str) -> PromptSet:
    """Parse the text format above."""
    default: list[str] = []
    keyed: dict[str, list[str]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "|" in line:
            key, caption = (part.strip() for part in line.split("|", 1))
            if not key or not caption:
                raise PromptError(f"line {lineno}: expected 'pattern | caption', got {raw!r}")
            keyed.setdefault(key, []).append(caption)
        else:
            default.append(line)
    if not default and not keyed:
        raise PromptError("prompt file has no prompts")
    return PromptSet(tuple(default), {k: tuple(v) for k, v in keyed.items()})


def load_prompts(path: str | Path) -> PromptSet:
    """Read a ``.txt`` prompt file (format above) or an upstream ``.json`` name->caption map."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PromptError(f"cannot read prompt file {path}: {exc}") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PromptError(f"{path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise PromptError(f"{path}: expected a JSON object mapping image names to captions")
        if not data:
            raise PromptError(f"{path}: the JSON object holds no prompts")
        return PromptSet((), {k: (v,) for k, v in data.items()})
    try:
        return parse_prompts(text)
    except PromptError as exc:
        raise PromptError(f"{path}: {exc}") from None


def single_prompt(caption: str) -> PromptSet:
    """One caption for every image."""
    if not caption.strip():
        raise PromptError("empty prompt")
    return PromptSet((caption.strip(),), {})


def resolve_prompts(caption: str | None, file: str | Path | None, default: Path,
                    flag: str) -> PromptSet | None:
    """A command line's prompts: ``flag CAPTION`` for every image, else ``flag-file FILE``, else
    the built-in ``default`` file when it exists (None when none of them is there). Errors name
    the flag."""
    try:
        if caption is not None:
            return single_prompt(caption)
    except PromptError as err:
        raise PromptError(f"{flag} {caption!r}: {err}") from None
    try:
        if file is not None:
            return load_prompts(file)
    except PromptError as err:
        raise PromptError(f"{flag}-file: {err}") from None
    return load_prompts(default) if default.is_file() else None


def check_covers(prompts: PromptSet, names, source: str) -> None:
    """Every image name has a caption (a keyed file may miss some): PromptError naming ``source``
    and the first image without one, before any run."""
    for name in names:
        try:
            prompts.for_image(name)
        except PromptError as err:
            raise PromptError(f"{source}: {err}") from None
