"""The generator service: ``create_app(settings)``; ``uvicorn api.main:app`` serves the default.

The lifespan builds the store and starts loading the generator in a thread; ``/readyz`` turns
200 once it is loaded and the batching worker runs. Tests swap the generator with
``app.dependency_overrides[build_generator] = lambda settings: tiny_generator``.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Response
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from api.deps import StateDep, require_api_key
from api.errors import ERROR_DOCS, ApiError, install_handlers
from api.metrics import MetricsMiddleware, ServiceMetrics
from api.routers import negatives
from api.schemas import ErrorResponse, HealthResponse, ReadyResponse
from api.service import ServiceState, build_generator, check_startup
from api.settings import Settings, settings_from_env


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app; settings default to the environment (``NEG_API_*``), checked as ``python -m
    api`` checks them (so ``uvicorn api.main:app`` refuses what it could never serve)."""
    if settings is None:
        settings = settings_from_env()
        check_startup(settings)
    metrics = ServiceMetrics(max_batch=settings.max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state = ServiceState(settings, metrics)
        app.state.service = state
        state.start_loading(app.dependency_overrides.get(build_generator, build_generator))
        try:
            yield
        finally:
            await state.close()

    protect = settings.protect_docs and settings.api_key is not None
    app = FastAPI(
        title="Negative generator service",
        version="0.1.0",
        summary="Tumour-removed negatives from a diffusion generator, content-addressed.",
        lifespan=lifespan,
        **({"docs_url": None, "redoc_url": None, "openapi_url": None} if protect else {}),
    )
    if protect:  # the same pages, behind the bearer token
        keyed = [Depends(require_api_key)]

        @app.get("/openapi.json", include_in_schema=False, dependencies=keyed)
        async def openapi_json() -> JSONResponse:
            return JSONResponse(app.openapi())

        @app.get("/docs", include_in_schema=False, dependencies=keyed)
        async def swagger():
            return get_swagger_ui_html(openapi_url="/openapi.json", title=app.title)

        @app.get("/redoc", include_in_schema=False, dependencies=keyed)
        async def redoc():
            return get_redoc_html(openapi_url="/openapi.json", title=app.title)
    install_handlers(app, metrics.on_error)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.include_router(negatives.router)

    @app.get("/healthz", response_model=HealthResponse, tags=["ops"], summary="Process is alive")
    async def healthz() -> dict:
        return {"status": "alive"}

    @app.get(
        "/readyz", response_model=ReadyResponse, tags=["ops"], summary="Generator loaded",
        responses={503: {"model": ErrorResponse, "description": ERROR_DOCS[503]}},
    )
    async def readyz(state: StateDep) -> dict:
        if not state.ready:
            why = state.load_error or "the generator is still loading"
            raise ApiError(503, "not_ready", why, {"Retry-After": str(settings.retry_after_s)})
        return {"status": "ready", "checkpoint": state.checkpoint, "device": settings.device,
                "max_batch": settings.max_batch}

    @app.get(
        "/metrics", tags=["ops"], summary="Prometheus metrics", response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Text format"}},
    )
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app.state.metrics = metrics
    app.state.settings = settings
    return app


def __getattr__(name: str):
    """``uvicorn api.main:app``: build the app from the environment on first access only."""
    if name == "app":
        return create_app()
    raise AttributeError(name)
