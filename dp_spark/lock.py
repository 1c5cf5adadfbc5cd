"""One run at a time per output root: a lease that works on local disks,
HDFS and object stores.

No filesystem pyarrow reaches offers an exclusive create everywhere, so the
lease is an ordering instead: each contender writes its own lease file under
``<root>/_lock/`` (never rewritten), waits a moment longer than the
filesystem's timestamp resolution, and lists the folder; the holder is the
live lease with the earliest modification time as the filesystem assigned it
(ties broken by run id). A contender that wrote after the holder listed sees
the holder's earlier lease and steps back; two that wrote within the same
tick both see both and agree on the id order.

A holder proves it is alive by rewriting a separate heartbeat file every few
seconds (the lease itself keeps its timestamp, so the order never changes).
A lease whose heartbeat is older than its time-to-live is stale: it is
reported, not silently broken, unless its holder ran on this host and its
process is provably gone, or the caller asks to break it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from dp_spark import storage
from dp_spark.errors import DPRuntimeError

log = logging.getLogger(__name__)

LEASE, HEARTBEAT = ".lease", ".alive"


class OutputLocked(DPRuntimeError):
    """Another run holds the output root's lock."""

    exit_code = 4


@dataclass(frozen=True)
class Lease:
    run_id: str
    host: str
    pid: int
    started_at: str
    mtime_ns: int
    heartbeat_ns: int | None

    def describe(self) -> str:
        return f"run {self.run_id} (host {self.host}, pid {self.pid}, started {self.started_at})"


class RunLock:
    """``with RunLock(root, run_id):`` holds the root's lock for the block."""

    def __init__(self, root: str, run_id: str, *, ttl_seconds: float = 120.0, settle_seconds: float | None = None,
                 break_stale: bool = False) -> None:
        self.folder = storage.join(root, "_lock")
        self.run_id = run_id
        self.ttl_ns = int(ttl_seconds * 1e9)
        local = storage.qualify(root).startswith("file://")
        # Object stores stamp files to the second; local disks to the nanosecond.
        self.settle = settle_seconds if settle_seconds is not None else (0.05 if local else 2.5)
        self.break_stale = break_stale
        self._stop = threading.Event()
        self._beating: threading.Thread | None = None

    def _file(self, run_id: str, suffix: str) -> str:
        return storage.join(self.folder, run_id + suffix)

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        storage.write_text(self._file(self.run_id, LEASE), json.dumps({
            "run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }))
        self._heartbeat()
        time.sleep(self.settle)
        while True:
            leases = self.leases()
            now = self._now_ns()
            live = [lease for lease in leases if not self._stale(lease, now)]
            holder = min(live, key=lambda lease: (lease.mtime_ns, lease.run_id))
            stale_before = [lease for lease in leases if self._stale(lease, now)
                            and (lease.mtime_ns, lease.run_id) < (holder.mtime_ns, holder.run_id)]
            if stale_before:
                self._break_or_report(stale_before[0])
                continue
            if holder.run_id != self.run_id:
                self._remove(self.run_id)
                raise OutputLocked(f"output root is locked by {holder.describe()}; runs on one output root "
                                   "are serialised: try again when it has finished")
            break
        self._beating = threading.Thread(target=self._beat, name="dp-spark lock heartbeat", daemon=True)
        self._beating.start()

    def release(self) -> None:
        self._stop.set()
        if self._beating is not None:
            self._beating.join()
        self._remove(self.run_id)

    def leases(self) -> list[Lease]:
        entries = {entry.name: entry for entry in storage.list_dir(self.folder)}
        leases = []
        for name, entry in entries.items():
            if not name.endswith(LEASE):
                continue
            try:
                content = json.loads(storage.read_text(entry.location))
            except (OSError, ValueError):
                continue  # being written or removed right now
            heartbeat = entries.get(name[: -len(LEASE)] + HEARTBEAT)
            leases.append(Lease(content["run_id"], content["host"], int(content["pid"]), content["started_at"],
                                entry.mtime_ns or 0, heartbeat.mtime_ns if heartbeat else None))
        return leases

    def _stale(self, lease: Lease, now_ns: int) -> bool:
        if lease.run_id == self.run_id:
            return False
        if lease.host == socket.gethostname() and not _process_alive(lease.pid):
            return True
        last = lease.heartbeat_ns or lease.mtime_ns
        return now_ns - last > self.ttl_ns

    def _break_or_report(self, lease: Lease) -> None:
        provably_gone = lease.host == socket.gethostname() and not _process_alive(lease.pid)
        if provably_gone or self.break_stale:
            log.warning("breaking the stale lock of %s: %s", lease.describe(),
                        "its process is gone" if provably_gone else "asked to (--break-stale-lock)")
            self._remove(lease.run_id)
            return
        self._remove(self.run_id)
        raise OutputLocked(
            f"output root is locked by {lease.describe()}, whose lease has not been renewed for over "
            f"{self.ttl_ns / 1e9:g} s: if that run is gone, run again with --break-stale-lock "
            f"(or delete {self._file(lease.run_id, LEASE)})"
        )

    def _heartbeat(self) -> None:
        storage.write_text(self._file(self.run_id, HEARTBEAT), str(time.time()))

    def _beat(self) -> None:
        interval = max(0.5, self.ttl_ns / 4e9)
        while not self._stop.wait(interval):
            try:
                self._heartbeat()
            except OSError as error:
                log.warning("could not renew the output root's lock: %s", error)

    def _now_ns(self) -> int:
        """The filesystem's notion of now (its clock stamps the leases)."""
        probe = self._file(self.run_id, HEARTBEAT)
        self._heartbeat()
        for entry in storage.list_dir(self.folder):
            if entry.location == probe and entry.mtime_ns:
                return entry.mtime_ns
        return time.time_ns()

    def _remove(self, run_id: str) -> None:
        for suffix in (LEASE, HEARTBEAT):
            storage.delete(self._file(run_id, suffix))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return True
