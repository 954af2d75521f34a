"""The project's one speedup: how much sooner an optimizer's loss settles at a reference's final loss.

Every report (the end-of-run report of `lopt-meta-train`, `lopt-evaluate`, the suites and the
benchmark scripts) counts speed with `speedups` and states it with SPEEDUP_DEFINITION.
"""

from __future__ import annotations

import numpy as np

SPEEDUP_WINDOW = 10
SPEEDUP_DEFINITION = (
    f"budget / the step from which the {SPEEDUP_WINDOW}-step running mean of the training loss stays at or below the "
    f"reference's final training loss (mean of its last {SPEEDUP_WINDOW} steps) on the same task and seed; "
    "0 if not reached")


def first_step_staying(curve: np.ndarray, target: float, window: int = 10) -> int:
    """Returns the first step from which the running mean (over `window` steps) of `curve` stays <= `target`, or -1.

    A noisy curve that dips below the target and comes back does not count.
    """
    if curve.shape[0] < window:
        window = 1
    smoothed = np.convolve(curve, np.ones(window) / window, mode="valid")
    above = np.nonzero(~(smoothed <= target))[0]
    if above.size == 0:
        return window
    return -1 if above[-1] == smoothed.shape[0] - 1 else int(above[-1] + 1 + window)


def speedups(train_losses: np.ndarray, reference_losses: np.ndarray, window: int = SPEEDUP_WINDOW) -> np.ndarray:
    """Returns per-run speedups [...]: steps / the step from which the running mean of `train_losses` stays at or below
    the reference's final loss; the project's one speedup definition (SPEEDUP_DEFINITION).

    Both arrays are [..., steps] with matching leading axes (e.g. [seeds, tasks]); the
    reference's final loss is the mean of its last `window` losses; 0.0 where not reached by
    the end. Staying (not first touching) keeps batch noise on a plateau from counting as speed.
    """
    train_losses, reference_losses = np.asarray(train_losses), np.asarray(reference_losses)
    num_steps = train_losses.shape[-1]
    flat, flat_reference = train_losses.reshape(-1, num_steps), reference_losses.reshape(-1, reference_losses.shape[-1])
    out = np.zeros(flat.shape[0])
    for i, (curve, reference) in enumerate(zip(flat, flat_reference)):
        span = min(window, reference.shape[0])
        target = float(np.convolve(reference, np.ones(span) / span, mode="valid")[-1])
        reached = first_step_staying(np.where(np.isfinite(curve), curve, np.inf), target, window) if np.isfinite(target) else -1
        out[i] = num_steps / reached if reached > 0 else 0.0
    return out.reshape(train_losses.shape[:-1])


def geometric_mean(values: np.ndarray) -> float:
    """Returns the geometric mean of positive values (inf if any is not finite)."""
    values = np.asarray(values, np.float64)
    if not np.all(np.isfinite(values)) or np.any(values <= 0):
        return float("inf")
    return float(np.exp(np.mean(np.log(values))))
