"""``python -m api``: serve the generator with settings from the environment (NEG_API_*).

Before serving, the settings are checked (``api.settings.settings_from_env``: unknown
``NEG_API_*`` names, bad values; ``api.service.check_startup``: generator, LoRA, device, store
folder): a mistake is one ``error:`` line naming the variable, exit status 2, instead of a
service that starts and then answers 503 for ever.
"""

from __future__ import annotations

import logging

from api.service import check_startup
from api.settings import settings_from_env


def main() -> None:
    settings = settings_from_env()
    check_startup(settings)
    import uvicorn

    from api.main import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                access_log=settings.access_log)


if __name__ == "__main__":
    from shared.cli import run

    run(main)
