"""A plain JSON API in the same server as the UI (Starlette routes handed to the FastAPI
app Gradio builds: ``launch(app_kwargs={"routes": json_routes(state)})``).

For scripts and services that want one HTTP request per query, without Gradio's upload,
queue and event stream::

    curl --data-binary @query.png 'http://127.0.0.1:7860/groco/api/search?k=12'
    curl 'http://127.0.0.1:7860/groco/api/more_like_this?item=shoes/0001.png&k=12'
    curl 'http://127.0.0.1:7860/groco/api/browse?page=1&folder=shoes&order=folder'

``search`` takes the image file's bytes as the request body and decodes them with the
app's :class:`groco.app.uploads.QueryDecoder` (groco's decoder, the same byte and pixel
caps). Query parameters: ``k``, ``label`` (a folder, or ``all``), ``min_score`` (cosine
cut-off, -1 for none), ``distinct`` (``1``: near copies collapsed, each group once). The
answer is ``{"results": [{"id", "relpath", "score", "label", "copies", "thumbnail"}], "ms":
server time}`` with ``copies`` the near copies hidden behind a result (``distinct``) and
``thumbnail`` a URL path on this server; serving several index directories, ``"missing":
{index directory: reason}`` names the shards left out of the answer;
a bad request gets HTTP 400 and ``{"error": "one line"}``. At most
``settings.concurrency`` requests run at once and ``settings.queue_size`` more wait, as
in the UI's queue; past that a request gets HTTP 429 (``Retry-After: 1``) at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from groco.app.state import ALL_LABELS, AppState
from groco.app.uploads import UploadError
from groco.index.api import Result

log = logging.getLogger("groco.app")

PREFIX = "/groco/api"


def file_url(path: Any) -> str:
    """The URL path Gradio serves an allowed file at."""
    return f"/gradio_api/file={quote(str(Path(path).resolve()))}"


class JsonApi:
    """The JSON routes over one :class:`AppState`."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self._limiter: anyio.CapacityLimiter | None = None
        self._admitted = 0  # running or waiting; changed only in the event loop

    def routes(self) -> list[Route]:
        return [Route(f"{PREFIX}/search", self.search, methods=["POST"]),
                Route(f"{PREFIX}/more_like_this", self.more_like_this, methods=["GET"]),
                Route(f"{PREFIX}/browse", self.browse, methods=["GET"])]

    async def _run(self, work: Callable[[], dict[str, Any]]) -> JSONResponse:
        settings = self.state.settings
        if self._limiter is None:  # made inside the server's event loop
            self._limiter = anyio.CapacityLimiter(settings.concurrency)
        if self._admitted >= settings.concurrency + settings.queue_size:
            return JSONResponse({"error": f"busy: {settings.queue_size} requests are already "
                                          "waiting; try again in a moment"},
                                status_code=429, headers={"Retry-After": "1"})
        started = time.perf_counter()
        self._admitted += 1
        try:
            answer = await anyio.to_thread.run_sync(work, limiter=self._limiter)
        except UploadError as error:
            return JSONResponse({"error": str(error)}, status_code=400)
        except Exception:  # noqa: BLE001 - a one-line answer, the traceback to the log
            log.exception("JSON API request failed")
            return JSONResponse({"error": "internal error (see the server log)"},
                                status_code=500)
        finally:
            self._admitted -= 1
        answer["ms"] = round((time.perf_counter() - started) * 1000, 2)
        return JSONResponse(answer)

    def _results(self, results: list[Result]) -> dict[str, Any]:
        rows = []
        for r in results:
            thumb = self.state.result_thumbnail(r)
            rows.append({"id": r.id, "relpath": r.relpath, "score": r.score, "label": r.label,
                         "copies": r.copies,
                         "thumbnail": file_url(thumb) if thumb is not None else None})
        missing = self.state.missing_shards()
        return {"results": rows, **({"missing": missing} if missing else {})}

    @staticmethod
    def _params(request: Request) -> tuple[str, str, str | None, str]:
        q = request.query_params
        return (q.get("k", str(12)), q.get("label", ALL_LABELS), q.get("min_score"),
                q.get("distinct", "0"))

    async def search(self, request: Request) -> JSONResponse:
        k, label, min_score, distinct = self._params(request)
        body = await request.body()
        name = request.query_params.get("name", "the upload")

        def work() -> dict[str, Any]:
            self.state.check_k(k)
            self.state.check_label(label)
            self.state.check_min_score(min_score)
            collapse = _flag(distinct, "distinct")
            image = self.state.decoder.decode_bytes(body, name)
            return self._results(self.state.search_image(image, k, label, min_score,
                                                         collapse))

        return await self._run(work)

    async def more_like_this(self, request: Request) -> JSONResponse:
        k, label, min_score, distinct = self._params(request)
        item = request.query_params.get("item", "")
        return await self._run(lambda: self._results(
            self.state.more_like(item, k, label, min_score, _flag(distinct, "distinct"))))

    async def browse(self, request: Request) -> JSONResponse:
        q = request.query_params

        def work() -> dict[str, Any]:
            page = self.state.browse(q.get("page", "1"), q.get("folder", ALL_LABELS),
                                     q.get("order", "random"), _int(q.get("seed", "0")))
            items = []
            for item in page.ids:
                item = self.state.offset + item  # the union's id when serving several
                thumb, row = self.state.thumbnail(item)
                items.append({"id": item, "relpath": row.path, "label": row.label,
                              "thumbnail": file_url(thumb) if thumb is not None else None})
            return {"items": items, "page": page.number, "pages": page.pages,
                    "total": page.total}

        return await self._run(work)


def _flag(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise UploadError(f"{name} must be 1 or 0, got {text!r}.")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise UploadError(f"seed must be an integer, got {text!r}.") from None


def json_routes(state: AppState) -> list[Route]:
    """The JSON API's routes over ``state``."""
    return JsonApi(state).routes()
