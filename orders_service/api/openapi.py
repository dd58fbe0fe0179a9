"""The published OpenAPI 3.1 document and its Swagger UI, served without any CDN.

Litestar builds the document from the handlers. What it cannot express there is added
once, at start: the ``Retry-After`` header of every 503, the ``X-Request-ID`` header of every
response, a ``default`` problem-details response (a URL that matches no route answers 404, a
method a path lacks 405, both as problem details), and HEAD operations without response
bodies. Swagger UI's files come from the ``swagger-ui-py`` package and are served
by the service itself, so the docs page works in clusters without internet access.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

from litestar import Litestar, Router
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import (
    Components,
    OpenAPI,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Parameter,
    Reference,
    Schema,
    SecurityScheme,
)
from litestar.openapi.spec.enums import OpenAPIType
from litestar.static_files import create_static_files_router

from orders_service.api.bearer_guard import BEARER_SCHEME, BEARER_SECURITY
from orders_service.api.problem_details import RETRY_AFTER_SECONDS
from orders_service.api.user_guard import GATEWAY_USER_SCHEME, GATEWAY_USER_SECURITY
from orders_service.auth.refusals import DESCRIPTIONS
from orders_service.causes import SIGNING_KEYS_UNAVAILABLE
from orders_service.observability.request_log import MAX_REQUEST_ID_LENGTH, REQUEST_ID_HEADER

SCHEMA_PATH = "/schema"
SWAGGER_ASSETS_PATH = f"{SCHEMA_PATH}/swagger-ui"
PROBLEM_MEDIA_TYPE = "application/problem+json"

RETRY_AFTER = OpenAPIHeader(
    description="Seconds to wait before retrying.",
    schema=Schema(type=OpenAPIType.INTEGER, minimum=0),
    example=int(RETRY_AFTER_SECONDS),
)

REQUEST_ID = OpenAPIHeader(
    description=f"The request's {REQUEST_ID_HEADER} header when it was 1 to {MAX_REQUEST_ID_LENGTH} printable ASCII "
    "characters, else an id the service made; every log line about the request carries it.",
    schema=Schema(type=OpenAPIType.STRING, min_length=1, max_length=MAX_REQUEST_ID_LENGTH),
    example="0f8e2c5d7a9b4e61a3c2d1b0e9f8a7c6",
)


def swagger_ui_directory() -> Path:
    """Swagger UI's static files, shipped by the ``swagger-ui-py`` package (found without importing it)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - a runtime dependency
        raise RuntimeError("the swagger-ui-py package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def openapi_config(version: str, *, bearer: bool = False) -> OpenAPIConfig:
    """The document's configuration; ``bearer`` (AUTH_MODE=jwt): the signed token's scheme instead of X-User's."""
    assets = SWAGGER_ASSETS_PATH
    security: dict[str, SecurityScheme | Reference] = (
        {BEARER_SCHEME: BEARER_SECURITY} if bearer else {GATEWAY_USER_SCHEME: GATEWAY_USER_SECURITY}
    )
    return OpenAPIConfig(
        title="Orders service",
        version=version,
        path=SCHEMA_PATH,
        render_plugins=[
            SwaggerRenderPlugin(
                js_url=f"{assets}/swagger-ui-bundle.js",
                css_url=f"{assets}/swagger-ui.css",
                standalone_preset_js_url=f"{assets}/swagger-ui-standalone-preset.js",
                favicon=f"<link rel='icon' type='image/png' href='{assets}/favicon-32x32.png'>",
            )
        ],
        components=Components(security_schemes=security),
    )


def swagger_assets_router() -> Router:
    return create_static_files_router(
        path=SWAGGER_ASSETS_PATH, directories=[swagger_ui_directory()], include_in_schema=False
    )


def complete_document(app: Litestar) -> None:
    """Startup hook: add to the built document what the handlers cannot declare."""
    document = app.openapi_schema
    for path in (document.paths or {}).values():
        for operation in (path.get, path.head, path.post, path.put, path.patch, path.delete):
            if operation is not None:
                _complete_operation(operation, problem_schema=_problem_schema(operation))
        if path.head is not None:
            _without_bodies(path.head)


def _without_bodies(operation: Operation) -> None:
    """A HEAD operation answers as its GET does, headers included, without any body."""
    responses = operation.responses or {}
    for status, response in responses.items():
        if isinstance(response, OpenAPIResponse):
            responses[status] = dataclasses.replace(response, content=None)


def _problem_schema(operation: Operation) -> Schema | Reference | None:
    for response in (operation.responses or {}).values():
        if isinstance(response, OpenAPIResponse) and response.content and PROBLEM_MEDIA_TYPE in response.content:
            return response.content[PROBLEM_MEDIA_TYPE].schema
    return None


def _complete_operation(operation: Operation, problem_schema: Schema | Reference | None) -> None:
    responses = operation.responses if operation.responses is not None else {}
    if problem_schema is not None and "default" not in responses:
        responses["default"] = OpenAPIResponse(
            description="Any other error as problem details, e.g. 404 for a URL that matches no route and 405 "
            "for a method the path does not support.",
            content={PROBLEM_MEDIA_TYPE: OpenAPIMediaType(schema=problem_schema)},
        )
    for status, response in responses.items():
        if not isinstance(response, OpenAPIResponse):
            continue
        response.headers = {**(response.headers or {}), REQUEST_ID_HEADER: REQUEST_ID}
        if status == "503":
            response.headers["Retry-After"] = RETRY_AFTER
    operation.responses = responses


WWW_AUTHENTICATE = OpenAPIHeader(
    description='RFC 6750\'s challenge: `Bearer realm="…"`, with `error="invalid_token"` and an '
    "`error_description` unless the token was missing.",
    schema=Schema(type=OpenAPIType.STRING),
    example='Bearer realm="orders", error="invalid_token", error_description="the token has expired"',
)
BEARER_401 = (
    "No valid bearer token; `reason` says why ("
    + ", ".join(f"`{reason}`" for reason in DESCRIPTIONS)
    + "). X-User is ignored."
)
KEYS_503 = (
    f" `{SIGNING_KEYS_UNAVAILABLE}`: the token names a signing key the service has not got and cannot fetch now "
    "(AUTH_JWKS_URL down): it cannot tell whether the token is good."
)


# In the signed mode X-User is ignored: the default mode's wording of it, as the signed mode says it.
SIGNED_MODE_WORDING = (
    (", or a bad X-User header.", "."),
    (", a bad X-User header,", ","),
    ("a bad X-User / Idempotency-Key", "a bad Idempotency-Key"),
    ("Scoped to the X-User;", "Scoped to the token's user;"),
    ("The X-User that placed the order.", "The user that placed the order (the Gateway's token names it)."),
)


def _in_signed_mode_words(description: str | None) -> str | None:
    for default, signed in SIGNED_MODE_WORDING:
        description = description.replace(default, signed) if description else description
    return description


def _reword_for_signed_mode(document: OpenAPI) -> None:
    """The descriptions of operations, their parameters and responses, and the schemas' fields, in the signed mode's
    words (``SIGNED_MODE_WORDING``)."""
    for path in (document.paths or {}).values():
        for operation in (path.get, path.head, path.post, path.put, path.patch, path.delete):
            if operation is None:
                continue
            operation.description = _in_signed_mode_words(operation.description)
            for parameter in operation.parameters or []:
                if isinstance(parameter, Parameter):
                    parameter.description = _in_signed_mode_words(parameter.description)
                    if isinstance(parameter.schema, Schema):
                        parameter.schema.description = _in_signed_mode_words(parameter.schema.description)
            for response in (operation.responses or {}).values():
                if isinstance(response, OpenAPIResponse):
                    response.description = _in_signed_mode_words(response.description) or ""
    for schema in (document.components.schemas or {}).values():
        for field in (schema.properties or {}).values() if isinstance(schema, Schema) else ():
            if isinstance(field, Schema):
                field.description = _in_signed_mode_words(field.description)


def declare_bearer_security(app: Litestar) -> None:
    """Startup hook (AUTH_MODE=jwt), after ``complete_document``: the operations need the signed token, their 401s
    carry the refusal's reason and challenge, their 503s may say the signing keys are out of reach."""
    document = app.openapi_schema
    for path in (document.paths or {}).values():
        for operation in (path.get, path.head, path.post, path.put, path.patch, path.delete):
            if operation is None or not operation.security:
                continue
            operation.security = [{BEARER_SCHEME: []}]
            for status, response in (operation.responses or {}).items():
                if not isinstance(response, OpenAPIResponse):
                    continue
                if status == "401":
                    response.description = BEARER_401
                    response.headers = {**(response.headers or {}), "WWW-Authenticate": WWW_AUTHENTICATE}
                elif status == "503":
                    response.description += KEYS_503
    _reword_for_signed_mode(document)
    problem = (document.components.schemas or {}).get("ProblemDetails")
    reason = (problem.properties or {}).get("reason") if problem is not None else None
    if isinstance(reason, Schema) and reason.enum is not None:
        reason.enum = [*reason.enum[:-1], *DESCRIPTIONS, SIGNING_KEYS_UNAVAILABLE, reason.enum[-1]]
        reason.description = (reason.description or "") + " Or why the bearer token was refused (401)."
