"""Upload hygiene for the service: size limits, content checks, private temp files, no client-named paths.

BentoML turns a multipart file field into a ``pathlib.Path`` in a per-request temp folder. Around that this
module adds what a clinical upload endpoint needs:

- :mod:`serving.gate` (ASGI middleware) refuses an upload before its body is read and reads it with a stall
  timeout; BentoML 1.4 has no request-size setting of its own (``api_server.max_request_size`` was removed).
- :func:`install_strict_multipart` stops BentoML from *downloading* a URL a client puts in a file field
  instead of a file (its default): the server only ever reads bytes the client uploaded.
- :func:`stashed_upload` moves the upload into a private folder under a server-chosen name that keeps only a
  whitelisted suffix (format detection needs it), checks the real size and the file's magic bytes, and
  deletes the folder afterwards.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from starlette.datastructures import UploadFile

#: start of the message for a text form field where a file was expected (the gate maps it to a code)
NOT_A_FILE = "file fields must carry an uploaded file"

_MAGIC = {
    "tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),  # classic and BigTIFF (svs, ndpi are TIFF)
    "png": (b"\x89PNG\r\n\x1a\n",),
    "jpeg": (b"\xff\xd8\xff",),
    "hdf5": (b"\x89HDF\r\n\x1a\n",),
}
_TEMPFILE_PREFIX = re.compile(r"^tmp[a-z0-9_]{8}")  # NamedTemporaryFile(prefix="tmp") + 8 random chars


class ServingError(Exception):
    """A request the service refuses, with the HTTP status and a machine-readable code."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def body(self) -> dict:
        return {"error": self.message, "code": self.code}


def _mb(n: int) -> str:
    return f"{n / 1024 / 1024:.1f} MB"


def install_strict_multipart() -> None:
    """Make multipart file fields accept uploaded files only (BentoML would fetch a URL given as text)."""
    from _bentoml_impl import serde
    from bentoml.exceptions import BadInput

    if getattr(serde.ALL_SERDE.get("multipart/form-data"), "_slidemil_strict", False):
        return

    class StrictMultipartSerde(serde.MultipartSerde):
        _slidemil_strict = True

        @staticmethod
        async def ensure_file(obj):
            if isinstance(obj, UploadFile):
                return obj
            raise BadInput(
                f"{NOT_A_FILE} (multipart part with a filename); "
                "this server does not fetch URLs or read paths named by the client"
            )

    table = serde.ALL_SERDE  # a module-level dict the API server looks up per request
    table["multipart/form-data"] = StrictMultipartSerde  # type: ignore[index]
    table["application/x-www-form-urlencoded"] = StrictMultipartSerde  # type: ignore[index]


def client_filename(uploaded: Path) -> str:
    """The client's file name, recovered from BentoML's temp name (``tmpXXXXXXXX<basename>``), sanitised.

    Used only in messages and as the slide id; never as a path.
    """
    return safe_name(_TEMPFILE_PREFIX.sub("", uploaded.name, count=1) or uploaded.name)


def safe_name(filename: str) -> str:
    """A client-given file name reduced to ``[A-Za-z0-9._-]`` (at most 120 characters), for messages and ids."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename).name).strip("._") or "upload"
    return name[-120:]


def sniff(path: Path) -> str | None:
    """File family from the first bytes ("tiff", "png", "jpeg", "hdf5", "dicom") or None."""
    with open(path, "rb") as f:
        head = f.read(132)
    if head[128:132] == b"DICM":  # DICOM Part 10: the marker follows a 128-byte preamble
        return "dicom"
    return next((fam for fam, magics in _MAGIC.items() if any(head.startswith(m) for m in magics)), None)


@contextlib.contextmanager
def stashed_upload(
    uploaded: Path, families: Mapping[str, str], max_bytes: int, what: str
) -> Iterator[tuple[Path, str]]:
    """Validate an upload and yield ``(private path, display name)``; the private folder is removed after.

    ``families`` maps each accepted suffix to the family its magic bytes must show.
    """
    uploaded = Path(uploaded)
    if not uploaded.resolve().is_relative_to(Path(tempfile.gettempdir()).resolve()):
        # BentoML writes every upload under the temp dir; anything else was not uploaded by this request
        raise ServingError(400, "not_an_upload", f"{what} must be an uploaded file")
    name = client_filename(uploaded)
    suffix = check_upload(uploaded, name, families, max_bytes, what)
    private = Path(tempfile.mkdtemp(prefix="slidemil-upload-"))  # mode 0700: only this server user can read
    try:
        dest = private / f"upload{suffix}"
        shutil.move(uploaded, dest)
        yield dest, name
    finally:
        shutil.rmtree(private, ignore_errors=True)


def check_upload(path: Path, name: str, families: Mapping[str, str], max_bytes: int, what: str) -> str:
    """Refuse an upload that is too large, empty, of a suffix not in ``families`` or whose first bytes are not
    the family its suffix says; returns the (lower-case) suffix."""
    size = path.stat().st_size
    if size > max_bytes:
        raise ServingError(
            413,
            "too_large",
            f"{name}: {_mb(size)} exceeds the upload limit of {_mb(max_bytes)} "
            "(server setting SLIDEMIL_MAX_UPLOAD_MB)",
        )
    if size == 0:
        raise ServingError(400, "empty_file", f"{name}: the uploaded {what} is empty")
    suffix = Path(name).suffix.lower()
    accepted = ", ".join(sorted(families))
    if suffix not in families:
        raise ServingError(
            415,
            "unsupported_format",
            f"{name}: unsupported file type {suffix or '(no extension)'}; accepted: {accepted}",
        )
    family = sniff(path)
    if family != families[suffix]:
        raise ServingError(
            415,
            "unsupported_format",
            f"{name}: the content is not a {families[suffix].upper()} file as its extension "
            f"{suffix} says ({'unrecognised content' if family is None else 'looks like ' + family})",
        )
    return suffix
