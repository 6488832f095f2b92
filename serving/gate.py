"""ASGI middleware in front of the service: admission, upload reading, job spooling, uniform error bodies.

What BentoML 1.4 leaves to the application, done before a request reaches it:

- **Refusals before reading.** Uploads must be multipart with a ``Content-Length`` within the limit (415, 411,
  413). A refused body is drained only while the client keeps sending (a client that declared 3 GB and sends
  nothing is answered at once) and only up to :data:`DRAIN_LIMIT_BYTES`.
- **Admission with Retry-After.** Synchronous uploads beyond ``max_concurrency`` in flight and jobs beyond the
  queue's limits get 429 with ``Retry-After`` (BentoML's own limit answers 429 without it; it is set above ours).
- **Reading the body ourselves.** The body is read with a stall timeout (408 when no byte arrived for
  ``upload_timeout_s``), counted against the limit as it arrives (413 when it outgrows its ``Content-Length``)
  and written to disk; a client that disconnects mid-upload is logged at INFO, not as a 500. Synchronous
  requests are then replayed to BentoML from disk; a job's file part goes to the job spool and BentoML gets a
  small body whose file field holds the spool token (see :mod:`serving.jobs`).
- **One error shape.** Every 4xx JSON answer is ``{"error": ..., "code": ...}``: BentoML's list-wrapped
  errors are unwrapped and its validation errors get ``code`` ``invalid_request``.
- **GET probes.** ``GET /health`` and ``GET /metadata`` are answered by the (POST) APIs.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from serving.jobs import TOKEN_PREFIX, JobQueue, Ticket
from serving.runner import ModelRunner
from serving.uploads import NOT_A_FILE, ServingError, check_upload, safe_name

#: multipart framing around the file (boundaries, part headers, small form fields) allowed on top of the limit
FORM_SLACK_BYTES = 1024 * 1024
#: a refused body is read and discarded up to this size so a client still sending sees the status
DRAIN_LIMIT_BYTES = 64 * 1024 * 1024
#: while draining a refused body, wait at most this long for the next chunk
DRAIN_WAIT_S = 1.0
#: BentoML error texts -> our code (BentoML formats its 4xx as ``[{"error": text}]``)
_CODES_BY_TEXT = {NOT_A_FILE: "not_a_file"}
_CODES_BY_STATUS = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "too_large",
                    415: "unsupported_media_type", 429: "too_many_requests"}

log = logging.getLogger("bentoml.slidemil")


class _Stalled(Exception):
    pass


class _Gone(Exception):
    pass


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def _error(status: int, code: str, message: str, retry_after: int | None = None) -> JSONResponse:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": message, "code": code}, status_code=status, headers=headers)


class Gate:
    """The middleware; ``runner()`` gives the worker's :class:`ModelRunner` (for Retry-After estimates)."""

    def __init__(self, app, *, max_bytes: int, upload_timeout_s: float, max_concurrency: int,
                 sync_paths: Iterable[str], job_paths: Mapping[str, str], probe_paths: Iterable[str],
                 jobs: JobQueue, runner: Callable[[], ModelRunner], slide_families: Mapping[str, str],
                 openapi: Callable[[dict], dict] | None = None):
        self.app = app
        self.max_bytes = int(max_bytes)
        self.upload_timeout_s = float(upload_timeout_s)
        self.max_concurrency = int(max_concurrency)
        self.sync_paths = set(sync_paths)
        self.job_paths = dict(job_paths)  # submit route -> the task's own route (refused when called directly)
        self.task_routes = set(self.job_paths.values())
        self.probe_paths = set(probe_paths)
        self.jobs = jobs
        self.runner = runner
        self.slide_families = dict(slide_families)
        self.openapi = openapi
        self.sync_in_flight = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._route(scope, receive, _uniform_errors(tracked))
        except Exception:
            # BentoML's timeout middleware waits for a response until its timeout: never leave a client hanging
            ref = secrets.token_hex(4)
            log.exception("%s failed unexpectedly [ref %s]", scope["path"], ref)
            if not started:
                await _error(500, "internal_error", f"internal error (reference {ref}; see the server log)")(
                    scope, receive, send)

    async def _route(self, scope, receive, send) -> None:
        path, method = scope["path"].rstrip("/") or "/", scope.get("method")
        if method == "GET" and path == "/docs.json" and self.openapi is not None:
            await self.app(scope, receive, _rewrite_json(send, self.openapi))
        elif method == "GET" and path in self.probe_paths:
            await self.app(*_as_post(scope), _json_body(b"{}", receive), send)
        elif method != "POST":
            await self.app(scope, receive, send)
        elif path in self.sync_paths:
            await self._sync(scope, receive, send)
        elif path in self.job_paths:
            await self._submit(scope, receive, send)
        elif path in self.task_routes:
            await self._refuse(scope, receive, send, 405, "submit_jobs",
                               f"jobs are submitted to {path}/submit; poll {path}/status and fetch "
                               f"{path}/get?task_id=...")
        else:
            await self.app(scope, receive, send)

    # ---- synchronous uploads ------------------------------------------------------------------------
    async def _sync(self, scope, receive, send) -> None:
        declared = await self._declared_size(scope, receive, send)
        if declared is None:
            return
        if self.sync_in_flight >= self.max_concurrency:
            runner = self.runner()
            wait = runner.retry_after_s(self.sync_in_flight + int(runner.busy))
            await self._refuse(scope, receive, send, 429, "busy",
                               f"the server is busy with {self.sync_in_flight} requests (server setting "
                               f"SLIDEMIL_MAX_CONCURRENCY={self.max_concurrency}); retry in about {wait} s or "
                               f"submit a job (POST /predict_job/submit)", retry_after=wait)
            return
        self.sync_in_flight += 1
        try:
            with tempfile.SpooledTemporaryFile(max_size=1024 * 1024) as body:
                size = await self._read_body(scope, receive, send, declared, body.write)
                if size is None:
                    return
                body.seek(0)
                await self.app(scope, _replay(body, receive), send)
        finally:
            self.sync_in_flight -= 1

    # ---- jobs ---------------------------------------------------------------------------------------
    async def _submit(self, scope, receive, send) -> None:
        declared = await self._declared_size(scope, receive, send)
        if declared is None:
            return
        ticket = self.jobs.admit(declared)
        if ticket is None:
            wait = self.runner().retry_after_s(1)
            await self._refuse(scope, receive, send, 429, "queue_full",
                               f"the job queue is full ({self.jobs.jobs} jobs, {_mb(self.jobs.queued_bytes)}; "
                               f"server settings SLIDEMIL_MAX_JOBS={self.jobs.max_jobs}, SLIDEMIL_MAX_QUEUED_MB="
                               f"{self.jobs.max_bytes // (1024 * 1024)}); retry in about {wait} s",
                               retry_after=wait)
            return
        try:
            body = await self._spool_job(scope, receive, send, declared, ticket)
            if body is not None:
                content, ctype = body
                headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-length", b"content-type")]
                headers += [(b"content-type", ctype), (b"content-length", str(len(content)).encode())]
                await self.app({**scope, "headers": headers}, _json_body(content, receive), send)
        finally:
            self.jobs.release(ticket)  # BentoML's task ran inside that call; its upload is no longer needed

    async def _spool_job(self, scope, receive, send, declared: int, ticket: Ticket) -> tuple[bytes, bytes] | None:
        """Read the multipart upload into the spool; the small body BentoML gets instead, or None if answered."""
        seen = 0
        stream_error: list[Exception] = []

        async def chunks():
            nonlocal seen
            while True:
                try:
                    message = await asyncio.wait_for(receive(), self.upload_timeout_s)
                except TimeoutError:
                    stream_error.append(_Stalled())
                    raise ClientDisconnect() from None
                if message["type"] == "http.disconnect":
                    stream_error.append(_Gone())
                    raise ClientDisconnect()
                chunk = message.get("body", b"")
                seen += len(chunk)
                if seen > declared:
                    stream_error.append(ValueError("longer than its Content-Length"))
                    raise ClientDisconnect()
                yield chunk
                if not message.get("more_body", False):
                    return

        request = Request(scope)
        request._stream_consumed = False
        request.stream = chunks  # type: ignore[method-assign]  (the form parser reads request.stream())
        try:
            form = await request.form(max_files=2, max_fields=20)
        except ClientDisconnect:
            problem = stream_error[0] if stream_error else _Gone()
            return await self._body_problem(scope, receive, send, problem, seen)
        except (MultiPartException, HTTPException) as exc:
            detail = getattr(exc, "detail", None) or getattr(exc, "message", str(exc))
            await self._answer(scope, receive, send, _error(400, "bad_multipart", f"malformed multipart body: {detail}"))
            return None
        try:
            slide = form.get("slide")
            if not isinstance(slide, UploadFile):
                problem = "no `slide` field" if slide is None else NOT_A_FILE
                await self._answer(scope, receive, send, _error(400, "not_a_file", f"slide: {problem}"))
                return None
            name = safe_name(slide.filename or "upload")
            suffix = Path(name).suffix.lower()
            dest = ticket.folder / f"upload{suffix if suffix in self.slide_families else ''}"
            with open(dest, "wb") as out:
                await asyncio.to_thread(shutil.copyfileobj, slide.file, out, 1024 * 1024)
            try:
                check_upload(dest, name, self.slide_families, self.max_bytes, "slide")
            except ServingError as exc:
                log.info("job submit refused (%d %s): %s", exc.status, exc.code, exc.message)
                await self._answer(scope, receive, send, _error(exc.status, exc.code, exc.message))
                return None
            self.jobs.spooled(ticket, dest, name)
            fields = [(k, v) for k, v in form.multi_items() if k != "slide" and isinstance(v, str)]
        finally:
            await form.close()
        return _multipart(fields, ("slide", name, TOKEN_PREFIX + ticket.token.encode()))

    # ---- shared ----------------------------------------------------------------------------------------
    async def _declared_size(self, scope, receive, send) -> int | None:
        """The declared body size, or None after answering 415/411/400/413 (before reading the body)."""
        headers = Headers(scope=scope)
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        length = headers.get("content-length")
        if ctype != "multipart/form-data":
            await self._refuse(scope, receive, send, 415, "unsupported_media_type",
                               f"send the file as multipart/form-data (got {ctype or 'no Content-Type'})")
            return None
        if length is None:
            await self._refuse(scope, receive, send, 411, "length_required",
                               "uploads need a Content-Length header (chunked uploads are refused)")
            return None
        declared = int(length) if length.isdigit() else -1
        if declared < 0:
            await self._refuse(scope, receive, send, 400, "bad_content_length", f"invalid Content-Length {length!r}")
            return None
        if declared > self.max_bytes + FORM_SLACK_BYTES:
            await self._refuse(scope, receive, send, 413, "too_large",
                               f"upload of {_mb(declared)} exceeds the limit of {_mb(self.max_bytes)} "
                               "(server setting SLIDEMIL_MAX_UPLOAD_MB)")
            return None
        return declared

    async def _read_body(self, scope, receive, send, declared: int, write: Callable[[bytes], object]) -> int | None:
        """Copy the body to ``write``; its size, or None after answering a stall, an overrun or a disconnect."""
        seen = 0
        while True:
            try:
                message = await asyncio.wait_for(receive(), self.upload_timeout_s)
            except TimeoutError:
                return await self._body_problem(scope, receive, send, _Stalled(), seen)
            if message["type"] == "http.disconnect":
                return await self._body_problem(scope, receive, send, _Gone(), seen)
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > declared:
                return await self._body_problem(scope, receive, send, ValueError("longer than its Content-Length"),
                                                seen)
            write(chunk)
            if not message.get("more_body", False):
                return seen

    async def _body_problem(self, scope, receive, send, problem: Exception, seen: int) -> None:
        where = f"{scope['path']} after {_mb(seen)}"
        if isinstance(problem, _Gone):
            log.info("client disconnected during the upload to %s; nothing to answer", where)
            return None
        if isinstance(problem, _Stalled):
            log.warning("upload to %s stalled for %.0f s; answered 408", where, self.upload_timeout_s)
            await self._answer(scope, receive, send, _error(
                408, "upload_timeout", f"no upload data received for {self.upload_timeout_s:.0f} s "
                f"(server setting SLIDEMIL_UPLOAD_TIMEOUT_S); the upload was abandoned"))
            return None
        log.info("upload to %s refused: the body is %s", where, problem)
        await self._answer(scope, receive, send, _error(400, "bad_content_length",
                                                         "the body is longer than its Content-Length"))
        return None

    async def _refuse(self, scope, receive, send, status: int, code: str, message: str,
                      retry_after: int | None = None) -> None:
        """Answer without reading the body: drain what the client is still sending, then respond."""
        log.info("%s refused (%d %s): %s", scope["path"], status, code, message)
        await _drain(receive)
        await _error(status, code, message, retry_after)(scope, receive, send)

    @staticmethod
    async def _answer(scope, receive, send, response: JSONResponse) -> None:
        response.headers["Connection"] = "close"  # the rest of the body (if any) is not read
        await response(scope, receive, send)


async def _drain(receive) -> None:
    seen = 0
    while seen <= DRAIN_LIMIT_BYTES:
        try:
            message = await asyncio.wait_for(receive(), DRAIN_WAIT_S)
        except TimeoutError:
            return
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _replay(body, receive):
    """A ``receive`` that yields ``body`` (a file) in chunks, then defers to the real one (disconnects)."""
    done = False

    async def replay():
        nonlocal done
        if done:
            return await receive()
        chunk = await asyncio.to_thread(body.read, 1024 * 1024)
        more = len(chunk) == 1024 * 1024
        done = not more
        return {"type": "http.request", "body": chunk, "more_body": more}

    return replay


def _json_body(content: bytes, receive):
    sent = False

    async def once():
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": content, "more_body": False}

    return once


def _as_post(scope) -> tuple[dict]:
    headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
    headers += [(b"content-type", b"application/json"), (b"content-length", b"2")]
    return ({**scope, "method": "POST", "headers": headers},)


def _multipart(fields: list[tuple[str, str]], file: tuple[str, str, bytes]) -> tuple[bytes, bytes]:
    boundary = secrets.token_hex(16)
    parts = []
    for key, value in fields:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    key, filename, content = file
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; filename="{filename}"\r\n'
                 f"Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}".encode()


async def _send_body(send, start: dict, body: bytes) -> None:
    """Send a buffered answer's start (its Content-Length set to ``body``) and ``body`` in one piece."""
    raw = [(k, v) for k, v in start.get("headers", []) if k.lower() != b"content-length"]
    await send({**start, "headers": [*raw, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def _rewrite_json(send, rewrite: Callable[[dict], dict]):
    """Buffer a 200 JSON answer and send ``rewrite(body)`` instead (the OpenAPI document)."""
    state: dict = {}

    async def wrapped(message) -> None:
        if message["type"] == "http.response.start" and message["status"] == 200:
            state.update(start=message, chunks=[])
            return
        if message["type"] == "http.response.body" and "start" in state:
            state["chunks"].append(message.get("body", b""))
            if message.get("more_body", False):
                return
            start = state.pop("start")
            await _send_body(send, start, json.dumps(rewrite(json.loads(b"".join(state.pop("chunks"))))).encode())
            return
        await send(message)

    return wrapped


def _uniform_errors(send):
    """Rewrite 4xx JSON bodies to ``{"error", "code"}`` (they are small; only those are buffered)."""
    state: dict = {}

    async def wrapped(message) -> None:
        if message["type"] == "http.response.start":
            headers = Headers(raw=message.get("headers", []))
            if 400 <= message["status"] < 500 and headers.get("content-type", "").startswith("application/json"):
                state.update(start=message, chunks=[])
                return
            await send(message)
            return
        if message["type"] == "http.response.body" and "start" in state:
            state["chunks"].append(message.get("body", b""))
            if message.get("more_body", False):
                return
            start = state.pop("start")
            await _send_body(send, start, _normalised(start["status"], b"".join(state.pop("chunks"))))
            return
        await send(message)

    return wrapped


def _normalised(status: int, body: bytes) -> bytes:
    try:
        data = json.loads(body)
    except ValueError:
        return body
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):
        data = data[0]
    if not isinstance(data, dict) or "error" not in data or "code" in data:
        return json.dumps(data).encode() if isinstance(data, dict) else body
    text = str(data["error"])
    code = next((c for prefix, c in _CODES_BY_TEXT.items() if text.startswith(prefix)), None)
    if code is None:
        code = "invalid_request" if "detail" in data else _CODES_BY_STATUS.get(status, "bad_request")
    return json.dumps({**data, "code": code}).encode()
