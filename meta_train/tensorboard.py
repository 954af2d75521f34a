"""TensorBoard event files for meta-training and evaluation runs, written with tensorboardX (no TensorFlow needed).

tensorboardX is an optional dependency (`pip install "lopt[tensorboard]"`). Every writer takes a
setting "auto" (write events when tensorboardX is installed), "on" (it must be) or "off". Events
can be read back without TensorFlow or TensorBoard with `read_events` and `read_scalars`.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional

import jax
import numpy as np

from lopt.tensor_map import parameter_path

SETTINGS = ("auto", "on", "off")
FOLDER = "tensorboard"
INSTALL_COMMAND = 'pip install "lopt[tensorboard]"'
# Metric lines' bookkeeping that is the step axis or TensorBoard's own wall time, not a curve.
NOT_SCALARS = ("step", "time")


def available() -> bool:
    """Returns whether tensorboardX can be imported."""
    try:
        import tensorboardX  # noqa: F401
    except ImportError:
        return False
    return True


def missing_message(setting: str) -> str:
    """Returns the one-line error for `setting` (how the user turned events on) without tensorboardX installed."""
    return f"{setting} writes TensorBoard events, which needs tensorboardX: {INSTALL_COMMAND} (or choose auto or off)"


def enabled(setting: str) -> bool:
    """Returns whether events are written under `setting` ("auto": when tensorboardX is installed, "on", "off")."""
    return setting == "on" or (setting == "auto" and available())


class EventWriter:
    """Event files in `folder` (one TensorBoard run), or a writer of nothing when `folder` is None.

    A context manager: events still queued are flushed and the file closed when the block ends,
    also on an error or interrupt. `purge_step` hides, in TensorBoard, events an earlier
    invocation wrote at that step or later (a run resumed from a checkpoint writes them again).
    """

    def __init__(self, folder: Optional[str | Path], *, purge_step: Optional[int] = None):
        self.folder = None if folder is None else Path(folder)
        self._writer = None
        if self.folder is not None:
            from tensorboardX import SummaryWriter

            # The file name carries nanoseconds: tensorboardX's own name has whole seconds only, and a second
            # writer opened within the same second (a quick resume) would truncate the first one's file.
            self._writer = SummaryWriter(str(self.folder), purge_step=purge_step, flush_secs=30,
                                         filename_suffix=f".{time.time_ns()}")

    def scalars(self, values: Mapping[str, Any], step: int) -> None:
        """Writes each finite numeric value of `values` as a scalar at `step` (strings, non-finite values, which
        metrics.jsonl keeps, and NOT_SCALARS are left out)."""
        if self._writer is None:
            return
        for tag, value in values.items():
            if tag in NOT_SCALARS or isinstance(value, str) or not np.isfinite(float(value)):
                continue
            self._writer.add_scalar(tag, float(value), int(step))

    def curve(self, tag: str, values: np.ndarray, steps: np.ndarray) -> None:
        """Writes `values[i]` as scalar `tag` at `steps[i]`, leaving out non-finite points."""
        if self._writer is None:
            return
        for step, value in zip(np.asarray(steps), np.asarray(values, np.float64)):
            if np.isfinite(value):
                self._writer.add_scalar(tag, float(value), int(step))

    def histograms(self, tree: Any, step: int, prefix: str) -> None:
        """Writes one histogram per leaf of the host-side pytree `tree`, tagged `prefix/<leaf path>`, at `step`.

        Non-finite entries are left out (a histogram of them has no range); a leaf with none finite is skipped.
        """
        if self._writer is None:
            return
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            values = np.asarray(leaf, np.float64).reshape(-1)
            values = values[np.isfinite(values)]
            if values.size:
                self._writer.add_histogram(f"{prefix}/{parameter_path(path)}", values, int(step))

    def flush(self) -> None:
        """Writes queued events to disk."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> "EventWriter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def read_events(folder: str | Path) -> Iterator[Any]:
    """Yields the Event protos of every event file in `folder`, oldest file first.

    Event files are TFRecords: uint64 length, uint32 masked CRC of the length, the data, uint32
    masked CRC of the data. A record cut short (a writer killed mid-write) ends its file; a
    record whose data fails its CRC is skipped.
    """
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    files = sorted(p for p in Path(folder).iterdir() if p.is_file() and "tfevents" in p.name)
    for path in files:
        data, offset = path.read_bytes(), 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack_from("<Q", data, offset)
            start, end = offset + 12, offset + 12 + length
            if end + 4 > len(data):
                break
            (crc,) = struct.unpack_from("<I", data, end)
            record = data[start:end]
            offset = end + 4
            if masked_crc32c(record) == crc:
                yield Event.FromString(record)


def read_scalars(folder: str | Path) -> Dict[str, Dict[int, float]]:
    """Returns {tag: {step: value}} of the scalars in `folder`'s event files as TensorBoard shows them.

    A step written twice keeps the later value, and a writer opened with `purge_step` drops what
    earlier files held at that step or later.
    """
    from tensorboardX.proto.event_pb2 import SessionLog

    scalars: Dict[str, Dict[int, float]] = {}
    for event in read_events(folder):
        if event.HasField("session_log") and event.session_log.status == SessionLog.START:
            kept = {tag: {step: v for step, v in values.items() if step < event.step} for tag, values in scalars.items()}
            scalars = {tag: values for tag, values in kept.items() if values}
        for value in event.summary.value:
            if value.HasField("simple_value"):
                scalars.setdefault(value.tag, {})[int(event.step)] = float(value.simple_value)
    return scalars
