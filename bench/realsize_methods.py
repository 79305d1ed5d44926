"""The rows ``bench_generator_realsize`` compares: baselines, generators and their classical twins.

A generator spec is ``NAME=PATH[,FLAG...]`` (PATH a checkpoint directory or ``embedded``); flags
override what the checkpoint says: ``native-coarse`` / ``upsampled-coarse``
(``NegativeGenerator.native_coarse`` on / off), ``texture-match`` / ``full-residual``
(``NegativeGenerator.texture_match`` on / off), ``kriging`` / ``stacked`` / ``biharmonic-prior``
(``NegativeGenerator.coarse_prior``: the classical fill those compositions use), ``lowcut`` /
``no-lowcut`` (``NegativeGenerator.texture_lowcut_sigma`` 2 px / 0). Specs with the same PATH share one backend whose
fills are memoised (:class:`MemoBackend`), so two compositions of the same checkpoint are judged on
the *same* diffusion samples: their paired difference is the composition's alone, and the second
costs no sampling.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from generator.build import load_generator
from generator.exemplar import TOP_K, ranked_offsets, translated_texture
from generator.predictor import NegativeGenerator
from shared.benchmark.sources import SOURCES

DILATION_PX = 2  # the generator's default dilation
POSITIVE, BIHARMONIC, GT = "untouched positive", "biharmonic", "GT negative (reference)"
FLAGS = {"native-coarse": ("native_coarse", True), "upsampled-coarse": ("native_coarse", False),
         "texture-match": ("texture_match", True), "full-residual": ("texture_match", False),
         "kriging": ("coarse_prior", "kriging"), "biharmonic-prior": ("coarse_prior", "biharmonic"),
         "stacked": ("coarse_prior", "stacked"),
         "lowcut": ("texture_lowcut_sigma", 2.0), "no-lowcut": ("texture_lowcut_sigma", 0.0)}


class CoarsePriorBackend:
    """A pixel backend's coarse fill alone: ``compose(r0 = 0)`` = the coarse channel of
    ``pixel_unet.condition`` inside the hole (harmonic or biharmonic per the model's config),
    clamped to [0, 1] unless ``clamp`` is False (a texture-matched generator would scale the
    clamping's tiny residual up to the ring's texture; unclamped, its residual is exactly 0)."""

    def __init__(self, backend, clamp: bool = True):
        self.name, self.channels, self.backend = "coarse-prior", backend.channels, backend
        self.clamp = clamp
        self.resolution = backend.resolution
        self.max_side = getattr(backend, "max_side", backend.resolution)  # same window grids

    def coarse(self, images, holes):  # so a native-coarse generator composes on it as on the model
        return self.backend.coarse(images, holes)

    def fill(self, images, holes, generators, *, steps, strength, see_through_px=0.0) -> np.ndarray:
        out = self.backend.coarse(images, holes)  # PixelBackend.coarse
        out = out.clamp(0.0, 1.0) if self.clamp else out
        return out.permute(0, 2, 3, 1).float().cpu().numpy()


class NoiseTextureBackend(CoarsePriorBackend):
    """The classical twin of a texture-matched generator: the coarse fill + white Gaussian noise
    (std 1, from each row's generator) inside the hole, so ``texture_match`` turns it into the
    biharmonic fill + ring-matched high-passed noise — the same priors, no learned texture."""

    def fill(self, images, holes, generators, *, steps, strength, see_through_px=0.0) -> np.ndarray:
        out = super().fill(images, holes, generators, steps=steps, strength=strength)
        noise = np.stack([torch.randn(out.shape[1:], generator=g).numpy() for g in generators])
        return out + noise * holes.permute(0, 2, 3, 1).cpu().numpy()


class CopyTextureBackend(CoarsePriorBackend):
    """The exemplar twin: the coarse fill + the high-pass of the image's own known tissue,
    translated into the hole (:mod:`generator.exemplar`; the offset drawn by each row's generator
    among the ``TOP_K`` best-matching), so ``texture_match`` turns it into the prior + a
    ring-matched copy of real tissue's grain. White noise where no offset fits (counted in
    ``fallbacks``)."""

    fallbacks = 0

    def fill(self, images, holes, generators, *, steps, strength, see_through_px=0.0) -> np.ndarray:
        out = super().fill(images, holes, generators, steps=steps, strength=strength)
        for b, g in enumerate(generators):
            image, hole = images[b, 0].double().numpy(), holes[b, 0].numpy() > 0
            offsets = ranked_offsets(image, hole)
            if offsets:
                pick = int(torch.randint(min(TOP_K, len(offsets)), (1,), generator=g))
                texture = translated_texture(image, hole, offsets[pick])
            else:
                CopyTextureBackend.fallbacks += 1
                texture = np.where(hole, torch.randn(hole.shape, generator=g).numpy(), 0.0)
            out[b, ..., 0] += texture.astype(out.dtype)
        return out


class MemoBackend:
    """A backend whose fills are remembered by content (images, holes, seeds, steps, strength,
    see-through), so generators sharing it sample each row once. Keeps the last ``keep`` calls."""

    def __init__(self, backend, keep: int = 64):
        self.backend, self.keep, self.memo = backend, keep, OrderedDict()
        self.name, self.channels = backend.name, backend.channels
        self.resolution = backend.resolution
        self.max_side = getattr(backend, "max_side", backend.resolution)
        if hasattr(backend, "coarse"):
            self.coarse = backend.coarse

    def fill(self, images, holes, generators, *, steps, strength, see_through_px=0.0) -> np.ndarray:
        h = hashlib.sha1(images.numpy().tobytes())
        h.update(holes.numpy().tobytes())
        h.update(repr(([g.initial_seed() for g in generators], steps, strength,
                       see_through_px)).encode())
        key = h.hexdigest()
        if key not in self.memo:
            self.memo[key] = self.backend.fill(images, holes, generators, steps=steps,
                                               strength=strength, see_through_px=see_through_px)
            while len(self.memo) > self.keep:
                self.memo.popitem(last=False)
        return self.memo[key].copy()


def _twin(gen: NegativeGenerator, backend) -> NegativeGenerator:
    return NegativeGenerator(backend, checkpoint_hash=gen.checkpoint_hash, window=gen.window,
                             window_context=gen.window_context, native_coarse=gen.native_coarse,
                             texture_match=gen.texture_match, coarse_prior=gen.coarse_prior,
                             texture_lowcut_sigma=gen.texture_lowcut_sigma)


def coarse_prior(gen: NegativeGenerator) -> NegativeGenerator | None:
    """``gen`` with its learned residual dropped (same window, resizing, native coarse fill and
    paste-back); None for a backend without a coarse channel (sd-inpaint)."""
    if not hasattr(gen.backend, "coarse"):
        return None
    return _twin(gen, CoarsePriorBackend(gen.backend, clamp=not gen.texture_match))


def noise_texture(gen: NegativeGenerator) -> NegativeGenerator | None:
    """For a texture-matched generator, the same composition with white noise as the residual
    (:class:`NoiseTextureBackend`); None otherwise."""
    if not (gen.texture_match and hasattr(gen.backend, "coarse")):
        return None
    return _twin(gen, NoiseTextureBackend(gen.backend))


def copy_texture(gen: NegativeGenerator) -> NegativeGenerator | None:
    """For a texture-matched generator, the same composition with the image's own translated
    tissue as the residual (:class:`CopyTextureBackend`); None otherwise."""
    if not (gen.texture_match and hasattr(gen.backend, "coarse")):
        return None
    return _twin(gen, CopyTextureBackend(gen.backend))


def parse_generators(specs: list[str]) -> dict[str, NegativeGenerator]:
    """``NAME=PATH[,FLAG...]`` → generators (module docstring); one memoised backend per PATH."""
    out, loaded = {}, {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if not sep or not name or not rest:
            raise SystemExit(f"--generator wants NAME=SPEC, got {spec!r}")
        # each checkpoint runs as it was trained (generator.build.checkpoint_window): a
        # window-trained model on lesion windows, a whole-image model on the whole image
        path, *flags = rest.split(",")
        kwargs = {}
        for flag in flags:
            if flag not in FLAGS:
                raise SystemExit(f"--generator {spec!r}: unknown flag {flag!r}; expected one of "
                                 f"{', '.join(FLAGS)}")
            key, value = FLAGS[flag]
            kwargs[key] = value
        gen = load_generator(None if path == "embedded" else path, **kwargs)
        if path not in loaded:
            loaded[path] = MemoBackend(gen.backend)
        gen.backend = loaded[path]
        out[name] = gen
    return out


@dataclass(frozen=True)
class Method:
    """One row: ``run(image, mask) -> samples`` (each a float32 image like the input)."""

    name: str
    run: Callable[[np.ndarray, np.ndarray], list[np.ndarray]]
    goals: bool = False  # judged against the goals (the generators' rows)


def methods_for(source: str, gens: dict[str, NegativeGenerator], *, steps: int, samples: int,
                seed: int) -> list[Method]:
    """The rows for one source: baselines, each generator's coarse prior (and its noise- and
    copy-texture twins when it matches texture), the generators (and their see-through mode on
    radiographs)."""
    any_gen = next(iter(gens.values()))
    rows = [Method(POSITIVE, lambda im, m: [im]),
            Method(BIHARMONIC, lambda im, m: [any_gen.generate([im], [m], method="biharmonic")[0][0]
                                             .image])]
    for name, gen in gens.items():
        coarse = coarse_prior(gen)
        if coarse is not None:
            rows.append(Method(f"coarse prior ({name})", _sampler(coarse, 1, seed, 1)))
        noise = noise_texture(gen)
        if noise is not None:
            rows.append(Method(f"noise texture ({name})", _sampler(noise, 1, seed, samples),
                               goals=True))
        copy = copy_texture(gen)
        if copy is not None:
            rows.append(Method(f"copy texture ({name})", _sampler(copy, 1, seed, samples),
                               goals=True))
        rows.append(Method(name, _sampler(gen, steps, seed, samples), goals=True))
        if SOURCES[source].modality == "xray":
            rows.append(Method(f"{name} see-through σ=1", _sampler(gen, steps, seed, samples, 1.0),
                               goals=True))
    return rows


def _sampler(gen: NegativeGenerator, steps: int, seed: int, samples: int, see_through: float = 0.0):
    def run(image: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        res = gen.generate([image], [mask], num_samples=samples, seed=seed, steps=steps,
                           dilation_px=DILATION_PX, see_through_px=see_through)[0]
        return [r.image for r in res]

    return run
