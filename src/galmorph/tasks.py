"""The three science tasks: class names (in model output order) and label helpers."""

from __future__ import annotations

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
