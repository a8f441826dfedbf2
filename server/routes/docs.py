"""``/docs``: Swagger UI from the ``swagger-ui-bundle`` package, so the API docs load with no
network beyond this service (no CDN); the page's assets are served under ``/docs-assets``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from swagger_ui_bundle import swagger_ui_path

__all__ = ["ASSETS_DIR", "ASSETS_URL", "router"]

ASSETS_DIR = str(swagger_ui_path)
ASSETS_URL = "/docs-assets"

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def swagger_ui() -> HTMLResponse:
    """Swagger UI for ``/openapi.json``, every asset from this service."""
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="shardfeed API",
        swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
    )
