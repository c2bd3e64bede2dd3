"""The API's documents and its interactive page, served by the node itself.

`/schema` (and `/schema/swagger`, and `/docs`, which redirects there) is
Swagger UI with its scripts and styles from the `swagger-ui-py` package,
under `/schema/assets/`: the page works with no network, as a node on a
closed network or a laptop offline has none. `/schema/openapi.json` and
`/schema/openapi.yaml` are the document.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Final

from litestar import get
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, SwaggerRenderPlugin, YamlRenderPlugin
from litestar.response import Redirect
from litestar.static_files import create_static_files_router

from messages import ConfigError

SCHEMA: Final = "/schema"
ASSETS: Final = f"{SCHEMA}/assets"
_PAGE: Final = f"{SCHEMA}/swagger"


def _swagger_ui() -> Path:
    """Swagger UI's files, as the `swagger-ui-py` package ships them (without importing it)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("http", "swagger-ui-py is not installed (pip install -e .)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def openapi_config() -> OpenAPIConfig:
    """The document's settings, its page on local assets."""
    page = SwaggerRenderPlugin(
        js_url=f"{ASSETS}/swagger-ui-bundle.js",
        css_url=f"{ASSETS}/swagger-ui.css",
        standalone_preset_js_url=f"{ASSETS}/swagger-ui-standalone-preset.js",
        path=["/", "/swagger"],
    )
    return OpenAPIConfig(
        title="actorfleet",
        version="1",
        path=SCHEMA,
        description="Agents of this node and its inference pool.",
        render_plugins=[page, JsonRenderPlugin(), YamlRenderPlugin()],
    )


def docs_routes() -> list[Any]:
    """The page's assets and `/docs`."""

    @get("/docs", include_in_schema=False, status_code=302)
    async def docs() -> Redirect:
        return Redirect(_PAGE)

    assets = create_static_files_router(
        path=ASSETS, directories=[_swagger_ui()], include_in_schema=False, name="schema-assets"
    )
    return [assets, docs]
