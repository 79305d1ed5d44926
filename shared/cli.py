"""Command-line entry points: a user's mistake ends in one line naming the problem, exit status 2.

Bad configs, missing data folders and unreadable inputs raise the project's ``ConfigError`` /
``InputError`` (or ``FileNotFoundError``) with a message that names the problem; a traceback
through the training loop adds nothing to it. Every other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn

from shared.config import ConfigError
from shared.io import InputError

USER_ERRORS = (ConfigError, InputError, FileNotFoundError)


def brief(err: BaseException, limit: int = 200) -> str:
    """``Type: first informative line`` of an exception from a library, for a one-line error.

    torch's weights-only unpickler prefixes its reason with a paragraph about PyTorch 2.6's
    default; the reason itself (``Unsupported operand 205``, ``Unsupported global: ...``) is kept.
    """
    text = str(err)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def load_state_mismatch(err: RuntimeError, limit: int = 300) -> str:
    """The first two reasons of torch's ``load_state_dict`` error (``size mismatch for X: ...``,
    missing / unexpected keys) on one line, without its header line."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    detail = "; ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else "")
    return detail[:limit]


def check_torch_device(value: str, option: str) -> str:
    """``value`` if it names a torch device this machine has (``cpu``, ``cuda``, ``cuda:N``,
    ``mps``), else ConfigError naming ``option`` (e.g. ``--device``) and the value. Cheap: imports
    torch, creates no CUDA context."""
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"{option} {value!r} is not a torch device: expected cpu, cuda, cuda:N "
                          "or mps") from None
    if device.type == "cpu":
        return value
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{option} {value}: no CUDA GPU is available on this machine "
                              f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                              "use cpu")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{option} {value}: this machine has {count} CUDA GPU(s), "
                              f"cuda:0..cuda:{count - 1}")
        return value
    if device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{option} {value}: MPS is not available on this machine; use cpu")
        return value
    raise ConfigError(f"{option} {value!r}: unsupported device type {device.type!r}; expected cpu, "
                      "cuda, cuda:N or mps")


def run(main: Callable[[], object], *, hard_exit: bool = False, resumes: bool = False) -> NoReturn:
    """Call ``main()`` and exit with its status (an int it returns, else 0); 2 with ``error: ...``
    on a user error; 130 with one ``interrupted`` line on Ctrl-C (``resumes``: the command picks
    up where it stopped when rerun with the same settings, and the line says so).

    ``hard_exit``: leave through ``os._exit`` after flushing, for scripts that may run as gloo
    processes (design §7: torch/gloo sometimes aborts at interpreter teardown after the work is done).
    """
    try:
        result = main()
        code = result if isinstance(result, int) else 0
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:  # was a traceback through whatever was running
        print("\ninterrupted" + ("; rerun the same command to resume where it stopped"
                                 if resumes else ""), file=sys.stderr)
        code = 130
    sys.stdout.flush()
    sys.stderr.flush()
    if hard_exit:
        os._exit(code)
    sys.exit(code)
