"""`serve --ui`: a playground page at ``/`` for trying the model in a browser. The page, its script
and its style ship in the package (serving/static/) and load nothing from elsewhere; the page calls
the server's own API (``/info`` for what the model serves, ``/v1/chat/completions`` streamed for
chat, ``/predict``, ``/tag``, ``/embed``... for the rest) with the key typed into it."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.responses import Response

# The page's files by path, with their media types: these load without the API key (a browser
# cannot send one for a page it opens); the calls the page makes need it like any client's.
FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/playground.js": ("playground.js", "text/javascript; charset=utf-8"),
    "/playground.css": ("playground.css", "text/css; charset=utf-8"),
}
PAGES = frozenset(FILES)


def install(app: FastAPI) -> None:
    """Add the page's routes to ``app`` (hidden from the OpenAPI schema: they are not the API)."""
    static = files("warmstart.serving") / "static"
    for path, (name, media_type) in FILES.items():
        body = (static / name).read_bytes()  # read once: the files are small and never change

        def page(body: bytes = body, media_type: str = media_type) -> Response:
            return Response(body, media_type=media_type, headers={"Cache-Control": "no-cache"})

        app.add_api_route(path, page, methods=["GET"], include_in_schema=False)
