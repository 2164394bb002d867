"""Every refusal is JSON ``{"detail": message, "code": code}``; ``code`` is stable for clients."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from captioner.serve.schemas import ErrorResponse

HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large"}


#: Missing required fields with a code of their own (other validation errors: ``invalid_request``).
MISSING_FIELDS = {"image": ("no_image", "no image uploaded: send files in the 'image' field")}
ERROR_REF = "#/components/schemas/ErrorResponse"


class ApiError(Exception):
    """An error answered as ``{"detail": detail, "code": code}`` with HTTP ``status``."""

    def __init__(
        self, status: int, code: str, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        body = {"detail": exc.detail, "code": exc.code}
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return JSONResponse(
            {"detail": str(exc.detail), "code": code},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        code = "invalid_request"
        for error in exc.errors():
            loc = tuple(error.get("loc", ()))[1:]
            if error.get("type") == "missing" and len(loc) == 1 and loc[0] in MISSING_FIELDS:
                code, message = MISSING_FIELDS[str(loc[0])]
                problems.insert(0, message)
                continue
            where = ".".join(str(part) for part in loc) or "request"
            problems.append(f"{where}: {error.get('msg', 'invalid')}")
        return JSONResponse(
            {"detail": "; ".join(problems) or "invalid request", "code": code}, status_code=422
        )


def refusals(statuses: dict[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of an endpoint's refusals: status -> its description (and codes)."""
    return {
        status: {"model": ErrorResponse, "description": description}
        for status, description in statuses.items()
    }


def use_error_model(schema: dict[str, Any]) -> dict[str, Any]:
    """Replace FastAPI's default 422 body (a list of errors) by ours, in an OpenAPI ``schema``.

    Endpoints list their refusals with ``refusals``; this covers any that does not list its 422,
    whose body is still ``ErrorResponse`` (see ``add_error_handlers``).
    """
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            answer = operation.get("responses", {}).get("422", {})
            body = answer.get("content", {}).get("application/json", {})
            if body.get("schema", {}).get("$ref", "").endswith("/HTTPValidationError"):
                body["schema"] = {"$ref": ERROR_REF}
                answer["description"] = "Invalid request (`invalid_request`)"
                components.setdefault("ErrorResponse", ErrorResponse.model_json_schema())
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    return schema
