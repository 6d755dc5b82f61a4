"""``/docs`` (Swagger UI) and ``/redoc``, served from the files the ``fastapi-offline`` wheel ships
(Swagger UI and ReDoc, under their licences), so they work on a machine with no internet.

The one external URL in ReDoc's bundle (its "powered by" logo on a CDN) is replaced, when the file is
served, by the local icon: no page of the docs makes a request that leaves the server (a browser test
checks it).
"""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response

from api.errors import not_found

router = APIRouter(include_in_schema=False)

STATIC = "/docs-static"
_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
_REPLACED = {b"https://cdn.redoc.ly/redoc/logo-mini.svg": f"{STATIC}/favicon.png".encode()}
SWAGGER_PARAMETERS = {"validatorUrl": None, "persistAuthorization": True}  # no validator badge (external)


@lru_cache
def asset(name: str) -> bytes:
    data = (files("fastapi_offline") / "static" / name).read_bytes()
    for old, new in _REPLACED.items():
        data = data.replace(old, new)
    return data


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


@router.get("/docs")
def swagger(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        swagger_js_url=f"{root}{STATIC}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{STATIC}/swagger-ui.css",
        swagger_favicon_url=f"{root}{STATIC}/favicon.png",
        swagger_ui_parameters=SWAGGER_PARAMETERS,
    )


@router.get("/docs/oauth2-redirect")
def swagger_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    root = _root(request)
    return get_redoc_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{root}{STATIC}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{STATIC}/favicon.png",
        with_google_fonts=False,
    )


@router.get(STATIC + "/{name}")
def static_asset(name: str) -> Response:
    if name not in _ASSETS:
        raise not_found("file")
    return Response(asset(name), media_type=_ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})
