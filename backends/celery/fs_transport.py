"""The embedded broker: kombu's filesystem transport with its races closed (docs/celery.md "Embedded broker").

kombu's `filesystem://` channel is not safe when several processes use one folder at once, which is exactly the
embedded default (worker, API, Flower, beat):

- `_put` creates the message file under its final name and only then writes it: a consumer listing the folder
  meanwhile claims it and reads an empty or half-written body ("Unrecoverable error: JSONDecodeError" in the
  worker, seen with Flower and the API inspecting it).
- The exchange table (broadcast and reply routing: inspect, ping, revoke) is created by opening it for writing,
  which empties it before the lock is taken; a reader between the two reads "".
- `_get` claims a message by `shutil.move` into the temp dir, a copy and a delete when that is another file
  system: two consumers can both copy one message (delivered twice), or read half a copy.

This channel writes every message and every exchange table to a staging file and renames it into place (a
rename within one file system is atomic: a reader sees the whole file or none), serialises table updates with an
exclusive lock on one lock file, and claims a message by renaming it into the broker's own `processed` folder
(same file system: exactly one consumer wins). The file names, folders and JSON are kombu's, so queue depths
read from the folder (`backends/celery/queues.py`) and every other process keep working.

kombu picks a transport by the URL's scheme; `install()` points the `filesystem` scheme at this class. It is
called by `celery_config()`, which every process that talks to the broker builds its app from.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from queue import Empty
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import TRANSPORT_ALIASES, filesystem, virtual
from kombu.utils.json import dumps, loads

SCHEME = "filesystem"
STAGING = "staging"  # beside `out`, `processed` and `control` in the broker folder
_TABLE_LOCK = ".exchanges.lock"


def _write_atomically(target: Path, data: bytes, staging: Path) -> None:
    """Write `data` to `target` so no reader ever sees part of it: a staging file, then a rename."""
    staging.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=staging, prefix=".w-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Channel(filesystem.Channel):
    """kombu's filesystem channel with atomic message and table writes and an exactly-once claim."""

    @property
    def staging_folder(self) -> Path:
        return Path(self.transport_options.get("staging_folder") or Path(self.data_folder_out).parent / STAGING)

    @property
    def claim_folder(self) -> Path:
        """Where `_get` renames a message it takes: the broker's `processed` folder (the same file system)."""
        return Path(self.processed_folder)

    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        try:
            _write_atomically(Path(self.data_folder_out) / name, dumps(payload).encode(), self.staging_folder)
        except OSError as exc:
            raise ChannelError(f"Cannot add message {name!r} to {self.data_folder_out}") from exc

    def _get(self, queue: str) -> Any:
        wanted = f"{queue}.msg"
        folder = Path(self.data_folder_in)
        self.claim_folder.mkdir(parents=True, exist_ok=True)
        for name in sorted(os.listdir(folder)):
            if name.partition(".")[2] != wanted:
                continue
            claimed = self.claim_folder / name
            try:
                os.rename(folder / name, claimed)
            except FileNotFoundError:
                continue  # another consumer took it first
            try:
                payload = claimed.read_bytes()
            finally:
                if not self.store_processed:
                    claimed.unlink(missing_ok=True)
            return loads(payload.decode())
        raise Empty()

    # ------------------------------------------------------------------------------------ the exchange tables
    @contextlib.contextmanager
    def _tables_locked(self) -> Iterator[None]:
        self.control_folder.mkdir(parents=True, exist_ok=True)
        with open(self.control_folder / _TABLE_LOCK, "a+b") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def get_table(self, exchange: str) -> list[Any]:
        """The table as the last complete write left it (writes are renames: no lock needed to read)."""
        file = self._exchange_file(exchange)
        try:
            text = file.read_text()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ChannelError(f"Cannot open {file}") from exc
        return [filesystem.exchange_queue_t(*q) for q in loads(text)]

    def _write_table(self, exchange: str, queues: list[Any]) -> None:
        _write_atomically(self._exchange_file(exchange), dumps(queues).encode(), self.staging_folder)

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        try:
            with self._tables_locked():
                queues = self.get_table(exchange)
                if entry not in queues:
                    self._write_table(exchange, [entry, *queues])
        except OSError as exc:
            raise ChannelError(f"Cannot bind {queue!r} to {exchange!r}") from exc

    def _delete(self, queue: str, exchange: str, routing_key: str, pattern: str, *args: Any, **kwargs: Any) -> None:
        virtual.Channel._delete(self, queue, exchange, routing_key, pattern, *args, **kwargs)
        entry = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        try:
            with self._tables_locked():
                queues = self.get_table(exchange)
                if entry in queues:
                    self._write_table(exchange, [q for q in queues if q != entry])
        except OSError as exc:
            raise ChannelError(f"Cannot unbind {queue!r} from {exchange!r}") from exc


class Transport(filesystem.Transport):
    Channel = Channel
    # One broker state for every connection of the process, like kombu's own (its class attribute is per class).
    global_state = virtual.BrokerState()


def install() -> None:
    """Make the `filesystem://` scheme mean this transport in this process (idempotent)."""
    TRANSPORT_ALIASES[SCHEME] = f"{__name__}:Transport"
