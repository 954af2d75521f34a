"""Graceful stops on SIGINT and SIGTERM: the first asks the run to checkpoint and exit, a second exits at once.

Python runs signal handlers only between bytecodes, so a handler alone cannot react while
the main thread waits inside a long XLA call. The C-level handler also writes the signal
number to a wakeup pipe at once, though; a watcher thread reads it, records the first signal
for the training loop to see after its current meta-step, and on a second signal exits the
process immediately (exit status 128 + signal), after its registered cleanups.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from typing import Callable, Iterator, List, Optional

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def exit_status(signal_number: int) -> int:
    """Returns the shell's exit status for a process ended by `signal_number` (130 for SIGINT, 143 for SIGTERM)."""
    return 128 + int(signal_number)


class StopRequest:
    """The first SIGINT or SIGTERM this process received while `graceful_stop` was active, if any."""

    def __init__(self) -> None:
        self.signal_number: Optional[int] = None
        self.last_saved_step: Optional[int] = None
        self._cleanups: List[Callable[[], None]] = []
        self._handled: frozenset = frozenset()

    def requested(self) -> bool:
        """Returns whether a stop was asked for."""
        return self.signal_number is not None

    @property
    def signal_name(self) -> str:
        """The name of the signal that asked for the stop, e.g. 'SIGTERM'."""
        return signal.Signals(self.signal_number).name if self.signal_number else ""

    @property
    def exit_status(self) -> int:
        """The exit status the process should end with: 128 + the signal number."""
        return exit_status(self.signal_number) if self.signal_number else 0

    def reclaim_signals(self) -> None:
        """Re-installs the handlers over any that native code set since (jax.distributed's preemption
        notifier takes SIGTERM at the operating-system level, where Python does not see the change)."""
        for number in self._handled:
            signal.signal(number, _record_only)

    def on_immediate_exit(self, cleanup: Callable[[], None]) -> None:
        """Registers `cleanup` (fast, e.g. releasing a lock file) to run before a second signal exits the process."""
        self._cleanups.append(cleanup)

    def _exit_now(self, signal_number: int) -> None:
        saved = (f"the checkpoint at meta-step {self.last_saved_step} is intact"
                 if self.last_saved_step is not None else "nothing had been saved")
        name = signal.Signals(signal_number).name
        print(f"second signal ({name}): exited at once without saving; {saved}; rerun the same command to resume",
              file=sys.stderr, flush=True)
        for cleanup in self._cleanups:
            with contextlib.suppress(Exception):
                cleanup()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
        os._exit(exit_status(signal_number))

    def _watch(self, read_fd: int, handled: frozenset) -> None:
        """Reads signal numbers from the wakeup pipe until it is closed."""
        while True:
            try:
                select.select([read_fd], [], [])
                data = os.read(read_fd, 64)
            except BlockingIOError:
                continue
            except (OSError, ValueError):
                return
            if not data:
                return
            for number in data:
                if number not in handled:
                    continue
                if self.signal_number is None:
                    self.signal_number = number
                else:
                    self._exit_now(number)


def _record_only(number: int, frame: object) -> None:
    """The Python-level handler: nothing to do, the watcher thread has already seen the signal."""


@contextlib.contextmanager
def graceful_stop() -> Iterator[StopRequest]:
    """Within the block, SIGINT and SIGTERM set the yielded StopRequest instead of ending the process.

    A second signal ends the process at once. Signals that were ignored when the block was
    entered (SIGINT in a background job, `nohup`) stay ignored. Outside the main thread, where
    handlers cannot be installed, the request is never set.
    """
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    handled = frozenset(int(s) for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN)
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    previous_handlers = {s: signal.signal(s, _record_only) for s in handled}
    request._handled = handled
    previous_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    watcher = threading.Thread(target=request._watch, args=(read_fd, handled), name="lopt-signal-watch", daemon=True)
    watcher.start()
    try:
        yield request
    finally:
        request._handled = frozenset()
        signal.set_wakeup_fd(previous_wakeup)
        for number, handler in previous_handlers.items():
            signal.signal(number, handler)
        os.close(write_fd)
        watcher.join(timeout=5.0)
        os.close(read_fd)
