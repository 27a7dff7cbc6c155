"""The three science tasks: class names (in model output order) and label helpers."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    classes: tuple[str, ...]
    description: str


TASKS: dict[str, TaskSpec] = {
    "lopsided": TaskSpec(
        "lopsided", ("symmetric", "lopsided"), "Lopsided vs symmetric face-on spirals (SDSS)."
    ),
    "arms": TaskSpec(
        "arms", ("1", "2", "3", "4", "5+", "cant_tell"), "Spiral-arm number (GZ2 question 11)."
    ),
    # Order matters for the chirality-equivariant prediction: CW, ACW, other.
    "chirality": TaskSpec(
        "chirality", ("CW", "ACW", "other"), "Winding sense: clockwise (Z) / anticlockwise (S) / other."
    ),
}

#: Arm-class merges offered by the arm-number study.
ARM_MERGES: dict[str, dict[str, str]] = {
    "none": {},
    "3+4": {"3": "3+4", "4": "3+4"},
    "4+5+": {"4": "4+", "5+": "4+"},
}


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of {sorted(TASKS)}") from None


def arm_classes(merge: str = "none", include_cant_tell: bool = True) -> tuple[str, ...]:
    """Arm classes after an optional merge, in a stable order."""
    if merge not in ARM_MERGES:
        raise ValueError(f"unknown arm merge {merge!r}; expected one of {sorted(ARM_MERGES)}")
    mapping = ARM_MERGES[merge]
    out: list[str] = []
    for c in TASKS["arms"].classes:
        if c == "cant_tell" and not include_cant_tell:
            continue
        m = mapping.get(c, c)
        if m not in out:
            out.append(m)
    return tuple(out)


#: The simulator's truth column of each task's label (``simulate_dataset``'s manifest).
TASK_LABEL_COLUMNS = {"lopsided": "label_lopsided", "arms": "label_arms", "chirality": "label_chirality"}


def chirality_violation(n_acw: int, n_cw: int) -> tuple[float, float]:
    """``(CVS, sigma)`` with CVS = (n_ACW - n_CW)/sqrt(n_ACW + n_CW); sigma = 1 (the statistic is in
    units of its own Poisson scatter). NaN for an empty sample."""
    n_acw, n_cw = int(n_acw), int(n_cw)
    if n_acw < 0 or n_cw < 0:
        raise ValueError(f"counts must be >= 0, got n_acw={n_acw}, n_cw={n_cw}")
    n = n_acw + n_cw
    if n == 0:
        return float("nan"), float("nan")
    return (n_acw - n_cw) / math.sqrt(n), 1.0
