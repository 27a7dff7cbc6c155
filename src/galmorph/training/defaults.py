"""What a trained model records about how it is meant to be used by default (#26): the class prior of the
population it scores and the winding-ensemble settings. Scoring, the rescoring pipeline, evaluation and the
promotion floor apply them unless told otherwise (:func:`galmorph.models.io.model_class_prior`,
:func:`galmorph.models.io.model_ensemble`).

* ``extra["class_prior"]`` (``extra["class_prior_source"] = "catalogue"``): the label frequencies of the full
  labelled manifest handed to training (its train + validation part), before any per-class down-sampling,
  class balancing or mirroring. A manifest that is itself a selection of a larger catalogue can carry the
  catalogue's counts in its metadata (``galmorph.catalogue_label_counts``, a ``{label: count}`` mapping;
  written with ``write_manifest(..., extra_meta={"catalogue_label_counts": ...})``): those win.
* ``extra["training_selection_prior"]``: the label frequencies of the rows the network was trained on
  (after down-sampling); ``trained_prior`` stays the prior the loss saw (uniform with balanced weights).
* ``extra["ensemble"]``: ``winding_ensemble`` (on for chirality models), ``weight``, ``min_confidence`` and
  ``source`` (``"default"``: the library defaults of :mod:`galmorph.scoring.ensemble`, chosen on the
  validation half of the winding benchmark). A run with ``winding_stack`` (the chirality ``reference`` preset)
  adds ``stack``, the stacker fitted on its own validation split (``source`` ``"validation"``;
  :func:`galmorph.training.runner._fit_winding_stack`), or ``stack_skipped`` with the reason it was not fitted.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

log = logging.getLogger(__name__)

#: Manifest metadata key (``galmorph.<key>``) with the label counts of the catalogue a manifest was selected from.
CATALOGUE_COUNTS_KEY = "catalogue_label_counts"
#: The winding-ensemble settings recorded when nothing chooses them (galmorph.scoring.ensemble's defaults).
DEFAULT_ENSEMBLE_WEIGHT, DEFAULT_ENSEMBLE_MIN_CONFIDENCE = 3.0, 0.0


def frequencies(counts: Mapping[str, float], classes: Sequence[str]) -> dict[str, float]:
    """``counts`` over ``classes`` as fractions ({} when there is nothing to count)."""
    n = [max(float(counts.get(c, 0) or 0), 0.0) for c in classes]
    tot = sum(n)
    return {c: x / tot for c, x in zip(classes, n)} if tot > 0 else {}


def catalogue_label_counts(catalogue_counts: Mapping[str, int], manifest_meta: Mapping | None,
                           task: str) -> tuple[dict[str, float], str]:
    """``(label counts, where they come from)``: the manifest metadata's catalogue counts when it carries them
    (``"manifest metadata"``), else ``catalogue_counts`` (the usable rows before down-sampling)."""
    meta = (manifest_meta or {}).get(CATALOGUE_COUNTS_KEY)
    if isinstance(meta, Mapping) and meta:
        counts = meta.get(task, meta) if isinstance(meta.get(task), Mapping) else meta
        try:
            return {str(k): float(v) for k, v in counts.items()}, "manifest metadata"
        except (TypeError, ValueError):
            log.warning("manifest metadata %s is not a {label: count} mapping; using the manifest's labels",
                        CATALOGUE_COUNTS_KEY)
    return {str(k): float(v) for k, v in catalogue_counts.items()}, "training manifest"


def recorded_defaults(task: str, classes: Sequence[str], catalogue_counts: Mapping[str, int],
                      selection_counts: Mapping[str, int], manifest_meta: Mapping | None = None) -> dict:
    """The ``ModelSpec.extra`` entries of the module docstring."""
    counts, origin = catalogue_label_counts(catalogue_counts, manifest_meta, task)
    out: dict = {"class_prior": frequencies(counts, classes), "class_prior_source": "catalogue",
                 "class_prior_counts_from": origin,
                 "training_selection_prior": frequencies(selection_counts, classes)}
    chirality = {"CW", "ACW"} <= set(classes)
    out["ensemble"] = {"winding_ensemble": bool(chirality), "weight": DEFAULT_ENSEMBLE_WEIGHT,
                       "min_confidence": DEFAULT_ENSEMBLE_MIN_CONFIDENCE, "source": "default"}
    return out


def datamodule_defaults(datamodule, task: str, manifest_meta: Mapping | None = None) -> dict:
    """:func:`recorded_defaults` of a :class:`galmorph.datasets.datamodule.GalaxyDataModule`: the manifest's
    usable rows before down-sampling, and the training + validation rows after it."""
    frame = datamodule.frame
    sel = frame["label"].astype(str).value_counts().to_dict()
    return recorded_defaults(task, list(datamodule.classes), datamodule.catalogue_counts, sel, manifest_meta)


def manifest_meta_of(path) -> dict:
    """The ``galmorph.*`` metadata of the manifest file ``path`` ({} for None, a CSV or an unreadable file)."""
    if not path:
        return {}
    from galmorph.catalogue.manifest import manifest_metadata

    try:
        return manifest_metadata(path)
    except Exception as exc:  # noqa: BLE001 - the labels of the manifest itself still give the prior
        log.warning("manifest metadata of %s unreadable (%s); the catalogue prior is its labels'", path, exc)
        return {}


def spec_defaults(datamodule, task: str, tags: Mapping | None = None) -> dict:
    """:func:`datamodule_defaults` with the metadata of the manifest file named in the training run's
    ``tags`` (``galmorph.manifest``), as the training run records them in ``ModelSpec.extra``."""
    return datamodule_defaults(datamodule, task, manifest_meta_of((tags or {}).get("galmorph.manifest")))
