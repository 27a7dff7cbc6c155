"""Logging models to MLflow and loading them back for inference.

Contract shared by training, evaluation, promotion and scoring:

* a logged galmorph model is a ``torch.nn.Module`` that takes a float32 batch ``(B, C, S, S)`` of
  images scaled 0..1 (prepared with :func:`galmorph.imaging.preprocess.prepare_image`) and returns
  **logits** ``(B, n_classes)`` in the order of ``spec.classes``; any normalisation happens inside;
* it is stored in MLflow's ``pt2`` (torch.export) format with a dynamic batch dimension, an explicit
  tensor signature and an input example, and carries its :class:`ModelSpec` in the MLmodel metadata
  under ``galmorph``;
* :func:`load_for_inference` accepts any MLflow model URI (``models:/galmorph-chirality@champion``,
  ``runs:/<id>/model``, a local path) and returns the module, its spec and its registry version.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

REGISTERED_MODEL_PREFIX = "galmorph-"


def registered_name(task: str) -> str:
    return f"{REGISTERED_MODEL_PREFIX}{task}"


@dataclass
class ModelSpec:
    task: str
    classes: list[str]
    arch: str
    image_size: int
    in_chans: int = 3
    crop_fraction: float = 1.0
    chirality_equivariant: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # temperature scaling fitted on the training run's validation split (galmorph.evaluation.calibration):
    # LoadedModel divides the logits by it, so every predicted probability is the calibrated one
    temperature: float = 1.0
    # input normalisation applied inside the module (the encoder's pretrained configuration)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    encoder_init: str = ""          # random | package:<dist>==<version> (file, sha256) | file:/mlflow:<ref> (sha256)
    tta_views: int = 1              # chirality test-time views inside the module (1, 2 = mirror pair, 8)
    single_view_model: str = ""     # artifact (same run) of the 1-view network when tta_views > 1
    # class priors (class -> fraction): the one the network learned under (uniform with balanced class
    # weights, else the training split's frequencies), the training manifest's before any down-sampling
    # (the catalogue's), and the one predictions are moved to (empty: none; set at load/scoring time)
    trained_prior: dict[str, float] = field(default_factory=dict)
    catalogue_prior: dict[str, float] = field(default_factory=dict)
    class_prior: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        known = {k: d.pop(k) for k in list(d) if k in cls.__dataclass_fields__}
        spec = cls(**known)
        spec.extra.update(d)
        return spec


#: ``class_prior`` settings that mean "the probabilities as trained" (no prior applied).
AS_TRAINED = ("", "none", "trained", "as-trained", "as_trained")
#: The default ``class_prior`` setting everywhere (score, the rescoring pipeline, evaluate, promotion): the
#: prior of the population the model is meant to score, as the model recorded it (:func:`model_class_prior`).
MODEL_DEFAULT = "model"


def model_class_prior(spec: ModelSpec) -> dict[str, float]:
    """The class prior a model recorded for the population it is meant to score (``extra["class_prior"]``
    with ``extra["class_prior_source"] == "catalogue"``: the source catalogue's label frequencies before any
    down-sampling, balancing or mirroring; :mod:`galmorph.training.defaults`), or ``{}`` for a model
    registered before galmorph recorded it (it keeps its as-trained probabilities)."""
    extra = spec.extra or {}
    prior = extra.get("class_prior")
    if extra.get("class_prior_source") != "catalogue" or not isinstance(prior, dict) or not prior:
        return {}
    return {str(k): float(v) for k, v in prior.items()}


def model_ensemble(spec: ModelSpec) -> dict | None:
    """The winding-ensemble settings a model recorded (``extra["ensemble"]``: ``winding_ensemble`` on/off,
    ``weight``, ``min_confidence``, ``source``), or None when it recorded none (older models: no ensemble)."""
    rec = (spec.extra or {}).get("ensemble")
    return dict(rec) if isinstance(rec, dict) else None


def parse_class_prior(value: str | dict | None, spec: ModelSpec) -> dict[str, float]:
    """The target class prior of ``value`` for a model of ``spec``: ``None``/``"none"``/``"trained"``/
    ``"as-trained"`` -> ``{}`` (predictions as trained); ``"model"`` -> the prior the model recorded
    (:func:`model_class_prior`; ``{}`` with a logged note for a model that recorded none);
    ``"catalogue"`` -> the catalogue prior the model recorded; ``"CW=0.06,ACW=0.06,other=0.88"``
    or a dict -> those fractions, normalised. Raises ``ValueError`` naming the model's classes for an
    unknown class, a negative or all-zero prior, or a model that recorded no training prior."""
    if value is None or (isinstance(value, str) and value.strip().lower() in AS_TRAINED):
        return {}
    if isinstance(value, str) and value.strip().lower() == MODEL_DEFAULT:
        prior = model_class_prior(spec)
        if not prior or not spec.trained_prior:
            log.info("model (%s, %s) recorded no catalogue class prior (registered before galmorph recorded "
                     "it): its probabilities are used as trained", spec.task, spec.arch)
            return {}
        value = prior
    if isinstance(value, str) and value.strip().lower() == "catalogue":
        if model_class_prior(spec):
            return parse_class_prior(model_class_prior(spec), spec)
        if not spec.catalogue_prior:
            raise ValueError(f"model ({spec.task}, {spec.arch}) recorded no catalogue prior (trained before "
                             "galmorph recorded class priors); pass the fractions, e.g. CW=0.06,ACW=0.06,other=0.88")
        prior = dict(spec.catalogue_prior)
    elif isinstance(value, str):
        prior = {}
        for part in value.split(","):
            name, sep, frac = part.partition("=")
            try:
                prior[name.strip()] = float(frac)
            except ValueError:
                raise ValueError(f"class prior {value!r}: {part!r} is not CLASS=FRACTION") from None
            if not sep:
                raise ValueError(f"class prior {value!r}: {part!r} is not CLASS=FRACTION")
    else:
        prior = {str(k): float(v) for k, v in value.items()}
    unknown = sorted(set(prior) - set(spec.classes))
    if unknown:
        raise ValueError(f"class prior: unknown class(es) {unknown}; the model's classes are {spec.classes}")
    if any(not math.isfinite(v) or v < 0 for v in prior.values()) or not sum(prior.values()) > 0:
        raise ValueError(f"class prior {prior}: fractions must be finite, >= 0 and not all 0")
    if not spec.trained_prior:
        raise ValueError(f"model ({spec.task}, {spec.arch}) recorded no training prior, so its probabilities "
                         "cannot be moved to another prior (retrain it with this galmorph version)")
    tot = sum(prior.values())
    return {c: prior.get(c, 0.0) / tot for c in spec.classes}


def class_prior_setting(value: str | dict | None) -> str:
    """The spelling of a ``class_prior`` setting recorded beside what it resolved to."""
    if value is None:
        return "none"
    if isinstance(value, dict):
        return ",".join(f"{k}={float(v):g}" for k, v in value.items())
    v = value.strip()
    return "none" if v.lower() in AS_TRAINED else v


def with_class_prior(spec: ModelSpec, value: str | dict | None) -> ModelSpec:
    """``spec`` with ``class_prior`` resolved from ``value`` (:func:`parse_class_prior`) and what was applied
    recorded in ``extra["applied_class_prior"]`` (:func:`applied_class_prior`)."""
    import dataclasses

    prior = parse_class_prior(value, spec)
    setting = class_prior_setting(value)
    source = ("none" if not prior else "model:" + str(spec.extra.get("class_prior_source", "catalogue"))
              if setting.lower() == MODEL_DEFAULT else setting if setting.lower() == "catalogue" else "explicit")
    note = ("the model recorded no catalogue class prior: probabilities as trained"
            if setting.lower() == MODEL_DEFAULT and not prior else "")
    extra = {**spec.extra, "applied_class_prior": {"setting": setting, "source": source, "prior": dict(prior),
                                                   **({"note": note} if note else {})}}
    return dataclasses.replace(spec, class_prior=prior, extra=extra)


def applied_class_prior(spec: ModelSpec) -> dict:
    """What prior a loaded model's predictions are moved to: ``{"setting", "source", "prior"[, "note"]}``
    (``source`` ``none`` = as trained, ``model:catalogue`` = the model's recorded catalogue prior)."""
    rec = (spec.extra or {}).get("applied_class_prior")
    if isinstance(rec, dict):
        return {**rec, "prior": dict(spec.class_prior or {})}
    prior = dict(spec.class_prior or {})
    return {"setting": "explicit" if prior else "none", "source": "explicit" if prior else "none", "prior": prior}


def applied_class_prior_label(spec: ModelSpec) -> str:
    """A one-line tag value of :func:`applied_class_prior`: ``none`` or ``SOURCE:CW=0.062,...``."""
    rec = applied_class_prior(spec)
    if not rec["prior"]:
        return "none"
    return f"{rec['source']}:" + ",".join(f"{k}={v:.4g}" for k, v in rec["prior"].items())


def prior_logit_shift(spec: ModelSpec):
    """Per-class logit offsets ``log(class_prior / trained_prior)`` (Saerens et al. 2002: the posterior
    under another class prior), or ``None`` when ``spec.class_prior`` is empty. A class whose target
    prior is 0 gets -inf (never predicted)."""
    if not spec.class_prior:
        return None
    import torch

    with np.errstate(divide="ignore"):
        shift = [np.log(spec.class_prior.get(c, 0.0)) - np.log(max(spec.trained_prior.get(c, 0.0), 1e-12))
                 for c in spec.classes]
    return torch.tensor(shift, dtype=torch.float32)


def adjust_logits(logits, spec: ModelSpec, shift=None):
    """Calibrated logits: divided by ``spec.temperature``, then moved to ``spec.class_prior`` (``shift``:
    a precomputed :func:`prior_logit_shift`)."""
    t = float(getattr(spec, "temperature", 1.0) or 1.0)
    z = logits if t == 1.0 else logits / t
    shift = prior_logit_shift(spec) if shift is None else shift
    return z if shift is None else z.float() + shift.to(z.device)


@dataclass
class LoadedModel:
    module: Any  # torch.nn.Module (GraphModule for pt2)
    spec: ModelSpec
    uri: str
    version: str | None = None  # registry version when loaded through models:/
    run_id: str | None = None

    def predict_logits(self, batch) -> "Any":
        import torch

        with torch.inference_mode():
            return adjust_logits(self.module(batch), self.spec)

    def predict_proba(self, batch) -> np.ndarray:
        """Calibrated class probabilities: ``softmax(logits / spec.temperature)``, moved to
        ``spec.class_prior`` when one is set (:func:`adjust_logits`)."""
        import torch

        return torch.softmax(self.predict_logits(batch).float(), dim=1).cpu().numpy()


def log_model(module, spec: ModelSpec, registered_model_name: str | None = None, name: str = "model",
              example_batch: int = 2):
    """Log ``module`` to the active MLflow run as pt2 with a dynamic batch; optionally register it.

    Returns mlflow's ``ModelInfo`` (``.model_uri``, ``.registered_model_version``).
    """
    import mlflow
    import mlflow.pytorch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    module = module.eval()
    shape = (-1, spec.in_chans, spec.image_size, spec.image_size)
    sig = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), shape)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(spec.classes)))]),
    )
    rng = np.random.default_rng(0)
    example = rng.uniform(0, 1, (max(2, example_batch), *shape[1:])).astype(np.float32)
    info = mlflow.pytorch.log_model(
        module,
        name=name,
        signature=sig,
        input_example=example,
        serialization_format="pt2",
        registered_model_name=registered_model_name,
        metadata={"galmorph": spec.to_dict()},
    )
    return info


def _spec_from_info(info) -> ModelSpec:
    meta = (info.metadata or {}).get("galmorph")
    if meta is None:
        raise ValueError(f"model {info.model_uri} has no galmorph metadata; was it logged by galmorph?")
    if isinstance(meta, str):
        meta = json.loads(meta)
    return ModelSpec.from_dict(meta)


def model_spec(uri: str) -> ModelSpec:
    """The :class:`ModelSpec` of a logged model (its MLflow metadata; the weights are not downloaded or loaded)."""
    from mlflow.models import get_model_info

    return _spec_from_info(get_model_info(uri))


def load_for_inference(uri: str, device: str = "cpu", tta_views: int | None = None,
                       class_prior: str | dict | None = MODEL_DEFAULT) -> LoadedModel:
    """Load a galmorph model from any MLflow model URI (e.g. ``models:/galmorph-arms@champion``).

    ``tta_views`` (chirality): the number of test-time views to score with (1, 2 or 8); ``None`` keeps
    the logged model's ``spec.tta_views``. Another number rebuilds the views around the run's 1-view
    network (``spec.single_view_model``) and records the choice in the returned spec; with 1 view the
    spec takes that network's own temperature (other counts keep the logged model's,
    ``spec.extra["temperature_fitted_for_views"]`` says for how many views it was fitted).
    ``class_prior`` (:func:`parse_class_prior`): move the probabilities to the class prior of the
    population being scored; default ``"model"``: the prior the model recorded (the training catalogue's,
    before down-sampling/balancing; a model that recorded none keeps its probabilities as trained, with a
    logged note); ``"none"``/``"as-trained"``: as trained. What was applied is in
    ``spec.extra["applied_class_prior"]`` (:func:`applied_class_prior`).
    """
    import mlflow
    import mlflow.pytorch
    from mlflow.models import get_model_info

    info = get_model_info(uri)
    spec = _spec_from_info(info)
    module = mlflow.pytorch.load_model(uri, map_location=device) if device != "cpu" else mlflow.pytorch.load_model(uri)
    version = None
    run_id = info.run_id
    if uri.startswith("models:/"):
        client = mlflow.MlflowClient()
        rest = uri[len("models:/"):]
        name, _, ref = rest.partition("@") if "@" in rest else rest.partition("/")
        mv = client.get_model_version_by_alias(name, ref) if "@" in rest else client.get_model_version(name, ref)
        version, run_id = str(mv.version), mv.run_id
    if tta_views is not None and int(tta_views) != spec.tta_views:
        module, spec = _with_views(module, spec, int(tta_views), run_id, uri, device)
    spec = with_class_prior(spec, class_prior)
    return LoadedModel(module=module, spec=spec, uri=uri, version=version, run_id=run_id)


def _with_views(module, spec: ModelSpec, views: int, run_id: str | None, uri: str, device: str):
    """``(module, spec)`` scoring with ``views`` chirality test-time views instead of ``spec.tta_views``."""
    import dataclasses

    import mlflow.pytorch

    from galmorph.models.chirality import VIEW_COUNTS, ChiralityViews

    if views not in VIEW_COUNTS:
        raise ValueError(f"model {uri}: tta_views must be one of {VIEW_COUNTS}, got {views}")
    if spec.task != "chirality" and views > 1:
        raise ValueError(f"model {uri}: test-time views swap CW/ACW and apply to chirality only (task {spec.task})")
    temperature = spec.temperature
    if spec.tta_views == 1:
        base = module
    elif spec.single_view_model and run_id:
        from mlflow.models import get_model_info

        base_uri = f"runs:/{run_id}/{spec.single_view_model}"
        base = mlflow.pytorch.load_model(base_uri, map_location=device) if device != "cpu" else \
            mlflow.pytorch.load_model(base_uri)
        if views == 1:  # the 1-view network's own temperature (fitted on the same validation split)
            temperature = _spec_from_info(get_model_info(base_uri)).temperature
    else:
        raise ValueError(f"model {uri} has {spec.tta_views} test-time views built in and no 1-view network "
                         f"logged beside it; it cannot score with {views}")
    if views == 1:
        out = base
    else:  # an exported (pt2) GraphModule refuses train()/eval(): mark the wrapper alone as inference
        out = ChiralityViews(base, views)
        out.training = False
    extra = {**spec.extra, "logged_tta_views": spec.tta_views,
             "temperature_fitted_for_views": views if views in (1, spec.tta_views) else spec.tta_views}
    return out, dataclasses.replace(spec, tta_views=views, temperature=temperature, extra=extra)
