"""Content negotiation and rendering of `POST /negatives` answers (PNG, JSON or zip)."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence

from fastapi import Request, Response

from api.errors import ApiError
from api.schemas import NegativeInfo, NegativesResponse, Provenance
from api.service import Served

MEDIA_TYPES = {"json": "application/json", "png": "image/png", "zip": "application/zip"}
_BY_MEDIA = {v: k for k, v in MEDIA_TYPES.items()}


def choose_format(accept: str | None, explicit: str | None) -> str:
    """``explicit`` if given, else the Accept entry with the highest q we produce (JSON default)."""
    if explicit is not None:
        return explicit
    if not accept or not accept.strip():
        return "json"
    ranked = []
    for position, item in enumerate(accept.split(",")):
        parts = [p.strip() for p in item.split(";")]
        media, q = parts[0].lower(), 1.0
        for p in parts[1:]:
            if p.startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if q <= 0:
            continue
        if media in _BY_MEDIA:
            ranked.append((-q, position, _BY_MEDIA[media]))
        elif media in ("*/*", "application/*"):
            ranked.append((-q, position, "json" if media == "*/*" else "json"))
        elif media == "image/*":
            ranked.append((-q, position, "png"))
    if not ranked:
        raise ApiError(
            406, "not_acceptable",
            f"Accept {accept!r:.80} names none of {', '.join(MEDIA_TYPES.values())}",
        )
    return min(ranked)[2]


def _info(request: Request, sample: int, served: Served) -> NegativeInfo:
    return NegativeInfo(
        id=served.id,
        url=str(request.url_for("get_negative", negative_id=served.id)),
        meta_url=str(request.url_for("get_negative_meta", negative_id=served.id)),
        sample=sample,
        seed=int(served.meta["seed"]),
        scores=served.meta.get("scores", {}),
        cached=served.cached,
    )


def render(
    request: Request, fmt: str, served: Sequence[Served], provenance: Provenance
) -> Response:
    """Build the answer in the negotiated format."""
    cache = "hit" if all(s.cached for s in served) else "miss"
    headers = {"X-Negative-Ids": ",".join(s.id for s in served), "X-Cache": cache}
    if fmt == "png":
        first = served[0]
        headers |= {
            "X-Negative-Id": first.id,
            "X-Negative-Seed": str(first.meta["seed"]),
            "X-Negative-Scores": json.dumps(first.meta.get("scores", {}), sort_keys=True),
        }
        return Response(first.png, media_type="image/png", headers=headers)
    if fmt == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as archive:
            for s in served:
                archive.writestr(f"{s.id}.png", s.png)
            body = {
                "provenance": provenance.model_dump(),
                "negatives": [{**s.meta, "cached": s.cached} for s in served],
            }
            archive.writestr("metadata.json", json.dumps(body, sort_keys=True, indent=1))
        return Response(buf.getvalue(), media_type="application/zip", headers=headers)
    body = NegativesResponse(
        ids=[s.id for s in served],
        negatives=[_info(request, k, s) for k, s in enumerate(served)],
        provenance=provenance,
    )
    return Response(body.model_dump_json(), media_type="application/json", headers=headers)
