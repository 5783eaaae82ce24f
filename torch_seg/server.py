"""Segmentation as a service: an HTTP JSON API and a small web page over one `TextSegmenter`.

    POST /segment   multipart form: `image` (file), `prompt`, optional `box_threshold`, `text_threshold`,
                    `max_detections`, `overlay` (1: add the overlay as base64 PNG), `coco` (1: add a COCO
                    instances dict); answers the result.json record (+ `result_id`, `overlay_png`, `coco`)
    GET  /health    status (loading | ready | failed), models, device, random weights, queue, limits
    GET  /results/{result_id}.zip   masks/<i>.png, result.json (and overlay.png) of a recent result
    GET  /          the page (torch_seg/static/index.html); GET /examples, /examples/{name}: example images

The server adds no model logic: it parses and checks the request, decodes the upload and calls
`TextSegmenter.segment` / `.record` / `.overlay`, as `scripts/segment.py` does. The models are built once, in
the background, when the server starts (requests meanwhile get 503); then a single worker thread runs one
request at a time, so the one model instance is never used by two requests at once. At most `max_pending`
requests wait or run; more get 503. Every error a client can cause is a 4xx (or 503/504) with a one-line
JSON `{"error": ...}`, and the server goes on serving. It writes no files: each answer is built whole in
memory before it is sent.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import math
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from torch_seg.coco import coco_instances
from torch_seg.errors import UserError
from torch_seg.images import IMAGE_SUFFIXES, decode_image
from torch_seg.prompts import parse_prompt
from torch_seg.results import png_bytes, result_zip
from torch_seg.seeders import DEFAULT_MAX_DETECTIONS

log = logging.getLogger("torch_seg.server")

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
PAGE = Path(__file__).with_name("static") / "index.html"
FORM_FIELDS = ("image", "prompt", "box_threshold", "text_threshold", "max_detections", "overlay", "coco")
MAX_PROMPT_CHARS = 20_000  # thousands of class names; the form parser refuses larger text fields anyway
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"", "0", "false", "no", "off"}


@dataclass(frozen=True)
class ServerLimits:
    """What one request may ask of the server (`scripts/serve.py` sets them from its options)."""

    max_upload_bytes: int = 20 * 2**20  # the whole multipart body
    request_timeout_s: float = 120.0  # from arrival to answer, waiting in the queue included
    max_pending: int = 8  # requests waiting or running at once; more get 503
    max_detections: int = DEFAULT_MAX_DETECTIONS  # the most objects one request may ask for (full-size masks)
    results_kept: int = 16  # recent results downloadable as zip


class _Busy(Exception):
    pass


class SegmentationService:
    """One `TextSegmenter`, built in the background, behind a single worker thread (a queue of requests)."""

    def __init__(self, build: Callable[[], object], *, random_weights: bool, limits: ServerLimits):
        self._build = build
        self.random_weights = random_weights  # what was asked; the built segmenter's own flag once ready
        self.limits = limits
        self.segmenter = None
        self.error: str | None = None
        self.load_seconds: float | None = None
        self.on_loaded: Callable[[SegmentationService], None] | None = None
        self.counts = collections.Counter()  # completed, failed, dropped (client gone), timed_out, refused_busy
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="segmenter")
        self._lock = threading.Lock()
        self._pending = 0
        self._load_started: float | None = None
        self._results: collections.OrderedDict[str, tuple[dict, bytes | None]] = collections.OrderedDict()

    # --- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> Future:
        """Build the models on the worker thread; requests queue behind nothing, they get 503 until it is done."""
        self._load_started = time.perf_counter()
        return self._executor.submit(self._load)

    def _load(self) -> None:
        try:
            self.segmenter = self._build()
            self.random_weights = bool(getattr(self.segmenter, "random_weights", self.random_weights))
        except UserError as e:
            self.error = str(e)
        except Exception as e:  # noqa: BLE001  (reported on /health and by scripts/serve.py, then it exits)
            log.exception("the models failed to load")
            self.error = f"{type(e).__name__}: {e}"
        self.load_seconds = time.perf_counter() - self._load_started
        if self.on_loaded is not None:
            self.on_loaded(self)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    @property
    def status(self) -> str:
        return "ready" if self.segmenter is not None else "failed" if self.error else "loading"

    def loading_seconds(self) -> float:
        return 0.0 if self._load_started is None else time.perf_counter() - self._load_started

    # --- the queue -------------------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        return self._pending

    def reserve(self) -> None:
        """Take a place in the queue (raises _Busy when `max_pending` requests already wait or run)."""
        with self._lock:
            if self._pending >= self.limits.max_pending:
                self.counts["refused_busy"] += 1
                raise _Busy()
            self._pending += 1

    def release(self) -> None:
        with self._lock:
            self._pending -= 1

    def submit(self, job: Callable[[], object]) -> Future:
        """Queue `job` on the worker thread under a place taken with `reserve`; the place is released when the
        job ends or is cancelled before it started."""
        future = self._executor.submit(job)
        future.add_done_callback(lambda _: self.release())
        return future

    # --- one request on the worker thread --------------------------------------------------------------------
    def run(self, request: "SegmentRequest", image, decode_ms: float, queued_at: float) -> tuple[dict, bytes | None]:
        started = time.perf_counter()
        segmenter = self.segmenter
        result = segmenter.segment(image, request.prompt, box_threshold=request.box_threshold,
                                   text_threshold=request.text_threshold, max_detections=request.max_detections)
        timings = {"load": decode_ms, "queue": (started - queued_at) * 1e3, **result.timings_ms}
        overlay = None
        if request.overlay:
            tick = time.perf_counter()
            overlay = png_bytes(segmenter.overlay(image, result))
            timings["overlay"] = (time.perf_counter() - tick) * 1e3
        timings["total"] = sum(timings.values())
        height, width = image.shape[:2]
        record = segmenter.record(result, image=request.image_name, width=width, height=height,
                                  prompt=request.prompt, timings_ms=timings)
        return record, overlay

    def keep(self, record: dict, overlay: bytes | None) -> str:
        result_id = uuid.uuid4().hex
        self._results[result_id] = (record, overlay)
        while len(self._results) > self.limits.results_kept:
            self._results.popitem(last=False)
        return result_id

    def kept(self, result_id: str) -> tuple[dict, bytes | None] | None:
        return self._results.get(result_id)

    def health(self) -> dict:
        segmenter = self.segmenter
        return {
            "status": self.status,
            "error": self.error,
            "random_weights": self.random_weights,
            "device": None if segmenter is None else str(segmenter.device),
            "autocast": None if segmenter is None else segmenter.autocast.to_dict(),
            "models": None if segmenter is None else segmenter.models_record(),
            "load_seconds": None if self.load_seconds is None else round(self.load_seconds, 2),
            "defaults": None if segmenter is None else {
                "box_threshold": segmenter.box_threshold, "text_threshold": segmenter.text_threshold,
                "max_detections": min(segmenter.seeder.max_detections, self.limits.max_detections)},
            "queue": {"pending": self._pending, "limit": self.limits.max_pending},
            "counts": {k: self.counts[k] for k in ("completed", "failed", "dropped", "timed_out", "refused_busy")},
            "limits": {"max_upload_bytes": self.limits.max_upload_bytes,
                       "request_timeout_s": self.limits.request_timeout_s,
                       "max_detections": self.limits.max_detections},
        }


# --- the request's form -------------------------------------------------------------------------------------

@dataclass
class SegmentRequest:
    image_name: str
    image_bytes: bytes
    prompt: str
    box_threshold: float | None
    text_threshold: float | None
    max_detections: int | None
    overlay: bool
    coco: bool


def _text(form, name: str) -> str | None:
    value = form.get(name)
    if isinstance(value, UploadFile):
        raise UserError(f"form field {name!r} must be text, not a file")
    return value


def _probability(form, name: str) -> float | None:
    value = _text(form, name)
    if value is None or not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise UserError(f"{name} must be a number in [0, 1] (scores are probabilities), got {value!r}")
    return number


def _count(form, name: str, maximum: int) -> int | None:
    value = _text(form, name)
    if value is None or not value.strip():
        return None
    try:
        number = int(value)
    except ValueError:
        number = 0
    if not 1 <= number <= maximum:
        raise UserError(f"{name} must be a whole number from 1 to {maximum} (this server's limit), got {value!r}")
    return number


def _flag(form, name: str) -> bool:
    value = (_text(form, name) or "").strip().lower()
    if value not in _TRUE | _FALSE:
        raise UserError(f"{name} must be 1 or 0 (true or false), got {value!r}")
    return value in _TRUE


def _upload_name(filename: str | None) -> str:
    """The upload's file name without any folder part or control characters (it names the image in the record)."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    name = "".join(ch for ch in name if ch.isprintable())[:200]
    return name or "upload"


def parse_segment_form(form, limits: ServerLimits) -> SegmentRequest:
    """Check every field of a POST /segment form (UserError with a one-line message naming the field)."""
    unknown = sorted(set(form.keys()) - set(FORM_FIELDS))
    if unknown:
        raise UserError(f"unknown form field {unknown[0]!r}: the fields are {', '.join(FORM_FIELDS)}")
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise UserError("the form has no file in field 'image': send the image as a file, e.g. "
                        "curl -F image=@photo.jpg -F prompt=car ...")
    prompt = _text(form, "prompt")
    if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
        raise UserError(f"the prompt is {len(prompt)} characters, more than this server's {MAX_PROMPT_CHARS}")
    try:
        parse_prompt(prompt)  # an empty or wordless prompt is refused before the queue
    except UserError as e:  # its message speaks of the command line's --prompt
        raise UserError(str(e).replace("pass --prompt", "send the form field prompt").replace("--prompt ", "prompt=")
                        ) from None
    return SegmentRequest(
        image_name=_upload_name(upload.filename), image_bytes=b"", prompt=prompt,
        box_threshold=_probability(form, "box_threshold"), text_threshold=_probability(form, "text_threshold"),
        max_detections=_count(form, "max_detections", limits.max_detections),
        overlay=_flag(form, "overlay"), coco=_flag(form, "coco"))


class _TooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        chunks.append(chunk)
    return b"".join(chunks)


async def _parse_multipart(request: Request, body: bytes, limits: ServerLimits):
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise HTTPException(415, f"send a multipart/form-data form (the image in field 'image'), not "
                                 f"{content_type or 'a body without Content-Type'}")

    async def replay():
        yield body
        yield b""

    parser = MultiPartParser(request.headers, replay(), max_files=1, max_fields=len(FORM_FIELDS),
                             max_part_size=max(MAX_PROMPT_CHARS * 4, 64 * 1024))
    parser.spool_max_size = limits.max_upload_bytes  # the body is in memory already: no spill to disk
    try:
        return await parser.parse()
    except MultiPartException as e:
        raise HTTPException(400, f"malformed multipart form ({e.message}): send image, prompt and the optional "
                                 f"fields {', '.join(FORM_FIELDS[2:])}, one file at most") from None


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects (the request body has been read, so only a disconnect arrives)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status, headers=headers)


# --- the app -------------------------------------------------------------------------------------------------

def create_app(build: Callable[[], object], *, random_weights: bool, limits: ServerLimits = ServerLimits(),
               examples_dir: str | Path | None = None) -> Starlette:
    """The Starlette app. `build()` returns the `TextSegmenter` (called once, on the worker thread, at start-up);
    `examples_dir` offers its images on the page. `app.state.service` is the `SegmentationService`."""
    service = SegmentationService(build, random_weights=random_weights, limits=limits)
    examples = _example_images(examples_dir)

    async def segment(request: Request) -> Response:
        deadline = time.monotonic() + limits.request_timeout_s
        if service.status == "loading":
            return _error(503, f"the models are still loading ({service.loading_seconds():.0f} s so far): retry "
                               f"in a few seconds (GET /health says when they are ready)", {"Retry-After": "5"})
        if service.status == "failed":
            return _error(503, f"the models failed to load: {service.error}")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limits.max_upload_bytes:
            return _too_large(int(declared))
        try:
            service.reserve()
        except _Busy:
            return _error(503, f"the server is busy ({service.pending} requests waiting or running, its limit): "
                               f"retry later", {"Retry-After": "10"})
        submitted = False
        try:
            try:
                body = await asyncio.wait_for(_read_body(request, limits.max_upload_bytes),
                                              timeout=max(0.0, deadline - time.monotonic()))
            except _TooLarge:
                return _too_large(None)
            except asyncio.TimeoutError:
                return _error(408, f"the upload did not arrive within {limits.request_timeout_s:g} s")
            form = await _parse_multipart(request, body, limits)
            try:
                params = parse_segment_form(form, limits)
                params.image_bytes = await form["image"].read()
            finally:
                await form.close()
            if not params.image_bytes:
                raise UserError("the uploaded image is empty (0 bytes)")
            tick = time.perf_counter()
            image = await run_in_threadpool(decode_image, params.image_bytes, params.image_name)
            decode_ms = (time.perf_counter() - tick) * 1e3
            queued_at = time.perf_counter()
            future = service.submit(lambda: service.run(params, image, decode_ms, queued_at))
            submitted = True
            return await _answer(request, params, future, deadline)
        except UserError as e:
            return _error(400, str(e))
        except ClientDisconnect:
            service.counts["dropped"] += 1
            log.info("client disconnected during the upload; request dropped")
            return Response(status_code=400)
        finally:
            if not submitted:
                service.release()

    async def _answer(request: Request, params: SegmentRequest, future: Future, deadline: float) -> Response:
        job = asyncio.wrap_future(future)
        job.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even when nobody waits
        gone = asyncio.ensure_future(_client_gone(request))
        try:
            done, _ = await asyncio.wait({job, gone}, timeout=max(0.0, deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if job not in done:
            # A job that has not started leaves the queue; a running one cannot be interrupted: it finishes on
            # the worker and its result is discarded.
            future.cancel()
            if gone in done:
                service.counts["dropped"] += 1
                log.info("client disconnected while its request waited or ran; request dropped")
                return Response(status_code=400)
            service.counts["timed_out"] += 1
            return _error(504, f"the request took longer than this server's {limits.request_timeout_s:g} s "
                               f"timeout (waiting for its turn included): retry, or ask for fewer detections")
        try:
            record, overlay = job.result()
        except UserError as e:
            service.counts["failed"] += 1
            return _error(400, str(e))
        except Exception as e:  # noqa: BLE001  (a bug or a library failure: one line to the client, trace to the log)
            service.counts["failed"] += 1
            log.error("segmentation failed", exc_info=(type(e), e, e.__traceback__))
            return _error(500, f"internal error: {type(e).__name__}: {e}")
        service.counts["completed"] += 1
        log.info("%s %dx%d %r: %d object(s), %.0f ms (%.0f queued)", record["image"], record["width"],
                 record["height"], record["prompt"][:60], record["num_detections"], record["timings_ms"]["total"],
                 record["timings_ms"]["queue"])
        answer = {**record, "result_id": service.keep(record, overlay)}
        if overlay is not None:
            answer["overlay_png"] = base64.b64encode(overlay).decode("ascii")
        if params.coco:
            answer["coco"] = coco_instances([record])
        return JSONResponse(answer)

    def _too_large(size: int | None) -> JSONResponse:
        got = "" if size is None else f" is {size / 2**20:.1f} MB,"
        return _error(413, f"the upload{got} over this server's {limits.max_upload_bytes / 2**20:g} MB limit: send "
                           f"a smaller image (or start the server with a larger --max-upload-mb)")

    async def health(request: Request) -> Response:
        info = service.health()
        return JSONResponse(info, status_code=200 if info["status"] == "ready" else 503)

    async def result_download(request: Request) -> Response:
        kept = service.kept(request.path_params["result_id"])
        if kept is None:
            return _error(404, f"no recent result {request.path_params['result_id']!r}: the server keeps the last "
                               f"{limits.results_kept}; segment the image again")
        record, overlay = kept
        stem = PurePosixPath(record["image"]).stem or "result"
        return Response(result_zip(record=record, overlay_png=overlay), media_type="application/zip",
                        headers={"Content-Disposition": f'attachment; filename="{stem}.zip"'})

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE.read_text())

    async def example_list(request: Request) -> Response:
        return JSONResponse({"examples": sorted(examples)})

    async def example_image(request: Request) -> Response:
        path = examples.get(request.path_params["name"])
        if path is None:
            return _error(404, f"no example {request.path_params['name']!r}: GET /examples lists them")
        return FileResponse(path)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        return _error(exc.status_code, exc.detail)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.start()
        try:
            yield
        finally:
            service.close()

    app = Starlette(routes=[
        Route("/", page),
        Route("/health", health),
        Route("/segment", segment, methods=["POST"]),
        Route("/results/{result_id}.zip", result_download),
        Route("/examples", example_list),
        Route("/examples/{name}", example_image),
    ], exception_handlers={HTTPException: http_error}, lifespan=lifespan)
    app.state.service = service
    return app


def _example_images(folder: str | Path | None) -> dict[str, Path]:
    if folder is None:
        return {}
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--examples {folder} is not a folder of images")
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}


# --- running it ----------------------------------------------------------------------------------------------

def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: a free one), or a UserError naming the fix."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"cannot resolve --host {host} ({e.strerror}): use an address such as 127.0.0.1") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}): pass another --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _uvicorn_server(app: Starlette, log_level: str):
    import uvicorn

    # Keep-alive connections are closed after 5 s idle; websockets are not served.
    return uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_keep_alive=5, ws="none",
                                         lifespan="on"))


def serve(app: Starlette, sock: socket.socket, *, log_level: str = "info") -> int:
    """Serve until Ctrl-C (or until the models fail to load: exit status 2, the error on stderr)."""
    server = _uvicorn_server(app, log_level)
    service: SegmentationService = app.state.service

    def loaded(svc: SegmentationService) -> None:
        if svc.error:
            print(f"error: the models failed to load: {svc.error}", file=sys.stderr)
            server.should_exit = True
        else:
            weights = "RANDOM WEIGHTS (outputs are meaningless; every answer says so)" if svc.random_weights \
                else "trained weights"
            print(f"models ready in {svc.load_seconds:.1f} s on {svc.segmenter.device} "
                  f"({svc.segmenter.autocast.describe()}), {weights}", file=sys.stderr)

    service.on_loaded = loaded
    server.run(sockets=[sock])
    return 2 if service.error else 0


@contextlib.contextmanager
def running_server(app: Starlette, host: str = "127.0.0.1", port: int = 0, *,
                   log_level: str = "warning") -> Iterator[str]:
    """Serve `app` from a background thread (tests, benchmarks); yields its base URL, stops it on exit."""
    sock = bind(host, port)
    server = _uvicorn_server(app, log_level)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the server thread ended before it started listening")
        time.sleep(0.01)
    bound_host, bound_port = sock.getsockname()[:2]
    try:
        yield f"http://{bound_host}:{bound_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def wait_until_ready(service: SegmentationService, timeout_s: float = 600.0) -> None:
    """Block until the models are loaded (RuntimeError if they failed or took longer than `timeout_s`)."""
    end = time.monotonic() + timeout_s
    while service.status == "loading" and time.monotonic() < end:
        time.sleep(0.05)
    if service.status != "ready":
        raise RuntimeError(f"the models are not ready: {service.error or 'still loading'}")
