"""``python -m api``: serve the generator with settings from the environment (NEG_API_*)."""

from __future__ import annotations

import logging

import uvicorn

from api.main import create_app
from api.settings import Settings


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level="info",
                access_log=settings.access_log)


if __name__ == "__main__":
    main()
