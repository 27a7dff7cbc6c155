"""What a labeller can answer for each task: the task's classes (:data:`galmorph.tasks.TASKS`, the
names the label database stores, the export writes and training reads) plus ``unsure`` (skip: counts
as seen, never exported), the keyboard key and button text of each, and the app's overlays.

========== ======================================================= =================
task       labels (key)                                            overlay (``O``)
========== ======================================================= =================
lopsided   symmetric (S), lopsided (L), unsure (U)                 ``a1``: A1 centre, R50/R90
arms       1 (1), 2 (2), 3 (3), 4 (4), 5+ (5), cant_tell (X),      ``winding``: annulus
           unsure (U)
chirality  CW (C), ACW (A), other (X), unsure (U)                  ``winding``: annulus + sense
========== ======================================================= =================

``Z`` (undo) and ``O`` (overlay) are the app's own keys on every page.
"""

from __future__ import annotations

from dataclasses import dataclass

from galmorph.tasks import TASKS

#: The skip answer of every task (never exported, never a class).
UNSURE = "unsure"
#: Keys of the app itself (not labels).
APP_KEYS = {"z": "undo", "o": "overlay"}
#: Overlays the app can draw.
OVERLAYS = ("a1", "winding")


@dataclass(frozen=True)
class LabelChoice:
    label: str  # stored and exported value (a class of the task, or "unsure")
    key: str  # keyboard key (lower case)
    text: str  # button text


@dataclass(frozen=True)
class TaskLabelling:
    """The labelling set-up of one task."""

    task: str
    title: str
    choices: tuple[LabelChoice, ...]
    overlays: tuple[str, ...]

    @property
    def classes(self) -> tuple[str, ...]:
        """The task's classes (exported labels), in :data:`galmorph.tasks.TASKS` order."""
        return TASKS[self.task].classes

    @property
    def labels(self) -> tuple[str, ...]:
        """Every label a labeller can give: the classes, then ``unsure``."""
        return tuple(c.label for c in self.choices)

    @property
    def keys(self) -> dict[str, str]:
        return {c.key: c.label for c in self.choices}

    def describe(self) -> str:
        return ", ".join(self.labels)


def _choices(task: str, keys: dict[str, str], texts: dict[str, str]) -> tuple[LabelChoice, ...]:
    labels = (*TASKS[task].classes, UNSURE)
    return tuple(LabelChoice(c, keys[c], texts.get(c, c)) for c in labels)


_UNSURE_TEXT = {UNSURE: "Unsure/skip"}

LABELLING: dict[str, TaskLabelling] = {
    "lopsided": TaskLabelling(
        "lopsided", "lopsidedness",
        _choices("lopsided", {"symmetric": "s", "lopsided": "l", UNSURE: "u"},
                 {"symmetric": "Symmetric", "lopsided": "Lopsided", **_UNSURE_TEXT}),
        ("a1",)),
    "arms": TaskLabelling(
        "arms", "spiral-arm number (GZ2 question 11)",
        _choices("arms", {"1": "1", "2": "2", "3": "3", "4": "4", "5+": "5", "cant_tell": "x", UNSURE: "u"},
                 {"1": "1 arm", "2": "2 arms", "3": "3 arms", "4": "4 arms", "5+": "5 or more",
                  "cant_tell": "Can't tell", **_UNSURE_TEXT}),
        ("winding",)),
    "chirality": TaskLabelling(
        "chirality", "winding sense (chirality)",
        _choices("chirality", {"CW": "c", "ACW": "a", "other": "x", UNSURE: "u"},
                 {"CW": "Clockwise (Z-wise)", "ACW": "Anticlockwise (S-wise)", "other": "Other (no clear winding)",
                  **_UNSURE_TEXT}),
        ("winding",)),
}


def labelling_for(task: str) -> TaskLabelling:
    """The labelling set-up of ``task``; ValueError naming the tasks for an unknown one."""
    try:
        return LABELLING[task]
    except KeyError:
        raise ValueError(f"unknown labelling task {task!r}; expected one of {sorted(LABELLING)}") from None


def label_choices(task: str) -> tuple[str, ...]:
    """Every label a labeller can give for ``task`` (its classes, then ``unsure``)."""
    return labelling_for(task).labels

