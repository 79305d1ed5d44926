"""The sharding protocol of the batch generators (``generator/generate.py``, ``generator/pairs.py``):
process ``r`` of ``n`` takes items ``r, r+n, …`` of a sorted list, writes one record per finished
item atomically (its presence means done, so a rerun resumes), and the main process merges the
records once every process is done. Results never depend on the number of processes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from shared.io import write_text_atomic
from shared.launch import check_joined, use_cpu
from shared.progress import progress

if TYPE_CHECKING:
    from accelerate import PartialState

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """The slice of a sorted work list one worker does: items ``index, index + count, …``.

    Items are assigned by position alone, so each is done by exactly one worker, and a worker must
    derive everything about an item (seeds included) from the item and its position in the *whole*
    list: then the results do not depend on ``count``.
    """

    index: int = 0  # this worker, 0 <= index < count
    count: int = 1  # workers sharing the list (accelerate processes, or --num-shards)

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index} of {self.count}: need 0 <= index < count")

    @classmethod
    def of(cls, state: PartialState) -> Shard:
        """This process's shard in an accelerate ``PartialState`` (rank of world size)."""
        return cls(state.process_index, state.num_processes)

    def take(self, items: Sequence[T]) -> list[tuple[int, T]]:
        """``(position in items, item)`` for this worker's items."""
        return list(enumerate(items))[self.index :: self.count]


def join_launch() -> PartialState:
    """This process's accelerate ``PartialState``, joined with every process ``accelerate launch``
    started (gloo on a CPU machine); a plain ``python`` run is one process of one."""
    from accelerate import PartialState

    state = PartialState(cpu=use_cpu())
    check_joined(state.num_processes)
    return state


def resolve_device(device: str, state: PartialState) -> str:
    """``device`` as given, or for ``"auto"`` this process's accelerate device (``cuda:r`` under
    ``accelerate launch``). The CPU is always ``"cpu"``: accelerate calls it ``cpu:0`` in a gloo
    group, and a generator placed on ``cpu:0`` gave scores that differ from ``cpu`` in the 7th
    digit, which would make a sharded run differ from a one-process run."""
    if device != "auto":
        return device
    return "cpu" if state.device.type == "cpu" else str(state.device)


def run_shard(
    items: Sequence[T],
    shard: Shard,
    work: Callable[[int, T], dict[str, Any]],
    *,
    records: Path,
    name: Callable[[T], str],
    current: Callable[[dict[str, Any]], bool] | None = None,
    desc: str = "items",
    show: bool = True,
) -> int:
    """Do ``shard``'s part of ``items``, one record per item; returns how many were (re)done.

    For each ``(i, item)`` of ``shard.take(items)``: unless ``records/<name(item)>.json`` exists
    (and, given ``current``, ``current(record)`` holds: a record of another configuration is
    redone) and was made from the item's files as they are now (:func:`source_sha256` of its
    ``image`` and ``mask``, kept in the record: an image rebuilt or replaced in place is redone),
    ``work(i, item)`` runs and its JSON-able record is written atomically, last, so its presence
    means the item is finished and a rerun resumes where a killed one stopped.
    """
    records.mkdir(parents=True, exist_ok=True)
    mine = shard.take(items)
    changed = 0

    def done(item: T) -> bool:
        nonlocal changed
        path = records / f"{name(item)}.json"
        if not path.is_file():
            return False
        record = json.loads(path.read_text())
        if current is not None and not current(record):
            return False
        if record.get("source_sha256") != source_sha256(item):
            changed += 1
            return False
        return True

    todo = [(i, it) for i, it in mine if not done(it)]
    for i, it in progress(todo, disable=not show, desc=desc, every=20):
        record = {**work(i, it), "source_sha256": source_sha256(it)}
        write_text_atomic(records / f"{name(it)}.json", json.dumps(record, sort_keys=True) + "\n")
    again = f" ({changed} redone: their image or mask changed since)" if changed else ""
    print(f"rank {shard.index}/{shard.count}: {len(todo)} processed{again}, {len(mine) - len(todo)} "
          "already done (resumed)", flush=True)  # items skipped for their mask: finalize's warning
    return len(todo)


def source_sha256(item: Any) -> str:
    """sha256 over the bytes of ``item.image`` and ``item.mask`` (what a record was made from);
    a file that cannot be read counts as changed (its record is redone and the reader names it)."""
    h = hashlib.sha256()
    for path in (item.image, item.mask):
        try:
            h.update(hashlib.sha256(Path(path).read_bytes()).digest())
        except OSError:
            h.update(b"unreadable")
    return h.hexdigest()


def finish(state: PartialState, finalize: Callable[[], object]) -> None:
    """Wait for every process, run ``finalize`` (the merge of the records) on the main one only,
    then wait again so that no process exits before the merged files exist."""
    state.wait_for_everyone()
    if state.is_main_process:
        finalize()
    state.wait_for_everyone()
