"""FastAPI dependencies: the service state and the optional bearer-token check."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from api.service import ServiceState

_bearer = HTTPBearer(auto_error=False, description="Needed only when NEG_API_API_KEY is set.")


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


StateDep = Annotated[ServiceState, Depends(get_state)]


def require_api_key(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless no key is configured or the bearer token equals it."""
    expected = state.settings.api_key
    if expected is None:
        return
    token = credentials.credentials if credentials is not None else ""
    if not hmac.compare_digest(token.encode(), expected.get_secret_value().encode()):
        raise ApiError(
            401, "unauthorized", "send Authorization: Bearer <api key>",
            headers={"WWW-Authenticate": "Bearer"},
        )


def get_ready_state(state: StateDep) -> ServiceState:
    """The state, once the generator is loaded (503 not_ready before)."""
    if not state.ready:
        why = state.load_error or "the generator is still loading"
        raise ApiError(
            503, "not_ready", why, headers={"Retry-After": str(state.settings.retry_after_s)}
        )
    return state


ReadyStateDep = Annotated[ServiceState, Depends(get_ready_state)]
