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


def run(main: Callable[[], object], *, hard_exit: bool = False) -> NoReturn:
    """Call ``main()`` and exit with its status (an int it returns, else 0); 2 with ``error: ...``
    on a user error.

    ``hard_exit``: leave through ``os._exit`` after flushing, for scripts that may run as gloo
    processes (design §7: torch/gloo sometimes aborts at interpreter teardown after the work is done).
    """
    try:
        result = main()
        code = result if isinstance(result, int) else 0
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        code = 2
    sys.stdout.flush()
    sys.stderr.flush()
    if hard_exit:
        os._exit(code)
    sys.exit(code)
