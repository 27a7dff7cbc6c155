"""Inference paths faster than eager fp32, each used only when its predictions agree with fp32.

A *path* turns a prepared float32 batch ``(B, C, S, S)`` (images 0..1) into float32 logits ``(B, K)``:

=================  =====================================================================================
``fp32``           the loaded module, eager (the reference)
``channels_last``  the module and its input in channels-last memory format
``bf16``           channels-last under ``torch.autocast`` in bfloat16 (CPUs with AVX512-BF16/AMX; on a
                   GPU, ``cuda`` autocast)
``onnx``           the module exported with :func:`torch.onnx.export`, run by ONNX Runtime (CPU)
``int8``           that ONNX graph statically quantized to int8 (QDQ, per-channel weights) with the
                   agreement images as calibration data, run by ONNX Runtime (CPU)
=================  =====================================================================================

:func:`choose_path` runs every candidate on the *agreement set* -- images the caller decodes once
(by default every DECaLS image of the data root and a seeded sample of labelled GZ1 images, see
:func:`agreement_frame`) -- and accepts a candidate only when its top class equals fp32's on at least
``min_agreement`` (99.5 %) of the images and, where labels exist, its accuracy differs from fp32's by
at most ``max_accuracy_change`` (0.5 point). ``auto`` takes the fastest accepted path (speed measured
on the same images); an explicit path that fails is refused and fp32 is used. The returned report
(:class:`PathChoice`) is what scoring records in ``scoring.json``, the catalogue summary and MLflow.

JPEG *draft* decoding (the decoder's reduced-scale DCT: 423 px -> 212 px before the antialiased
resize to 128 px) is checked the same way (``decode="auto"``): the fp32 reference always uses the full
decode, the candidates the draft decode, so a drifting decode is refused like a drifting precision.
"""

from __future__ import annotations

import copy
import itertools
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("fp32", "channels_last", "bf16", "onnx", "int8")
#: ``verified`` (the pipeline's and `galmorph score`'s default): the fastest of these paths that agrees with fp32,
#: checked once per model version and recorded on it (:func:`verified_path`); int8 is left out (its calibration
#: is per run, so it would be checked again by every worker)
VERIFIED_CANDIDATES: tuple[str, ...] = ("channels_last", "bf16", "onnx")
REQUESTS: tuple[str, ...] = ("auto", "verified", *PRECISIONS)
#: Model version tag holding the verified choice (``.cpu`` / ``.cuda``: a GPU has its own paths)
VERIFIED_TAG = "galmorph.inference_path"
DECODES: tuple[str, ...] = ("full", "draft", "auto")
MIN_AGREEMENT = 0.995
MAX_ACCURACY_CHANGE = 0.005
#: GZ1 classes -> chirality classes (the ingest mapping)
GZ1_CHIRALITY = {"clockwise": "CW", "anticlockwise": "ACW"}


class PathUnavailable(RuntimeError):
    """A path cannot be built here (library missing, export failed, no bf16 on this CPU...)."""


@dataclass
class InferencePath:
    """A callable ``run(x) -> logits`` (float32, on the CPU) and how it was built."""

    name: str
    run: Callable[[Any], Any]
    device: str = "cpu"
    setup_s: float = 0.0
    detail: str = ""
    model_file: str = ""  # the ONNX file an onnxruntime path runs (kept with the version's record)


# --------------------------------------------------------------------------------------------
# building paths
# --------------------------------------------------------------------------------------------
def cpu_has_bf16() -> bool:
    """Whether this CPU executes bf16 natively (``avx512_bf16`` or AMX in /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _eager(module, name: str, device: str) -> InferencePath:
    import torch

    dev = torch.device(device)

    def run(x):
        return module(x.to(dev, non_blocking=True)).float()

    return InferencePath(name, run, device)


def _channels_last(module, device: str, autocast: str | None = None) -> InferencePath:
    import torch

    t0 = time.perf_counter()
    dev = torch.device(device)
    m = copy.deepcopy(module).to(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if autocast == "bf16" else None
    if dtype is not None and dev.type == "cpu" and not cpu_has_bf16():
        raise PathUnavailable("this CPU has no native bf16 (avx512_bf16/amx)")

    def run(x):
        x = x.to(dev, non_blocking=True).contiguous(memory_format=torch.channels_last)
        if dtype is None:
            return m(x).float()
        with torch.autocast(device_type=dev.type, dtype=dtype):
            return m(x).float()

    return InferencePath("bf16" if dtype is not None else "channels_last", run, device,
                         time.perf_counter() - t0, "torch.autocast bfloat16, channels-last" if dtype else "")


def export_onnx(module, example, path: str | Path) -> Path:
    """Export ``module`` (eager or a torch.export GraphModule) to ONNX with a dynamic batch dimension."""
    import torch

    path = Path(path)
    errors = []
    for dynamo in (True, False):
        try:
            kw: dict[str, Any] = {"input_names": ["images"], "output_names": ["logits"]}
            if dynamo:  # one self-contained file (the weights inside, not beside it): kept with the version
                kw["dynamic_shapes"] = ({0: torch.export.Dim("batch", min=1, max=4096)},)
                kw["external_data"] = False
            else:
                kw["dynamic_axes"] = {"images": {0: "batch"}, "logits": {0: "batch"}}
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(module, (example,), str(path), dynamo=dynamo, opset_version=18, verbose=False, **kw)
            return path
        except Exception as exc:  # noqa: BLE001 - try the other exporter, then report both
            errors.append(f"{'dynamo' if dynamo else 'torchscript'} exporter: {type(exc).__name__}: {exc}")
    raise PathUnavailable("ONNX export failed: " + " | ".join(e[:300] for e in errors))


def _ort_session(model_path: Path, threads: int):
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is a dependency
        raise PathUnavailable(f"onnxruntime not installed: {exc}") from exc
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])


def _ort_path(name: str, sess, t0: float, detail: str, model_file: str | Path = "") -> InferencePath:
    import torch

    inp = sess.get_inputs()[0].name

    def run(x):
        a = x.detach().cpu().numpy() if hasattr(x, "numpy") else np.asarray(x)
        out = sess.run(None, {inp: np.ascontiguousarray(a, dtype=np.float32)})[0]
        return torch.from_numpy(np.asarray(out, dtype=np.float32))

    return InferencePath(name, run, "cpu", time.perf_counter() - t0, detail, model_file=str(model_file))


class _Calibration:
    """ONNX Runtime calibration reader over float32 batches."""

    def __init__(self, batches: Sequence[np.ndarray], name: str):
        self._it = iter([{name: np.ascontiguousarray(b, dtype=np.float32)} for b in batches])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - older ORT API
        pass


def build_path(name: str, module, image_shape: Sequence[int], device: str = "cpu",
               calibration: Sequence[np.ndarray] | None = None, workdir: str | Path | None = None,
               threads: int | None = None) -> InferencePath:
    """Build path ``name`` (one of :data:`PRECISIONS`) around ``module``; raises :class:`PathUnavailable`.

    ``image_shape`` is ``(C, S, S)``; ``calibration`` (int8 only) a few float32 batches of real images.
    """
    import torch

    if name not in PRECISIONS:
        raise ValueError(f"unknown inference path {name!r}; one of {PRECISIONS}")
    if name == "fp32":
        return _eager(module, "fp32", device)
    if name == "channels_last":
        return _channels_last(module, device)
    if name == "bf16":
        return _channels_last(module, device, autocast="bf16")
    if not device.startswith("cpu"):
        raise PathUnavailable(f"{name} runs on ONNX Runtime's CPU provider only (device {device})")
    t0 = time.perf_counter()
    wd = Path(workdir or tempfile.mkdtemp(prefix="galmorph-onnx-"))
    wd.mkdir(parents=True, exist_ok=True)
    threads = threads or torch.get_num_threads()
    fp32_onnx = wd / "model.onnx"
    if not fp32_onnx.exists():
        example = torch.rand(2, *image_shape)
        export_onnx(copy.deepcopy(module).cpu(), example, fp32_onnx)
    if name == "onnx":
        return _ort_path("onnx", _ort_session(fp32_onnx, threads), t0, f"onnxruntime, {fp32_onnx.name}", fp32_onnx)
    if not calibration:
        raise PathUnavailable("int8 needs calibration images")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    q_onnx = wd / "model-int8.onnx"
    try:
        import onnx

        in_name = onnx.load(str(fp32_onnx), load_external_data=False).graph.input[0].name
        quantize_static(str(fp32_onnx), str(q_onnx), _Calibration(calibration, in_name),
                        quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    except Exception as exc:  # noqa: BLE001
        raise PathUnavailable(f"int8 quantization failed: {type(exc).__name__}: {exc}") from exc
    return _ort_path("int8", _ort_session(q_onnx, threads), t0, "onnxruntime static int8 (QDQ, per-channel)")


# --------------------------------------------------------------------------------------------
# agreement
# --------------------------------------------------------------------------------------------
@dataclass
class Agreement:
    """One candidate against fp32 on the agreement images."""

    path: str
    decode: str
    n_images: int
    top1_agreement: float
    n_labelled: int = 0
    accuracy_fp32: float | None = None
    accuracy: float | None = None
    accuracy_change: float | None = None
    max_abs_prob_diff: float = 0.0
    img_s: float = 0.0
    setup_s: float = 0.0
    passed: bool = False
    reason: str = ""


@dataclass
class PathChoice:
    """What :func:`choose_path` decided (recorded by scoring)."""

    requested: str
    chosen: str
    decode: str
    agreement_set: str = ""
    decode_requested: str = "full"
    min_agreement: float = MIN_AGREEMENT
    max_accuracy_change: float = MAX_ACCURACY_CHANGE
    candidates: list[Agreement] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    #: ``runs:/`` URI of the built model file the path runs (ONNX), kept with the version's record so that
    #: later workers download it instead of exporting the network again; empty: rebuilt from the network
    artifact: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PathChoice":
        d = dict(d)
        d["candidates"] = [Agreement(**a) for a in d.get("candidates", [])]
        return cls(**d)

    def mlflow_params(self) -> dict[str, str]:
        return {"precision_requested": self.requested, "precision": self.chosen, "decode": self.decode,
                "agreement_set": self.agreement_set[:480],
                "precision_refused": ",".join(self.refused)[:480]}

    def mlflow_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for a in self.candidates:
            k = f"{a.path}_{a.decode}"
            out[f"agreement_top1.{k}"] = a.top1_agreement
            out[f"agreement_passed.{k}"] = float(a.passed)
            if a.accuracy_change is not None:
                out[f"agreement_accuracy_change.{k}"] = a.accuracy_change
            if a.img_s:
                out[f"agreement_img_s.{k}"] = a.img_s
        return out


def compare(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray | None = None,
            min_agreement: float = MIN_AGREEMENT, max_accuracy_change: float = MAX_ACCURACY_CHANGE
            ) -> dict[str, Any]:
    """Top-class agreement of ``candidate`` with ``reference`` (probabilities or logits ``(N, K)``) and,
    on rows with a label index >= 0, the accuracy change. ``passed`` applies both thresholds."""
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")
    n = len(reference)
    if n == 0:
        raise ValueError("no agreement images")
    top_r, top_c = reference.argmax(axis=1), candidate.argmax(axis=1)
    agree = float((top_r == top_c).mean())
    out: dict[str, Any] = {"n_images": n, "top1_agreement": agree, "n_labelled": 0, "accuracy_fp32": None,
                           "accuracy": None, "accuracy_change": None}
    reasons = []
    if agree < min_agreement:
        reasons.append(f"top class agrees with fp32 on {agree:.2%} of {n} images (< {min_agreement:.1%})")
    if labels is not None:
        lab = np.asarray(labels)
        m = lab >= 0
        if m.any():
            acc_r = float((top_r[m] == lab[m]).mean())
            acc_c = float((top_c[m] == lab[m]).mean())
            out.update(n_labelled=int(m.sum()), accuracy_fp32=acc_r, accuracy=acc_c, accuracy_change=acc_c - acc_r)
            if abs(acc_c - acc_r) > max_accuracy_change + 1e-12:
                reasons.append(f"accuracy {acc_c:.4f} vs fp32 {acc_r:.4f} on {int(m.sum())} labelled images "
                               f"(change > {max_accuracy_change:.3f})")
    out["passed"] = not reasons
    out["reason"] = "; ".join(reasons)
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _candidate_paths(requested: str, candidates: Sequence[str] | None, device: str) -> list[str]:
    """The accelerated paths to try: ``candidates``, else every one for ``auto``, the requested one otherwise
    (on a GPU only ``channels_last`` and ``bf16``)."""
    if candidates is not None:
        return list(candidates)
    if requested == "auto":
        out = [p for p in PRECISIONS if p != "fp32"]
    elif requested == "verified":
        out = list(VERIFIED_CANDIDATES)
    else:
        out = [] if requested == "fp32" else [requested]
    if device.startswith("cuda"):
        out = [c for c in out if c in ("channels_last", "bf16")]
    return out


def _run_all(path: InferencePath, batches: Callable[[str], Iterable[tuple[Any, np.ndarray]]], dec: str
             ) -> tuple[np.ndarray, np.ndarray, float, list[np.ndarray]]:
    """``path`` over the agreement images decoded with ``dec``: ``(logits, labels, images/s, inputs)``."""
    import torch

    outs, labs, xs, secs = [], [], [], 0.0
    with torch.inference_mode():
        for x, y in batches(dec):
            t0 = time.perf_counter()
            z = path.run(x)
            secs += time.perf_counter() - t0
            outs.append(np.asarray(z.float().cpu().numpy(), dtype=np.float64))
            labs.append(np.asarray(y))
            xs.append(x.numpy() if hasattr(x, "numpy") else np.asarray(x))
    z = np.concatenate(outs) if outs else np.zeros((0, 0))
    return z, np.concatenate(labs) if labs else np.zeros(0, int), (len(z) / secs if secs > 0 else 0.0), xs


def _first_batch(batches: Callable[[str], Iterable[tuple[Any, np.ndarray]]]
                 ) -> Callable[[str], Iterable[tuple[Any, np.ndarray]]]:
    """``batches`` cut to its first batch: enough to pay a path's first-call costs before it is timed."""
    return lambda dec: itertools.islice(batches(dec), 1)


@dataclass
class _Reference:
    """fp32 on full-decoded agreement images: what every other path is compared with."""

    logits: np.ndarray
    labels: np.ndarray
    min_agreement: float
    max_accuracy_change: float

    def agreement(self, name: str, decode: str, z: np.ndarray, img_s: float, setup_s: float = 0.0) -> Agreement:
        """:class:`Agreement` of the logits ``z`` of path ``name`` (decode ``decode``) with the reference."""
        ref, cand = _softmax(self.logits), _softmax(z)
        cmp = compare(ref, cand, self.labels, self.min_agreement, self.max_accuracy_change)
        return Agreement(name, decode, **{k: cmp[k] for k in ("n_images", "top1_agreement", "n_labelled",
                                                               "accuracy_fp32", "accuracy", "accuracy_change")},
                         max_abs_prob_diff=float(np.abs(ref - cand).max()), img_s=img_s, setup_s=setup_s,
                         passed=cmp["passed"], reason=cmp["reason"])


def _try_path(name: str, build: Callable[..., InferencePath], module, image_shape: Sequence[int], device: str,
              calib: list[np.ndarray], wd: Path, decode: str, batches, reference: _Reference
              ) -> tuple[Agreement, InferencePath | None]:
    """Build ``name`` and check it against the reference; a path that cannot be built or run is refused,
    never fatal."""
    try:
        path = build(name, module, image_shape, device=device, calibration=calib[:8], workdir=wd)
    except PathUnavailable as exc:
        log.info("inference path %s unavailable: %s", name, exc)
        return Agreement(name, decode, 0, 0.0, reason=f"unavailable: {exc}"), None
    try:
        _run_all(path, _first_batch(batches), decode)  # warm-up (oneDNN/ORT first-call costs)
        z, _, sp, _ = _run_all(path, batches, decode)
    except Exception as exc:  # noqa: BLE001 - a path that cannot run is refused, never fatal
        return Agreement(name, decode, 0, 0.0, setup_s=path.setup_s,
                         reason=f"failed: {type(exc).__name__}: {exc}"), None
    a = reference.agreement(name, decode, z, sp, setup_s=path.setup_s)
    if not a.passed:
        log.warning("inference path %s refused: %s", name, a.reason)
    return a, path


def _best(results: list[tuple[Agreement, InferencePath | None]], requested: str, decode: str
          ) -> tuple[Agreement, InferencePath]:
    """The fastest passing entry on ``decode`` (``auto``), else the requested path when it passed, else fp32."""
    # every entry that passed, on the chosen decode (fp32 on it passed by construction or by the draft check)
    ok = [(a, p) for a, p in results if a.passed and p is not None and a.decode == decode]
    if requested in ("auto", "verified"):
        return max(ok, key=lambda t: t[0].img_s)
    want = [t for t in ok if t[0].path == requested]
    return want[0] if want else next(t for t in ok if t[0].path == "fp32")


def choose_path(module, image_shape: Sequence[int], batches: Callable[[str], Iterable[tuple[Any, np.ndarray]]],
                requested: str = "auto", decode: str = "full", device: str = "cpu",
                candidates: Sequence[str] | None = None, agreement_set: str = "",
                min_agreement: float = MIN_AGREEMENT, max_accuracy_change: float = MAX_ACCURACY_CHANGE,
                workdir: str | Path | None = None,
                build: Callable[..., InferencePath] = build_path) -> tuple[InferencePath, PathChoice]:
    """Pick the inference path for ``module``.

    ``batches(decode)`` yields ``(x, label_index)`` batches of the agreement images decoded with
    ``decode`` (``full`` or ``draft``); labels are class indices, -1 where unknown. ``requested`` is
    ``auto`` (fastest accepted candidate), ``fp32`` (no check) or one path (checked; fp32 when refused).
    ``decode`` ``auto`` also checks the JPEG draft decode (candidates then use it when it passes).
    Returns the path to score with and the report.
    """
    if requested not in REQUESTS:
        raise ValueError(f"precision must be one of {REQUESTS}, got {requested!r}")
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {DECODES}, got {decode!r}")
    fp32 = build("fp32", module, image_shape, device=device)
    if requested == "fp32" and decode == "full":
        return fp32, PathChoice(requested, "fp32", "full", agreement_set, "full", min_agreement, max_accuracy_change)
    candidates = _candidate_paths(requested, candidates, device)
    # reference: fp32, full decode (one batch warms the caches, then the whole set is timed)
    _run_all(fp32, _first_batch(batches), "full")
    ref, labels, ref_speed, calib = _run_all(fp32, batches, "full")
    reference = _Reference(ref, labels, min_agreement, max_accuracy_change)
    choice = PathChoice(requested, "fp32", "full", agreement_set, decode, min_agreement, max_accuracy_change)
    results: list[tuple[Agreement, InferencePath | None]] = [(Agreement(
        "fp32", "full", len(ref), 1.0, int((labels >= 0).sum()), img_s=ref_speed, passed=True), fp32)]
    chosen_decode = "full"
    if decode == "auto" or decode == "draft":
        z, _, sp, _ = _run_all(fp32, batches, "draft")
        a = reference.agreement("fp32", "draft", z, sp)
        results.append((a, fp32))
        if a.passed:
            chosen_decode = "draft"
        else:
            choice.refused.append("fp32_draft")
            log.warning("JPEG draft decoding refused: %s", a.reason)
    wd = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="galmorph-accel-"))
    for name in candidates:
        results.append(_try_path(name, build, module, image_shape, device, calib, wd, chosen_decode, batches,
                                 reference))
        if not results[-1][0].passed:
            choice.refused.append(name)
    choice.candidates = [a for a, _ in results]
    best_a, best_p = _best(results, requested, chosen_decode)
    choice.chosen, choice.decode = best_a.path, chosen_decode
    log.info("inference path: %s (decode %s) of %s", choice.chosen, choice.decode,
             [(a.path, a.decode, round(a.top1_agreement, 4), round(a.img_s, 1), a.passed) for a, _ in results])
    assert best_p is not None
    return best_p, choice


# --------------------------------------------------------------------------------------------
# the agreement images
# --------------------------------------------------------------------------------------------
def agreement_frame(data_root: str | Path | None, task: str, classes: Sequence[str], n_gz1: int = 400,
                    seed: int = 0, fallback: pd.DataFrame | None = None, n_fallback: int = 512
                    ) -> tuple[pd.DataFrame, str]:
    """The images the agreement check runs on: ``object_id, image_uri, label`` and a description.

    Every DECaLS image (``decals/images``) and a seeded sample of ``n_gz1`` GZ1 images
    (``gz1_chirality``; labelled CW/ACW/other for the chirality task, unlabelled otherwise) of the data
    root. Without them, up to ``n_fallback`` rows of ``fallback`` (the release being scored; its
    ``label`` column is used when its values are classes of the model).
    """
    parts, names = [], []
    root = Path(data_root) if data_root is not None else None
    if root is not None and (root / "decals" / "images").is_dir():
        files = sorted(p for p in (root / "decals" / "images").iterdir()
                       if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if files:
            parts.append(pd.DataFrame({"object_id": [f"decals:{p.stem}" for p in files],
                                       "image_uri": [str(p) for p in files], "label": None}))
            names.append(f"decals ({len(files)} images)")
    lab_csv = root / "gz1_chirality" / "labels.csv" if root is not None else None
    if lab_csv is not None and lab_csv.exists() and n_gz1 > 0:
        df = pd.read_csv(lab_csv, dtype={"dr7objid": str})
        df["image_uri"] = [str(root / "gz1_chirality" / "images" / f"{o}.jpeg") for o in df["dr7objid"]]
        df = df[[Path(u).exists() for u in df["image_uri"]]]
        df = df.sample(n=min(n_gz1, len(df)), random_state=seed).sort_values("dr7objid")
        if task == "chirality":
            lab = df["gz1_class"].map(lambda c: GZ1_CHIRALITY.get(str(c), "other"))
        else:
            lab = pd.Series([None] * len(df), index=df.index)
        parts.append(pd.DataFrame({"object_id": [f"gz1:{o}" for o in df["dr7objid"]],
                                   "image_uri": df["image_uri"].to_numpy(), "label": lab.to_numpy()}))
        names.append(f"gz1 ({len(df)} images, seed {seed}{', labelled' if task == 'chirality' else ''})")
    if not parts:
        if fallback is None or len(fallback) == 0:
            raise ValueError("no agreement images: the data root has no decals/ or gz1_chirality/ images and no "
                             "release rows were given")
        fb = fallback.head(n_fallback)
        lab = fb["label"] if "label" in fb.columns else pd.Series([None] * len(fb))
        lab = lab.where(lab.isin(list(classes)), None) if len(lab) else lab
        parts.append(pd.DataFrame({"object_id": fb["object_id"].astype(str).to_numpy(),
                                   "image_uri": fb["image_uri"].astype(str).to_numpy(), "label": lab.to_numpy()}))
        names.append(f"release sample ({len(fb)} rows)")
    return pd.concat(parts, ignore_index=True), " + ".join(names)


def agreement_batches(frame: pd.DataFrame, image_size: int, in_chans: int, crop_fraction: float,
                      classes: Sequence[str], data_root: str | Path | None = None, batch_size: int = 64
                      ) -> Callable[[str], Iterable[tuple[Any, np.ndarray]]]:
    """``batches(decode)`` for :func:`choose_path`: the frame's images prepared with that decode, decoded
    once per decode mode and kept (as uint8-free float tensors of model size) for all candidates."""
    import torch

    from galmorph.datasets.images import ManifestImageDataset

    cache: dict[str, list[tuple[Any, np.ndarray]]] = {}
    cidx = {c: i for i, c in enumerate(classes)}
    labels = np.array([cidx.get(v, -1) if isinstance(v, str) else -1 for v in frame.get("label", [None] * len(frame))])

    def batches(decode: str):
        if decode not in cache:
            ds = ManifestImageDataset(frame, image_size, in_chans, crop_fraction, data_root=data_root,
                                      on_error="skip", decode=decode)
            xs, ys = [], []
            for i in range(len(ds)):
                x, _, pos, err = ds[i]
                if err is None:
                    xs.append(x)
                    ys.append(labels[pos])
            out = []
            for s in range(0, len(xs), batch_size):
                out.append((torch.stack(xs[s:s + batch_size]), np.asarray(ys[s:s + batch_size])))
            if not out:
                raise ValueError("none of the agreement images could be read")
            cache[decode] = out
        return cache[decode]

    return batches


def prepare_for_scoring(loaded, precision: str = "fp32", decode: str = "full", device: str = "cpu",
                        data_root: str | Path | None = None, release_sample: pd.DataFrame | None = None,
                        previous: dict | None = None, agreement: pd.DataFrame | None = None,
                        workdir: str | Path | None = None) -> tuple[InferencePath, PathChoice]:
    """The path a scoring run uses for ``loaded`` (a :class:`~galmorph.models.io.LoadedModel`).

    ``previous``: the ``inference`` record of an interrupted run of the same model in the same output
    folder; when it asked for the same precision and decode its choice is reused (every shard of a
    release is scored the same way) -- int8 is re-checked, as its calibration is not stored.
    ``agreement``: the agreement images (``object_id, image_uri[, label]``); default
    :func:`agreement_frame` of ``data_root`` (the release sample when the data root has none).
    """
    spec = loaded.spec
    shape = (spec.in_chans, spec.image_size, spec.image_size)
    if precision not in REQUESTS:
        raise ValueError(f"precision must be one of {REQUESTS}, got {precision!r}")
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {DECODES}, got {decode!r}")
    if previous and previous.get("requested") == precision and previous.get("decode_requested", "full") == decode \
            and previous.get("chosen") != "int8":
        prev = PathChoice.from_dict(previous)
        try:
            if prev.artifact and prev.chosen == "onnx":
                workdir = _fetch_model_file(prev.artifact, workdir)
            path = build_path(prev.chosen, loaded.module, shape, device=device, workdir=workdir)
            return path, prev
        except PathUnavailable as exc:
            log.warning("recorded inference path %s cannot be rebuilt (%s); checking again", prev.chosen, exc)
    if precision == "fp32" and decode == "full":
        return build_path("fp32", loaded.module, shape, device=device), PathChoice("fp32", "fp32", "full")
    if agreement is None:
        agreement, name = agreement_frame(data_root, spec.task, spec.classes, fallback=release_sample)
    else:
        name = f"given ({len(agreement)} images)"
    batches = agreement_batches(agreement, spec.image_size, spec.in_chans, spec.crop_fraction, spec.classes,
                                data_root=data_root)
    return choose_path(loaded.module, shape, batches, requested=precision, decode=decode, device=device,
                       agreement_set=name, workdir=workdir)


# --------------------------------------------------------------------------------------------
# the verified path of a model version
# --------------------------------------------------------------------------------------------
def _version_of(loaded) -> tuple[str, str] | None:
    """``(registered name, version)`` of a model loaded from ``models:/NAME/VERSION`` or ``models:/NAME@alias`` (the
    version the alias pointed at when it was loaded); None otherwise."""
    uri = str(getattr(loaded, "uri", "") or "")
    if not uri.startswith("models:/"):
        return None
    rest = uri[len("models:/"):]
    name, _, ref = rest.partition("@") if "@" in rest else rest.partition("/")
    version = str(getattr(loaded, "version", "") or ("" if "@" in rest else ref))
    if not name or "/" in name or not ref or not version.isdigit():
        return None
    return name, version


def _device_kind(device: str) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


def recorded_choice(loaded, device: str = "cpu", client=None) -> dict | None:
    """The verified path recorded on the model version (tag :data:`VERIFIED_TAG` ``.cpu``/``.cuda``), or None
    (no registered version, no record, no registry)."""
    import json

    nv = _version_of(loaded)
    if nv is None:
        return None
    try:
        import mlflow

        mv = (client or mlflow.MlflowClient()).get_model_version(*nv)
        text = (mv.tags or {}).get(f"{VERIFIED_TAG}.{_device_kind(device)}")
        return json.loads(text) if text else None
    except Exception as exc:  # noqa: BLE001 - a registry that cannot answer: verify again
        log.warning("no recorded inference path for %s/%s (%s)", *nv, exc)
        return None


def _fetch_model_file(artifact: str, workdir: str | Path | None) -> Path:
    """Download the recorded ONNX file ``artifact`` as ``model.onnx`` of ``workdir`` (a new temporary folder when
    None) and return the folder; :class:`PathUnavailable` when it cannot be had (the path is then checked
    again)."""
    import shutil

    from mlflow.artifacts import download_artifacts

    wd = Path(workdir or tempfile.mkdtemp(prefix="galmorph-onnx-"))
    wd.mkdir(parents=True, exist_ok=True)
    target = wd / "model.onnx"
    if not target.exists():
        try:
            got = Path(download_artifacts(artifact_uri=artifact, dst_path=str(wd / "download")))
        except Exception as exc:  # noqa: BLE001 - any store error: rebuild the path instead
            raise PathUnavailable(f"recorded model file {artifact} could not be downloaded: {exc}") from exc
        shutil.move(str(got), target)
    log.info("inference path: the version's recorded ONNX file %s (no export)", artifact)
    return wd


def _log_model_file(nv: tuple[str, str], model_file: str, device: str, client) -> str:
    """Log ``model_file`` on the run of model version ``nv`` (``inference_path/<cpu|cuda>/``); its ``runs:/`` URI,
    or "" when it cannot be logged (later workers then export it again)."""
    try:
        run_id = client.get_model_version(*nv).run_id
        if not run_id or not model_file or not Path(model_file).exists():
            return ""
        sub = f"inference_path/{_device_kind(device)}"
        client.log_artifact(run_id, model_file, artifact_path=sub)
        return f"runs:/{run_id}/{sub}/{Path(model_file).name}"
    except Exception as exc:  # noqa: BLE001 - the choice is still recorded
        log.warning("could not keep the inference path's model file on %s/%s (%s)", *nv, exc)
        return ""


def record_choice(loaded, choice: PathChoice, device: str = "cpu", client=None, model_file: str = "") -> bool:
    """Record ``choice`` on the model version (best effort: False when the model is not a registered version or
    the registry refuses); the agreement figures of every candidate are kept (top-1 agreement, img/s, passed).
    ``model_file``: the built file the chosen path runs (ONNX), logged on the version's run and named in the
    record (``artifact``) so that later workers download it instead of exporting the network again."""
    import json

    nv = _version_of(loaded)
    if nv is None:
        return False
    if model_file and choice.chosen == "onnx" and not choice.artifact:
        import mlflow

        choice.artifact = _log_model_file(nv, model_file, device, client or mlflow.MlflowClient())
    d = choice.to_dict()
    d["candidates"] = [{k: a[k] for k in ("path", "decode", "n_images", "top1_agreement", "accuracy_change",
                                          "img_s", "passed", "reason")} for a in d["candidates"]]
    text = json.dumps(d, default=str)
    if len(text) > 4900:  # MLflow tag values are bounded
        d["candidates"] = [{k: a[k] for k in ("path", "decode", "n_images", "top1_agreement", "passed")}
                           for a in d["candidates"]]
        text = json.dumps(d, default=str)[:4900]
    try:
        import mlflow

        (client or mlflow.MlflowClient()).set_model_version_tag(*nv, f"{VERIFIED_TAG}.{_device_kind(device)}", text)
        return True
    except Exception as exc:  # noqa: BLE001 - scoring goes on with the path it checked
        log.warning("could not record the inference path on %s/%s (%s)", *nv, exc)
        return False


def verified_path(loaded, device: str = "cpu", data_root: str | Path | None = None,
                  release_sample: pd.DataFrame | None = None, workdir: str | Path | None = None,
                  agreement: pd.DataFrame | None = None) -> tuple[InferencePath, PathChoice, bool]:
    """The ``verified`` path of a model version: the choice recorded on the version when there is one (rebuilt,
    not checked again), else :func:`prepare_for_scoring` (``verified`` precision, ``auto`` decode: the draft
    JPEG decode too) against fp32 on the agreement images, recorded on the version for every later worker and
    run. Returns ``(path, choice, checked_now)``. Call it when a version is registered or promoted to pay the
    check there."""
    previous = recorded_choice(loaded, device)
    path, choice = prepare_for_scoring(loaded, "verified", "auto", device, data_root=data_root,
                                       release_sample=release_sample, previous=previous, agreement=agreement,
                                       workdir=workdir)
    checked = previous is None or choice.to_dict() != PathChoice.from_dict(previous).to_dict()
    if checked:
        record_choice(loaded, choice, device, model_file=path.model_file)
    return path, choice, checked
