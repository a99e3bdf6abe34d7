"""The web side of `laion-pipe serve`: a small JSON API and the static page that uses it.

Routes:
    GET  /                         the search page (static/index.html; no build step)
    GET  /static/{file}            its script and style
    GET  /api/info                 the run's spaces, subsets, drop reasons, recipes, score ranges
    POST /api/search               {text | image (data URL) | like: {space, id}, k, modality, filters, nprobe}
    GET  /api/image/{space}/{id}   a result's image bytes, read from its download tar
    POST /api/export               a query's results (its top `limit`, or all above `min_score`) as a
                                   URL list or a blocklist in RUN/exports/, with the command that applies it
    GET  /exports/{file}           an exported file
    GET  /report/ , /report/{file} the run's stats/report.html and its files

Every error is a JSON `{"error": message}` with a 4xx status (a bad query, a missing index, a
path outside the served folders: 404); an unexpected failure is a 500 with a one-line message,
its traceback going to the server's log only.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import exports
from .files import media_type, safe_file
from .searcher import MAX_K, RANGE_COLUMNS, Filters, Searcher, SearchError, decode_data_url

log = logging.getLogger("laion_pipe.serve")
STATIC = Path(__file__).with_name("static")
MAX_EXPORT = 1_000_000


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FiltersIn(Strict):
    subsets: list[str] | None = None
    status: Literal["all", "kept", "dropped"] = "all"
    reasons: list[str] | None = None
    ranges: dict[str, tuple[float | None, float | None]] = {}


class Like(Strict):
    space: str
    id: int


class QueryIn(Strict):
    text: str | None = None
    image: str | None = Field(None, description="a data: URL (or base64) of an image file")
    like: Like | None = None
    space: str | None = None
    modality: Literal["image", "text"] = "image"
    k: int = Field(40, ge=1, le=MAX_K)
    nprobe: int | None = Field(None, ge=1, le=65536)
    filters: FiltersIn = FiltersIn()


class ExportIn(Strict):
    query: QueryIn
    format: Literal["blocklist", "urls"] = "blocklist"
    limit: int = Field(100, ge=1, le=MAX_EXPORT)
    min_score: float | None = Field(None, ge=-1, le=1, description="all results scoring above this (up to limit) instead of the top `limit`")
    name: str | None = Field(None, max_length=200)


def _filters(f: FiltersIn) -> Filters:
    return Filters(subsets=f.subsets, status=f.status, reasons=f.reasons, ranges=dict(f.ranges))


def _describe(q: QueryIn) -> str:
    what = f"text {q.text!r}" if q.text is not None else "an uploaded image" if q.image is not None else \
        f"more like {q.like.space}/{q.like.id}" if q.like else "?"  # fmt: skip
    return f"{what}, {q.modality} index" + (f", filters {q.filters.model_dump(exclude_defaults=True)}" if q.filters != FiltersIn() else "")


def create_app(run_dir: str) -> FastAPI:
    """The app for one local run directory."""
    out = str(Path(run_dir).resolve())
    searcher = Searcher(out)
    app = FastAPI(title="laion-pipe serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.searcher = searcher

    @app.exception_handler(SearchError)
    async def _search_error(request: Request, exc: SearchError) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        msgs = []
        for e in exc.errors()[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
            msgs.append(f"{where or 'request'}: {e.get('msg')}")
        return JSONResponse({"error": "bad request: " + "; ".join(msgs)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": "not found" if exc.status_code == 404 else str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server's log"}, status_code=500)

    def not_found() -> JSONResponse:
        return JSONResponse({"error": "not found"}, status_code=404)

    def send(root: Path, rel: str) -> Response:
        path = safe_file(root, rel)
        if path is None:
            return not_found()
        return FileResponse(path, media_type=media_type(path))

    @app.get("/")
    def page() -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    @app.get("/static/{rel:path}")
    def static(rel: str) -> Response:
        return send(STATIC, rel)

    @app.get("/report")
    def report_redirect() -> Response:
        return RedirectResponse("/report/")

    @app.get("/report/")
    def report() -> Response:
        path = safe_file(Path(out, "stats"), "report.html")
        if path is None:
            return JSONResponse({"error": f"no report in this run yet: run `laion-pipe stats {out}`"}, status_code=404)
        return FileResponse(path, media_type="text/html; charset=utf-8")

    @app.get("/report/{rel:path}")
    def report_file(rel: str) -> Response:
        return send(Path(out, "stats"), rel)

    @app.get("/exports/{rel:path}")
    def export_file(rel: str) -> Response:
        return send(Path(out, exports.EXPORT_DIR), rel)

    @app.get("/api/info")
    def info() -> dict:
        base = {"run": out, "report": safe_file(Path(out, "stats"), "report.html") is not None, "range_columns": list(RANGE_COLUMNS)}
        try:
            spaces = searcher.spaces()
        except SearchError as e:
            return {**base, "error": str(e), "spaces": []}
        found = []
        subsets: set[str] = set()
        reasons: set[str] = set()
        recipes: set[str] = set()
        ranges: dict[str, list[float]] = {}
        for sp in spaces.values():
            subsets.update(s for s in set(sp.columns["subset"].tolist()) if s)
            reasons.update(r for r in set(sp.columns["drop_reason"].tolist()) if r)
            for rs in sp.meta["recipes"].to_pylist():
                recipes.update(rs or ())
            for c in RANGE_COLUMNS:
                col = sp.columns[c]
                col = col[~(col != col)]  # without NaN
                if len(col):
                    lo, hi = float(col.min()), float(col.max())
                    ranges[c] = [min(lo, ranges.get(c, [lo, hi])[0]), max(hi, ranges.get(c, [lo, hi])[1])]
            found.append({"name": sp.name, "subsets": list(sp.subsets), "rows": sp.rows, "kept": int(sp.columns["kept"].sum()),
                          "indexes": {m: {k: sp.info[m][k] for k in ("kind", "factory", "nprobe", "rows", "dim")} for m in sp.indexes}})  # fmt: skip
        return {**base, "spaces": found, "subsets": sorted(subsets), "reasons": sorted(reasons), "recipes": sorted(recipes),
                "ranges": ranges}  # fmt: skip

    def vectors(q: QueryIn):
        image = decode_data_url(q.image) if q.image is not None else None
        like = (q.like.space, q.like.id) if q.like is not None else None
        return searcher.query_vectors(text=q.text, image=image, like=like, space=q.space)

    @app.post("/api/search")
    def search(q: QueryIn) -> dict:
        hits = searcher.search(vectors(q), k=q.k, modality=q.modality, filters=_filters(q.filters), nprobe=q.nprobe)
        return {"query": _describe(q), "results": searcher.rows(hits)}

    @app.post("/api/export")
    def export(req: ExportIn) -> dict:
        q = req.query
        vecs = vectors(q)
        if req.min_score is not None:
            hits = searcher.range(vecs, req.min_score, modality=q.modality, filters=_filters(q.filters), nprobe=q.nprobe,
                                  limit=req.limit)  # fmt: skip
            describe = f"{_describe(q)}, score > {req.min_score}"
        else:
            hits = searcher.search(vecs, k=min(req.limit, MAX_K), modality=q.modality, filters=_filters(q.filters), nprobe=q.nprobe)
            describe = f"{_describe(q)}, top {req.limit}"
        urls = [r["url"] for r in searcher.rows(hits)]
        path = exports.write_export(out, urls, req.format, req.name, describe)
        result = {"path": str(path), "file": f"/exports/{path.name}", "count": len(dict.fromkeys(u for u in urls if u)),
                  "format": req.format, "description": describe}  # fmt: skip
        if req.format == "blocklist":
            result["command"] = exports.apply_command(out, path)
        return result

    @app.get("/api/image/{space}/{row}")
    def image(space: str, row: int) -> Response:
        data, kind = searcher.image_bytes(space, row)
        return Response(data, media_type=kind, headers={"Cache-Control": "max-age=3600"})

    return app
