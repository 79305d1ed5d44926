"""Joining the processes that ``accelerate launch`` started, with or without a GPU.

accelerate only forms a process group on a machine without CUDA when it is asked for the CPU
(``cpu=True``): otherwise every launched process sees ``num_processes == 1`` and silently runs
the whole job on its own — duplicated work, and processes racing to write the same files.
"""

from __future__ import annotations

import os

import torch


def use_cpu() -> bool:
    """The ``cpu=`` flag for ``Accelerator``/``PartialState``: True when no CUDA device exists."""
    return not torch.cuda.is_available()


def launched_world_size() -> int:
    """``WORLD_SIZE`` set by ``accelerate launch``/torchrun (1 when the script is run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def check_joined(num_processes: int) -> None:
    """Raise when accelerate joined fewer processes than were launched."""
    launched = launched_world_size()
    if num_processes != launched:
        raise RuntimeError(
            f"{launched} processes were launched but accelerate joined {num_processes}: "
            "refusing to run each one unsharded (pass cpu=shared.launch.use_cpu() on CPU machines)"
        )
