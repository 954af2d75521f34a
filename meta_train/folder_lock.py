"""One run per folder: a lock file naming its holder (pid, host, start time), released at exit, taken over when stale.

The lock is `FOLDER/lock.json`, created atomically (written beside it, then hard-linked into
place, which fails if it exists, also on NFS). A lock is stale when its holder is gone: on the
same host, when its pid is not running (or is running a different process, by its start time,
or the host has rebooted since); on another host, which cannot be asked, when the holder's
heartbeat (the lock file's modification time, touched every `HEARTBEAT_SECONDS`) is older
than `STALE_AFTER_SECONDS`.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional

LOCK_FILE = "lock.json"
HEARTBEAT_SECONDS = 30.0
STALE_AFTER_SECONDS = 180.0


class FolderLockedError(OSError):
    """Another live run holds the folder's lock."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start_ticks(pid: int) -> Optional[int]:
    """Returns when process `pid` started (clock ticks after boot, from /proc), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe(holder: Dict[str, Any]) -> str:
    """Returns who holds a lock, in words: program, pid, host and start time."""
    return (f"{holder.get('program', 'a run')} (pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')})")


class FolderLock:
    """The lock on one folder held by this process; `acquire` takes it, `release` gives it back."""

    def __init__(self, folder: str | os.PathLike, program: str):
        self.folder = Path(folder).absolute()
        self.path = self.folder / LOCK_FILE
        self.program = program
        self.token = uuid.uuid4().hex
        self.held = False
        self._stop_heartbeat = threading.Event()
        self._heartbeat: Optional[threading.Thread] = None

    def _record(self) -> Dict[str, Any]:
        pid = os.getpid()
        return {
            "program": self.program, "pid": pid, "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "boot_id": _boot_id(), "process_start_ticks": _process_start_ticks(pid), "token": self.token,
        }

    def _read(self) -> Optional[Dict[str, Any]]:
        """Returns the lock file's record, None if there is no lock file, {} if it cannot be parsed."""
        try:
            record = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return record if isinstance(record, dict) else {}

    def _why_stale(self, holder: Dict[str, Any]) -> Optional[str]:
        """Returns why `holder` is gone, or None while it may still be running."""
        if not holder:
            return "the lock file is unreadable" if self._heartbeat_age() > STALE_AFTER_SECONDS else None
        if holder.get("host") == socket.gethostname():
            if holder.get("boot_id") and holder.get("boot_id") != _boot_id():
                return "the host has restarted since"
            pid = int(holder.get("pid", -1))
            if pid <= 0 or not _pid_running(pid):
                return "that process is gone"
            ticks = holder.get("process_start_ticks")
            if ticks is not None and _process_start_ticks(pid) not in (None, ticks):
                return "its pid now belongs to another process"
            return None
        age = self._heartbeat_age()
        return f"its heartbeat stopped {age:.0f} s ago" if age > STALE_AFTER_SECONDS else None

    def _heartbeat_age(self) -> float:
        """Seconds since the lock file was last touched, measured on the folder's own filesystem clock."""
        try:
            touched = self.path.stat().st_mtime
            with tempfile.NamedTemporaryFile(dir=self.folder, prefix=".clock_probe") as probe:
                now = os.fstat(probe.fileno()).st_mtime
        except OSError:
            return 0.0
        return now - touched

    def _link_new_lock(self) -> bool:
        """Creates the lock file with this process's record; False if one already exists."""
        handle, temporary = tempfile.mkstemp(dir=self.folder, prefix=f".{LOCK_FILE}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w") as out:
                json.dump(self._record(), out, indent=2)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, 0o644)
            os.link(temporary, self.path)
            return True
        except FileExistsError:
            return False
        finally:
            Path(temporary).unlink(missing_ok=True)

    def _take_over(self, stale: Dict[str, Any]) -> bool:
        """Removes a stale lock file if it is still the one judged stale; False if another run replaced it."""
        aside = self.folder / f".{LOCK_FILE}.stale-{self.token}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return True
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = {}
        if moved.get("token") != stale.get("token"):
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def acquire(self) -> None:
        """Takes the lock, taking over a stale one with a note on stderr; FolderLockedError names a live holder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            if self._link_new_lock():
                self.held = True
                self._start_heartbeat()
                return
            holder = self._read()
            if holder is None:
                continue
            why = self._why_stale(holder)
            if why is None:
                raise FolderLockedError(
                    f"{self.folder} is in use by {describe(holder)}; wait for it to finish or stop it, or if it is "
                    f"gone delete {self.path}"
                )
            if self._take_over(holder):
                print(f"note: took over the lock of {self.folder} from {describe(holder)}: {why}",
                      file=sys.stderr, flush=True)
        raise FolderLockedError(f"{self.folder} is being locked by another run at the same moment; try again")

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop_heartbeat.wait(HEARTBEAT_SECONDS):
                with contextlib.suppress(OSError):
                    os.utime(self.path)

        self._heartbeat = threading.Thread(target=beat, name="lopt-lock-heartbeat", daemon=True)
        self._heartbeat.start()

    def still_held(self) -> bool:
        """Returns whether the lock file still names this process (another run may have judged it stale)."""
        holder = self._read()
        return bool(holder) and holder.get("token") == self.token

    def release(self) -> None:
        """Deletes the lock file if it is still this process's; safe to call more than once."""
        if not self.held:
            return
        self.held = False
        self._stop_heartbeat.set()
        if self.still_held():
            with contextlib.suppress(OSError):
                self.path.unlink()


@contextlib.contextmanager
def folder_lock(
    folder: str | os.PathLike, program: str, *, primary: bool = True,
    all_agree: Callable[[bool], bool] = lambda ok: ok,
) -> Iterator[Optional[FolderLock]]:
    """Holds `folder`'s lock for the block.

    With several processes only the `primary` one locks (the block gets None elsewhere), and
    `all_agree(ok)`, which must return process 0's `ok` on every process, makes every
    process raise FolderLockedError when the primary could not take the lock.
    """
    lock, refused = (FolderLock(folder, program), None) if primary else (None, None)
    if lock is not None:
        try:
            lock.acquire()
        except FolderLockedError as err:
            refused = err
    if not all_agree(refused is None):
        raise refused or FolderLockedError(f"{Path(folder).absolute()} is in use by another run (see process 0)")
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()
