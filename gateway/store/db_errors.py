"""What a database or driver error means for the request that met it: a conflict, a refused value, an outage.

The API answers each kind with its own status (409, 400, 503 with Retry-After, 500) but must not know the
driver's exception tree; this module does. `HANDLED` lists the exception types the API registers a handler
for; `classify` reads one (and its chain) into a `DbFault`.
"""

from __future__ import annotations

from enum import Enum

import asyncpg
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, SQLAlchemyError

from common.redact import redact_text
from gateway.store.db import database_unavailable


class DbFault(Enum):
    """Who is at fault, and so which answer the client gets."""

    CONFLICT = "conflict"  # a unique key or reference refused the write: 409
    TOO_LARGE = "too_large"  # an integer beyond what the driver binds (SQLite's, outside the DBAPI tree): 400
    REFUSED_VALUE = "refused_value"  # the database refused a value from the request (NUL byte, out of range): 400
    UNAVAILABLE = "unavailable"  # the database cannot be reached now; the same request may be sent again: 503
    UNEXPECTED = "unexpected"  # anything else: a bug, 500


# Every exception type the API maps with `classify`: SQLAlchemy's tree, the driver's own (a statement run on
# the driver's connection directly, `gateway.store.driver`), a bare OSError (a refused connection escapes
# SQLAlchemy's wrapping) and OverflowError (SQLite's driver refuses integers beyond 64 bits).
HANDLED: tuple[type[BaseException], ...] = (
    SQLAlchemyError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    OverflowError,
)


def classify(exc: BaseException) -> DbFault:
    if isinstance(exc, IntegrityError):
        return DbFault.CONFLICT
    if isinstance(exc, OverflowError):
        return DbFault.TOO_LARGE
    if refused_value(exc):
        return DbFault.REFUSED_VALUE
    if isinstance(exc, DBAPIError) or database_unavailable(exc):
        # A wrapped DBAPI error that is not the request's fault is answered as an outage (retry may help).
        return DbFault.UNAVAILABLE
    return DbFault.UNEXPECTED


def describe(exc: BaseException) -> str:
    """One redacted line for the log: the driver's own error where SQLAlchemy wrapped one."""
    inner = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    return redact_text(f"{type(inner).__name__}: {inner}")


def refused_value(exc: BaseException) -> bool:
    """A data exception (SQLSTATE class 22) or a driver's refusal to encode a value, anywhere in the chain.

    asyncpg's adapter raises a generic DBAPI `Error` for both; the cause is asyncpg's DataError (a ValueError)
    or a server error whose sqlstate starts with 22; psycopg2 raises DataError with such a pgcode.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DataError | ValueError | OverflowError):
            return True
        code = getattr(current, "sqlstate", None) or getattr(current, "pgcode", None)
        if isinstance(code, str) and code.startswith("22"):
            return True
        current = getattr(current, "orig", None) or current.__cause__
    return False
