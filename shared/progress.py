"""Progress a person can read: a tqdm bar on a terminal, one plain line every N steps elsewhere.

A bar redrawn into a log file or a CI pipe becomes thousands of carriage-return fragments (one
per step); :func:`progress` gives a tqdm bar only when stderr is a terminal and otherwise a
:class:`LineProgress` that prints ``desc: step/total (pct) elapsed, ETA, postfix`` at most every
``every`` steps (and at the end). Both support ``update``, ``set_postfix``, ``close`` and
iteration, which is all the project's loops use.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO


class LineProgress:
    """tqdm's interface, printing one line per ``every`` steps to ``file``."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None,
                 initial: int = 0, desc: str = "", every: int = 50, disable: bool = False,
                 file: TextIO | None = None) -> None:
        self.iterable = iterable
        self.total = total if total is not None else (
            len(iterable) if hasattr(iterable, "__len__") else None)
        self.n = initial
        self.desc = desc
        self.every = max(1, every)
        self.disable = disable
        self.file = file if file is not None else sys.stderr
        self.postfix = ""
        self._start = time.perf_counter()
        self._initial = initial
        self._last_printed = initial
        self._closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in kwargs.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n - self._last_printed >= self.every:
            self._print()

    def close(self) -> None:
        if not self._closed and self.n != self._last_printed:
            self._print()
        self._closed = True

    def line(self) -> str:
        """The line that would be printed now."""
        elapsed = time.perf_counter() - self._start
        done = self.n - self._initial
        head = f"{self.desc}: {self.n}"
        if self.total:
            head += f"/{self.total} ({100 * self.n / self.total:.0f}%)"
        parts = [head]
        parts.append(f"{elapsed:.0f} s")
        if self.total and done > 0:
            parts.append(f"ETA {elapsed / done * (self.total - self.n):.0f} s")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def _print(self) -> None:
        self._last_printed = self.n
        if not self.disable:
            print(self.line(), file=self.file, flush=True)


def progress(iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0,
             desc: str = "", every: int = 50, disable: bool = False):
    """A tqdm bar when stderr is a terminal, else a :class:`LineProgress` printing every
    ``every`` steps."""
    if sys.stderr.isatty():
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, initial=initial, desc=desc, disable=disable)
    return LineProgress(iterable, total=total, initial=initial, desc=desc, every=every,
                        disable=disable)
