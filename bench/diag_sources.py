"""What the issue-18 fill diagnostics (``diag_symmetric_prior.py``, ``diag_kriging_prior.py``)
share: their command line (sizes, items, seed, *training* sources only — a held-out test source is
refused), the paired CI cell, and the loop that runs every size × source and writes the report
(keeping a hand-written reading below the marker ``bench.bench_generator._kept_reading`` reads)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.bench_generator import _kept_reading
from shared.benchmark.sources import HELD_OUT, SOURCES, TRAIN
from shared.metrics import paired_bootstrap_ci


def parser(description: str) -> argparse.ArgumentParser:
    """``--sizes --n --seed --sources --out`` with the diagnostics' defaults."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--n", type=int, default=15)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sources", nargs="+", default=[s for s in TRAIN if SOURCES[s].modality != "photo"])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--held-out", action="store_true",
                   help="run on the held-out test sources instead (once, after a rule picked a row)")
    return p


def parse(p: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parsed arguments; a held-out (test) source is a usage error unless ``--held-out`` asks for
    all of them (the one test run a diagnostic's rule allows)."""
    args = p.parse_args(argv)
    if args.held_out:
        args.sources = list(HELD_OUT)
        return args
    held = [s for s in args.sources if SOURCES[s].held_out]
    if held:
        p.error(f"held-out (test) sources are not for a diagnostic: {', '.join(held)}")
    return args


def ci(a, b) -> str:
    """``mean [lo, hi]`` of the paired difference a − b (bootstrap 95 % CI), in dB."""
    mean, lo, hi = paired_bootstrap_ci(np.asarray(a), np.asarray(b))
    return f"{mean:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def run(args: argparse.Namespace, header: list[str], measure: Callable[[str, int], dict],
        table: Callable[[int, dict], list[str]]) -> None:
    """``measure(source, size)`` for every size × source, ``table(size, results)`` per size, the
    report printed and written to ``args.out`` (its hand-written reading kept)."""
    t0 = time.time()
    lines = list(header)
    for size in args.sizes:
        results = {}
        for source in args.sources:
            results[source] = measure(source, size)
            print(size, source, "done", flush=True)
        lines += table(size, results)
    lines.append(f"Total wall time {time.time() - t0:.0f} s (one thread).")
    text = "\n".join(lines) + "\n"
    if args.out:
        text += _kept_reading(args.out)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text)


def command(script: str, argv: list[str] | None) -> str:
    return f"Command: `python bench/{script} " + " ".join(sys.argv[1:] if argv is None else argv) + "`"


def main(doc: str, script: str, title: str, rows: str, measure: Callable[[str, int, int, int], dict],
         table: Callable[[int, dict], list[str]], argv: list[str] | None) -> None:
    """The whole of a diagnostic with the common options only: the report headed by ``title``,
    the command and ``rows`` (its ``{seed}`` filled in), ``measure(source, size, n, seed)`` for
    every size × source, ``table`` per size."""
    args = parse(parser(doc.splitlines()[0]), argv)
    lines = [title, "", command(script, argv), "", rows.replace("{seed}", str(args.seed)), ""]
    run(args, lines, lambda source, size: measure(source, size, args.n, args.seed), table)
