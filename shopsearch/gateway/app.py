"""`shopsearch gateway`: the HTTP/JSON API a shop front end calls, in front of Triton.

Why FastAPI (on Starlette, served by uvicorn): one typed pydantic schema both validates every
request and generates the OpenAPI document, and Starlette takes a plain ASGI middleware for the
checks that must happen before any parsing. Every client fault is a 4xx whose body names the field;
Triton stays on localhost and only ever receives well-formed requests built here.
"""

from __future__ import annotations

import contextlib

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from shopsearch.gateway.backend import Backend, UpstreamError
from shopsearch.gateway.guard import RateLimiter, RequestGuard
from shopsearch.gateway.schema import (
    ErrorResponse, GatewayLimits, Product, RecommendRequest, RecommendResponse, SearchRequest, SearchResponse,
    SearchResult, SimilarRequest,
)

ERRORS = {status: {"model": ErrorResponse} for status in (400, 413, 415, 429, 502, 503, 504)}


def _field(error: dict) -> str:
    """'body.queries.2' from pydantic's location, without the parts that only say which union arm."""
    parts = [str(p) for p in error.get("loc", ()) if not str(p).startswith(("function-", "constrained-"))]
    return ".".join(parts) or "body"


def _error(status: int, field: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"field": field, "message": message}}, status_code=status, headers=headers)


def _recommendation(rec) -> RecommendResponse:
    items = [Product(product_id=p, title=t, score=s) for p, t, s in zip(rec.product_ids, rec.titles, rec.scores)]
    return RecommendResponse(items=items, strategy=rec.strategy, unknown_ids=rec.unknown_ids)


def _json(model) -> Response:
    return Response(model.model_dump_json(), media_type="application/json")


def create_app(backend: Backend, limits: GatewayLimits = GatewayLimits()) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        close = getattr(backend, "close", None)
        if close is not None:
            await close()  # the gRPC channel, on the loop that made it

    app = FastAPI(title="shopsearch product API", version="1",
                  description="Product search, next-item recommendations and similar items, served by Triton.",
                  docs_url=None, redoc_url=None, lifespan=lifespan)
    app.add_middleware(RequestGuard, limits=limits, limiter=RateLimiter(limits.rate_per_s, limits.burst))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        if first.get("type") == "json_invalid":
            return _error(400, "body", f"not valid JSON ({first.get('ctx', {}).get('error', 'decode error')})")
        return _error(400, _field(first), str(first.get("msg", "invalid request")))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "path" if exc.status_code in (404, 405) else "body", str(exc.detail))

    @app.exception_handler(UpstreamError)
    async def upstream(request: Request, exc: UpstreamError) -> JSONResponse:
        return _error(exc.status, exc.field, exc.message, {"retry-after": "1"} if exc.status == 503 else None)

    # Handlers build the typed response and return it serialized: FastAPI would otherwise validate
    # the same object a second time against `response_model`, which then only documents it.
    @app.post("/v1/search", response_model=SearchResponse, responses=ERRORS)
    async def search(request: SearchRequest) -> Response:
        texts = request.texts()
        hits = await backend.search(texts, request.k, request.collapse, request.filters())
        return _json(SearchResponse(results=[SearchResult(query=q, hits=[Product(**vars(h)) for h in row])
                                             for q, row in zip(texts, hits)]))

    @app.post("/v1/recommend", response_model=RecommendResponse, responses=ERRORS)
    async def recommend(request: RecommendRequest) -> Response:
        return _json(_recommendation(await backend.recommend(request.history, request.k, request.exclude)))

    @app.post("/v1/similar", response_model=RecommendResponse, responses=ERRORS)
    async def similar(request: SimilarRequest) -> Response:
        return _json(_recommendation(await backend.similar(request.item_id, request.k, request.exclude)))

    @app.get("/v1/ready", responses={503: {"model": ErrorResponse}})
    async def ready() -> JSONResponse:
        if await backend.ready():
            return JSONResponse({"ready": True})
        return _error(503, "server", "the search backend is not ready")

    return app
