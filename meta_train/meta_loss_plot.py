"""The meta-loss curve of a run as a PNG, redrawn from its metrics file at every checkpoint."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import List, Tuple

import numpy as np

PLOT_FILE = "meta_loss.png"


def read_meta_losses(metrics_path: Path) -> Tuple[np.ndarray, np.ndarray]:
    """Returns (meta-steps, meta-losses) from a JSON-lines metrics file, skipping lines without a meta-loss."""
    steps: List[int] = []
    losses: List[float] = []
    if not metrics_path.exists():
        return np.zeros(0, np.int64), np.zeros(0)
    for line in metrics_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if "meta_loss" in record and "step" in record:
            steps.append(int(record["step"]))
            losses.append(float(record["meta_loss"]))
    return np.asarray(steps, np.int64), np.asarray(losses)


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Returns the mean of each value and the up to `window - 1` values before it."""
    if values.size == 0:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, values.size + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def plot_meta_loss(metrics_path: Path, png_path: Path, title: str = "") -> bool:
    """Draws meta-loss against meta-step (each logged value and a running mean) into `png_path`.

    Returns False, writing nothing, when the metrics hold fewer than two points. The file is
    replaced atomically, so a crash mid-draw leaves the previous picture.
    """
    steps, losses = read_meta_losses(metrics_path)
    if steps.size < 2:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    finite = np.isfinite(losses)
    window = max(1, int(math.ceil(steps.size / 50)))
    figure, axis = plt.subplots(figsize=(7.0, 4.2))
    axis.plot(steps[finite], losses[finite], color="0.75", linewidth=0.7, label="logged meta-loss")
    axis.plot(steps[finite], running_mean(losses[finite], window), color="C0", linewidth=1.6,
              label=f"running mean of {window}")
    if np.all(losses[finite] > 0):
        axis.set_yscale("log")
    axis.set_xlabel("meta-step")
    axis.set_ylabel("meta-loss (mean normalised inner loss)")
    axis.set_title(title or str(metrics_path.parent), fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    temporary = png_path.with_name(f".{png_path.name}.tmp.png")
    figure.savefig(temporary, dpi=100)
    plt.close(figure)
    os.replace(temporary, png_path)
    return True
