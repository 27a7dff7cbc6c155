"""The winding measurement beside a chirality network: agreement (a promotion check) and an optional
ensemble member for scoring.

Both read the signed winding statistic ``z`` of :func:`galmorph.imaging.winding.winding_sense`
(``z > 0``: Z-wise = GZ "clockwise" = CW; ``|z|`` = its confidence) per galaxy, measured on the image
the network scored (:func:`measure_winding_table`).

**Agreement** (:func:`winding_agreement`): on the galaxies where the measurement is confident
(``|z| >= min_confidence``) *and* the network predicts CW or ACW, the fraction whose predicted sense
differs from the measured one. The measurement says which way arms wind, not whether a galaxy has
arms, so galaxies the network calls "other" are left out.

**Ensemble rule** (:func:`combine_winding`, product of experts on the CW-vs-ACW odds): for a galaxy the
network calls a spiral (``p_other < max_p_other``) and whose measurement is confident
(``|z| >= min_confidence``),

    logit'(CW vs ACW) = log(p_CW / p_ACW) + weight * z

with the spiral mass ``p_CW + p_ACW`` and ``p_other`` unchanged; every other galaxy keeps the network's
probabilities. The rule is odd under a mirror (the mirror of a galaxy has ``-z``, and a
chirality-equivariant network swaps ``p_CW``/``p_ACW``), so the combined output swaps CW/ACW under a
mirror too. ``weight`` (log-odds per unit of ``z``) is chosen on a tuning half with
:func:`fit_winding_weight` (the CW/ACW log-likelihood of the combined output). The defaults
(:data:`DEFAULT_WEIGHT` 3, :data:`DEFAULT_MIN_CONFIDENCE` 0) were chosen that way on the winding
benchmark's tuning half of the public GZ1 CW/ACW galaxies with the chirality ``reference`` network
(``benchmarks/ensemble_weight.py``, ``results/ensemble_weight.md``; chosen again, and again 3, with the
network of the current preset): on the other half the combination scored 0.960 ± 0.024 at full coverage
and 0.994 ± 0.009 on the 80 % most confident (network alone 0.946 ± 0.014 and 0.975 ± 0.014).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

CW, ACW, OTHER = "CW", "ACW", "other"
RULE = ("product of experts: log(p_CW/p_ACW) += weight * winding_z where |winding_z| >= min_confidence and "
        "p_other < max_p_other; p_CW + p_ACW and p_other unchanged")
ATTRS_KEY = "galmorph.winding_ensemble"
#: Weight and min_confidence chosen on the tuning half (benchmarks/results/ensemble_weight.md).
DEFAULT_WEIGHT, DEFAULT_MIN_CONFIDENCE = 3.0, 0.0


class EnsembleError(ValueError):
    """The winding ensemble cannot be applied (wrong task/classes or settings)."""


@dataclass(frozen=True)
class WindingEnsemble:
    """Settings of the winding ensemble member (see the module docstring)."""

    weight: float = DEFAULT_WEIGHT  #: log-odds added per unit of winding z
    min_confidence: float = DEFAULT_MIN_CONFIDENCE  #: |z| below this: the measurement is not used
    max_p_other: float = 0.5  #: only galaxies the network calls spiral (p_other below this)
    options: dict = field(default_factory=dict)  #: WindingOptions overrides for the measurement
    workers: int = 1  #: measurement processes (not part of the result)
    source: str = "flag"  #: who chose it: ``flag`` or ``model:<source>`` (recorded, not part of the result)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise EnsembleError(f"winding ensemble weight must be finite and >= 0, got {self.weight}")
        if not self.min_confidence >= 0:
            raise EnsembleError(f"winding ensemble min_confidence must be >= 0, got {self.min_confidence}")
        if not 0 < self.max_p_other <= 1:
            raise EnsembleError(f"winding ensemble max_p_other must be in (0, 1], got {self.max_p_other}")

    def to_dict(self) -> dict:
        """What the result depends on (recorded in scoring.json and the catalogue metadata)."""
        d = asdict(self)
        d.pop("workers")
        d.pop("source")
        d["rule"] = RULE
        return d


def _check_classes(classes: Sequence[str]) -> tuple[int, int, int | None]:
    classes = [str(c) for c in classes]
    if CW not in classes or ACW not in classes:
        raise EnsembleError(f"the winding ensemble needs a chirality model (classes CW and ACW), got {classes}")
    return classes.index(CW), classes.index(ACW), classes.index(OTHER) if OTHER in classes else None


def combine_winding(probs: np.ndarray, z: np.ndarray, classes: Sequence[str], weight: float = DEFAULT_WEIGHT,
                    min_confidence: float = DEFAULT_MIN_CONFIDENCE, max_p_other: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Combine class probabilities ``(n, K)`` (``classes`` order) with the signed winding ``z`` ``(n,)``
    by the rule of the module docstring. Returns ``(combined probabilities, applied mask)``; rows with a
    NaN ``z`` or probabilities are left unchanged."""
    i_cw, i_acw, i_other = _check_classes(classes)
    p = np.asarray(probs, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(classes) or z.shape != (len(p),):
        raise EnsembleError(f"probabilities {p.shape} and z {z.shape} do not match {len(classes)} classes")
    out = p.copy()
    pc, pa = p[:, i_cw], p[:, i_acw]
    spiral = pc + pa
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(z) & (np.abs(z) >= min_confidence) & np.isfinite(spiral) & (spiral > 0)
        if i_other is not None:
            ok &= p[:, i_other] < max_p_other
    if ok.any():
        tiny = 1e-12
        d = np.log(np.maximum(pc[ok], tiny)) - np.log(np.maximum(pa[ok], tiny)) + weight * z[ok]
        frac_cw = 1.0 / (1.0 + np.exp(-d))
        out[ok, i_cw] = spiral[ok] * frac_cw
        out[ok, i_acw] = spiral[ok] * (1.0 - frac_cw)
    return out, ok


def measured_sense(z: np.ndarray, min_confidence: float) -> np.ndarray:
    """``"CW"`` / ``"ACW"`` where ``|z| >= min_confidence``, else None (object array)."""
    z = np.asarray(z, dtype=np.float64)
    out = np.full(len(z), None, dtype=object)
    with np.errstate(invalid="ignore"):
        conf = np.isfinite(z) & (np.abs(z) >= min_confidence) & (z != 0)
    out[conf & (z > 0)] = CW
    out[conf & (z < 0)] = ACW
    return out


def winding_agreement(pred: Sequence, z: np.ndarray, min_confidence: float = 2.0) -> dict[str, Any]:
    """Disagreement of predicted classes ``pred`` with the measured winding sense (``z``) on the rows where
    the measurement is confident and the prediction is CW or ACW. Returns ``n_rows``, ``n_confident``,
    ``n_compared``, ``n_disagree``, ``disagreement`` (NaN when nothing is compared), ``agreement`` and
    ``min_confidence``."""
    pred = np.asarray(["" if p is None or (isinstance(p, float) and math.isnan(p)) else str(p) for p in pred],
                      dtype=object)
    meas = measured_sense(z, min_confidence)
    confident = np.array([m is not None for m in meas], dtype=bool)
    spiral = np.isin(pred, [CW, ACW])
    cmp = confident & spiral
    n = int(cmp.sum())
    dis = int((pred[cmp] != meas[cmp].astype(str)).sum()) if n else 0
    d = dis / n if n else float("nan")
    return {"n_rows": int(len(pred)), "n_confident": int(confident.sum()), "n_compared": n, "n_disagree": dis,
            "disagreement": d, "agreement": 1.0 - d if n else float("nan"), "min_confidence": float(min_confidence)}


def measure_winding_table(rows: pd.DataFrame, data_root: str | Path | None = None, options: dict | None = None,
                          workers: int = 1, image_column: str = "image_uri") -> pd.DataFrame:
    """``object_id, winding_score, winding_z`` of every row (``image_column`` images; NaN where the image
    cannot be read or nothing was measured), in row order. The winding sense is thresholded later."""
    from galmorph.catalogue.winding import measure_winding_manifest
    from galmorph.imaging.winding import WindingOptions

    opt = WindingOptions.from_dict(dict(options or {}))
    base = pd.DataFrame({"object_id": rows["object_id"].astype(str).to_numpy(),
                         image_column: rows[image_column].to_numpy()})
    base["_pos"] = np.arange(len(base))
    measured, quarantine = measure_winding_manifest(base, data_root=data_root, options=opt, workers=workers,
                                                    image_column=image_column, stage="winding-ensemble")
    if quarantine:
        log.warning("winding: %d image(s) not measured (first: %s)", len(quarantine), quarantine[0]["reason"])
    out = pd.DataFrame({"object_id": base["object_id"], "winding_score": np.nan, "winding_z": np.nan})
    if len(measured):
        pos = measured["_pos"].to_numpy(dtype=int)
        out.loc[pos, "winding_score"] = measured["winding_score"].to_numpy(dtype=float)
        out.loc[pos, "winding_z"] = measured["winding_z"].to_numpy(dtype=float)
    return out


def winding_report(pred: pd.DataFrame, manifest: pd.DataFrame, data_root: str | Path | None = None,
                   table: pd.DataFrame | None = None, min_confidence: float = 2.0,
                   options: dict | None = None) -> dict[str, Any]:
    """The evaluation report's ``winding`` block: :func:`winding_agreement` of the predictions ``pred``
    (``object_id``, ``pred``, ``error``) with the measurement on the manifest's images (or ``table``, a
    :func:`measure_winding_table` of the same objects, so that two models share one measurement). Adds
    ``winding_z`` to ``pred`` in place."""
    if table is None:
        table = measure_winding_table(manifest, data_root=data_root, options=options)
    zmap = pd.Series(table["winding_z"].to_numpy(dtype=float), index=table["object_id"].astype(str))
    zmap = zmap[~zmap.index.duplicated()]
    z = zmap.reindex(pred["object_id"].astype(str)).to_numpy(dtype=float)
    pred["winding_z"] = z
    ok = pred["error"].isna().to_numpy() if "error" in pred.columns else np.ones(len(pred), dtype=bool)
    out = winding_agreement(pred.loc[ok, "pred"].tolist(), z[ok], min_confidence)
    out["n_measured"] = int(np.isfinite(z).sum())
    return out


def winding_metrics(block: dict | None) -> dict[str, float]:
    """Flat MLflow metrics of a report's ``winding`` block (``winding_disagreement``, ...)."""
    if not block:
        return {}
    return {f"winding_{k}": float(block[k]) for k in ("disagreement", "agreement", "n_compared", "n_confident")
            if k in block}


def fit_winding_weight(probs: np.ndarray, z: np.ndarray, labels: Sequence, classes: Sequence[str],
                       grid: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0),
                       min_confidence: float = 2.0, max_p_other: float = 0.5) -> tuple[float, pd.DataFrame]:
    """Choose the ensemble weight on a tuning set: the ``grid`` value with the highest mean CW/ACW
    log-likelihood (``log p(label | spiral)``) of the combined output over the CW/ACW-labelled rows.
    Returns ``(weight, table of weight, log_likelihood, accuracy, n)``."""
    from sklearn.metrics import accuracy_score

    i_cw, i_acw, _ = _check_classes(classes)
    labels = np.asarray([str(x) for x in labels])
    rows = np.isin(labels, [CW, ACW])
    if not rows.any():
        raise EnsembleError("no CW/ACW-labelled rows to choose the winding weight on")
    is_cw = labels[rows] == CW
    recs = []
    for w in grid:
        comb, _ = combine_winding(np.asarray(probs)[rows], np.asarray(z)[rows], classes, w, min_confidence, max_p_other)
        s = comb[:, i_cw] + comb[:, i_acw]
        pcw = np.clip(comb[:, i_cw] / np.maximum(s, 1e-12), 1e-9, 1 - 1e-9)
        ll = np.where(is_cw, np.log(pcw), np.log(1 - pcw))
        recs.append({"weight": float(w), "log_likelihood": float(ll.mean()),
                     "accuracy": float(accuracy_score(is_cw, pcw >= 0.5)), "n": int(rows.sum())})
    table = pd.DataFrame(recs)
    best = float(table.loc[table["log_likelihood"].idxmax(), "weight"])
    return best, table


def apply_winding_ensemble(scores: pd.DataFrame, rows: pd.DataFrame, classes: Sequence[str],
                           ensemble: WindingEnsemble, threshold: float, data_root: str | Path | None = None,
                           ) -> pd.DataFrame:
    """The scoring table ``scores`` (``p_<class>``, ``pred``, ``p_pred``, ``high_confidence``; row i
    scored from ``rows.iloc[i]``'s image) with the winding ensemble applied: ``p_CW``/``p_ACW``,
    ``pred``, ``p_pred`` and ``high_confidence`` are the combined ones; added: ``p_CW_network``,
    ``p_ACW_network``, ``winding_score``, ``winding_z`` and ``winding_ensemble`` (applied to the row).
    The settings are recorded in ``DataFrame.attrs[ATTRS_KEY]`` (Parquet keeps them)."""
    _check_classes(classes)
    if len(scores) != len(rows):
        raise EnsembleError(f"{len(scores)} scored rows but {len(rows)} image rows")
    out = scores.copy()
    pcols = [f"p_{c}" for c in classes]
    if len(out):
        tab = measure_winding_table(rows, data_root=data_root, options=ensemble.options, workers=ensemble.workers)
        z = tab["winding_z"].to_numpy(dtype=float)
        comb, applied = combine_winding(out[pcols].to_numpy(dtype=float), z, classes, ensemble.weight,
                                        ensemble.min_confidence, ensemble.max_p_other)
    else:
        tab = pd.DataFrame({"winding_score": [], "winding_z": []})
        comb, applied = np.zeros((0, len(classes))), np.zeros(0, dtype=bool)
    out["p_CW_network"] = out["p_CW"].astype(np.float32)
    out["p_ACW_network"] = out["p_ACW"].astype(np.float32)
    for j, c in enumerate(pcols):
        out[c] = comb[:, j].astype(np.float32)
    arg = comb.argmax(axis=1) if len(comb) else np.zeros(0, dtype=int)
    p_pred = comb[np.arange(len(comb)), arg] if len(comb) else np.zeros(0)
    out["pred"] = np.asarray([str(c) for c in classes], dtype=object)[arg]
    out["p_pred"] = p_pred.astype(np.float32)
    out["high_confidence"] = p_pred >= threshold
    out["winding_score"] = tab["winding_score"].to_numpy(dtype=float)
    out["winding_z"] = z if len(out) else np.zeros(0)
    out["winding_ensemble"] = applied
    out.attrs[ATTRS_KEY] = ensemble.to_dict()
    return out


def ensemble_for(spec, enabled: bool | None = None, weight: float | None = None,
                 min_confidence: float | None = None) -> WindingEnsemble | None:
    """The winding ensemble to apply for a model of ``spec`` (None: off). ``enabled`` True/False: the caller's
    choice (``--winding-ensemble``/``--no-winding-ensemble``); None: what the model recorded
    (``spec.extra["ensemble"]``, :mod:`galmorph.training.defaults`; off for a model that recorded none or a
    model without CW/ACW). ``weight``/``min_confidence`` None: the model's recorded values, else the defaults.
    The returned settings carry ``options["source"]`` = ``model:<source>`` or ``flag``."""
    from galmorph.models.io import model_ensemble

    rec = model_ensemble(spec) if spec is not None else None
    if enabled is None:
        classes = [str(c) for c in getattr(spec, "classes", [])]
        enabled = bool(rec and rec.get("winding_ensemble")) and {CW, ACW} <= set(classes)
        source = f"model:{(rec or {}).get('source', 'default')}"
    else:
        source = "flag"
    if not enabled:
        return None
    w = weight if weight is not None else float((rec or {}).get("weight", DEFAULT_WEIGHT))
    m = min_confidence if min_confidence is not None else float((rec or {}).get("min_confidence",
                                                                                DEFAULT_MIN_CONFIDENCE))
    return WindingEnsemble(weight=float(w), min_confidence=float(m), source=source)


def applied_ensemble_label(ens: WindingEnsemble | None) -> str:
    """A one-line tag value: ``off`` or ``winding(weight=3,min_confidence=0,source=model:default)``."""
    if ens is None:
        return "off"
    return f"winding(weight={ens.weight:g},min_confidence={ens.min_confidence:g},source={ens.source})"


def ensemble_settings(catalogue: str | Path | pd.DataFrame) -> dict | None:
    """The winding ensemble settings recorded in a catalogue (path or DataFrame read from Parquet), or None."""
    if not isinstance(catalogue, pd.DataFrame):
        import pyarrow.parquet as pq

        meta = pq.read_schema(catalogue).metadata or {}
        raw = meta.get(b"PANDAS_ATTRS")
        if raw is None:
            return None
        import json

        return json.loads(raw).get(ATTRS_KEY)
    return catalogue.attrs.get(ATTRS_KEY)
