"""Client mistakes are not server errors: BentoML logs every refused request at ERROR with a traceback.

BentoML's HTTP layer calls ``log_exception`` (logger ``bentoml._internal.server.http_app``) for request
validation errors and its own 4xx exceptions alike; this filter turns those records into one WARNING line
naming the route and the reason, and leaves real failures (5xx, unexpected exceptions) untouched.
"""

from __future__ import annotations

import logging

_BENTOML_HTTP_LOGGER = "bentoml._internal.server.http_app"


def _is_client_error(exc: BaseException) -> bool:
    from bentoml.exceptions import BentoMLException
    from pydantic import ValidationError
    from starlette.requests import ClientDisconnect

    if isinstance(exc, ValidationError | ClientDisconnect):
        return True
    return isinstance(exc, BentoMLException) and int(exc.error_code) < 500


class _ClientErrorsAsWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and _is_client_error(exc):
            reason = " ".join(str(exc).split())[:500]
            record.msg = f"{record.getMessage()}: refused ({type(exc).__name__}: {reason})"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_client_errors() -> None:
    """Install the filter once per process."""
    logger = logging.getLogger(_BENTOML_HTTP_LOGGER)
    if not any(isinstance(f, _ClientErrorsAsWarnings) for f in logger.filters):
        logger.addFilter(_ClientErrorsAsWarnings())
