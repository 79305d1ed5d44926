"""``python -m api``: serve the generator with settings from the environment (NEG_API_*);
``--host`` / ``--port`` override NEG_API_HOST / NEG_API_PORT (an unknown option is refused, never
ignored: a typo'd ``--prot`` must not leave the service on a port the user did not ask for).

Before serving, the settings are checked (``api.settings.settings_from_env``: unknown
``NEG_API_*`` names, bad values; ``api.service.check_startup``: generator, LoRA, device, store
folder): a mistake is one ``error:`` line naming the variable, exit status 2, instead of a
service that starts and then answers 503 for ever.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from api.service import check_startup
from api.settings import settings_from_env


def _port(value: str) -> int:
    if not value.isdigit() or not 0 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 0-65535, got {value!r}")
    return int(value)


def settings_from_args(argv: Sequence[str] | None = None):
    """The service's settings: NEG_API_* from the environment, ``--host`` / ``--port`` on top
    (both checked as the environment's values are)."""
    p = argparse.ArgumentParser(prog="python -m api", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", help="address to bind (NEG_API_HOST; default 127.0.0.1)")
    p.add_argument("--port", type=_port, help="port to bind (NEG_API_PORT; default 8000)")
    args = p.parse_args(argv)
    for name, value in (("NEG_API_HOST", args.host), ("NEG_API_PORT", args.port)):
        if value is not None:
            os.environ[name] = str(value)
    return settings_from_env()


def main(argv: Sequence[str] | None = None) -> None:
    settings = settings_from_args(argv)
    check_startup(settings)
    import uvicorn

    from api.main import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                access_log=settings.access_log)


if __name__ == "__main__":
    from shared.cli import run

    run(main)
