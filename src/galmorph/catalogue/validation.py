"""Data validation of manifests: great-expectations 1.x suites + per-row image checks.

Table-level expectations (schema and types) decide whether the manifest is usable at all; row-level
expectations (unique ids, RA/Dec ranges, physical and selected redshift, label domain per task)
and the image checks done in Python (file exists, decodes, expected size, not blank, no NaN, FITS
has a usable celestial WCS) send failing rows to the quarantine table with their reasons.
The run fails only when the quarantined fraction exceeds ``max_failure_fraction`` (or the schema
is broken). The GX validation result is saved as JSON (and logged to MLflow when a run is active).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from galmorph.jsonsafe import finite_json, json_default
from galmorph.catalogue.manifest import (
    FLOAT_COLUMNS,
    REQUIRED_COLUMNS,
    Z_MAX_PHYSICAL,
    ManifestError,
    ManifestWriter,
    QuarantineWriter,
    Repeats,
    carried_metadata,
    is_csv,
    iter_manifest,
    manifest_metadata,
    numeric_problems,
    quarantine_frame,
    quarantine_record,
    read_manifest_table,
    repeated_ids,
    resolve_image_uri,
    write_manifest,
    write_quarantine,
)

log = logging.getLogger(__name__)

STAGE = "validate"


@dataclass
class ValidationConfig:
    """What a manifest must satisfy. ``None`` disables a check."""

    z_min: float | None = None  # selection (rows with unknown z pass unless require_z: GZ1/DECaLS have no z)
    z_max: float | None = None
    require_z: bool = False
    # rows with NaN ra/dec fail; None (auto): when the manifest gives coordinates for any row (a catalogue
    # with coordinates: a row without them is broken), not when it gives none (GZ1's image folders)
    require_coords: bool | None = None
    label_domain: dict[str, list[str]] | None = None  # task -> classes (default galmorph.tasks.TASKS)
    check_images: bool = True  # rows with an empty image_uri are catalogue-only and skip image checks
    # rows without an image_uri fail; None (auto): when any row has one (such a row cannot be cut out,
    # labelled or scored), not for a catalogue-only manifest (no row has an image)
    require_images: bool | None = None
    expected_size: tuple[int, int] | None = None  # exact (height, width) of every image
    min_size: int = 16  # smallest acceptable side (px)
    blank_std: float = 1e-6  # an image whose pixel std is below this (after scaling) is blank
    require_wcs: bool = True  # FITS images must carry a usable celestial WCS
    max_failure_fraction: float = 0.05
    z_physical_max: float = Z_MAX_PHYSICAL  # a z above this is an error (quarantined), not a selection
    # framing check (a warning, not a quarantine): with model_image_size set, every readable image's
    # galaxy extent (galmorph.catalogue.cutout.galaxy_extent_px) is scaled into the model's input (the model crops
    # model_crop_fraction and resizes to model_image_size); galaxies below min_extent_px are counted
    model_image_size: int | None = None
    model_crop_fraction: float = 1.0
    min_extent_px: float = 40.0

    def __post_init__(self) -> None:
        if self.z_min is not None and self.z_max is not None and not self.z_min < self.z_max:
            raise ValueError(f"z_min ({self.z_min}) must be below z_max ({self.z_max})")
        if not 0 <= self.max_failure_fraction <= 1:
            raise ValueError(f"max_failure_fraction must be in [0, 1], got {self.max_failure_fraction}")
        if self.expected_size is not None:
            self.expected_size = (int(self.expected_size[0]), int(self.expected_size[1]))
        if self.model_image_size is not None and (int(self.model_image_size) < 1
                                                  or not 0 < self.model_crop_fraction <= 1):
            raise ValueError(f"bad model framing: model_image_size {self.model_image_size}, "
                             f"model_crop_fraction {self.model_crop_fraction}")


@dataclass
class ValidationResult:
    """Outcome usable by pipelines: ``success`` + counts, the quarantine and the GX result."""

    name: str
    rows: int
    passed: int
    success: bool
    failure_fraction: float
    max_failure_fraction: float
    quarantine: pd.DataFrame = field(repr=False)
    schema_errors: list[str] = field(default_factory=list)
    expectation_failures: dict[str, int] = field(default_factory=dict)
    image_failures: dict[str, int] = field(default_factory=dict)
    gx_success: bool | None = None
    gx_result: dict | None = field(default=None, repr=False)
    passed_manifest: pd.DataFrame | None = field(default=None, repr=False)
    report_path: Path | None = None
    out_manifest: Path | None = None
    quarantine_path: Path | None = None
    n_extent_measured: int = 0  # images whose extent in the model's input was measured (framing check)
    n_small_extent: int = 0  # of those, below ValidationConfig.min_extent_px
    warnings: list[str] = field(default_factory=list)

    @property
    def n_quarantined(self) -> int:
        return self.rows - self.passed

    def to_json(self) -> dict[str, Any]:
        """The ``galmorph validate --json`` document."""
        return {
            "rows": self.rows,
            "passed": self.passed,
            "n_quarantined": self.n_quarantined,  # "quarantined" lists at most REPORT_QUARANTINE_ROWS of a streamed run
            "quarantined": [{"id": None if pd.isna(r.object_id) else str(r.object_id), "reason": r.reason}
                            for r in self.quarantine.itertuples()],
            "success": self.success,
            "failure_fraction": self.failure_fraction,
            "max_failure_fraction": self.max_failure_fraction,
            "schema_errors": self.schema_errors,
            "n_small_extent": self.n_small_extent,
            "warnings": self.warnings,
        }

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "rows": self.rows, "passed": self.passed, "quarantined": self.n_quarantined,
                "success": self.success, "failure_fraction": self.failure_fraction,
                "max_failure_fraction": self.max_failure_fraction, "schema_errors": self.schema_errors,
                "expectation_failures": self.expectation_failures, "image_failures": self.image_failures,
                "gx_success": self.gx_success, "n_extent_measured": self.n_extent_measured,
                "n_small_extent": self.n_small_extent, "warnings": self.warnings}


# --------------------------------------------------------------------------------------------
# great-expectations suite
# --------------------------------------------------------------------------------------------
def _label_domain(cfg: ValidationConfig) -> dict[str, list[str]]:
    if cfg.label_domain is not None:
        return {k: list(v) for k, v in cfg.label_domain.items()}
    from galmorph.tasks import ARM_MERGES, TASKS

    dom = {k: list(v.classes) for k, v in TASKS.items()}
    # merged arm classes (3+4, 4+) are valid arm labels too
    dom["arms"] = list(dict.fromkeys(dom["arms"] + [m for mp in ARM_MERGES.values() for m in mp.values()]))
    return dom


def build_suite(df: pd.DataFrame, cfg: ValidationConfig, name: str = "manifest"):
    """The GX expectation suite for one manifest; returns ``(suite, {expectation key: reason template})``.

    Row-level expectations carry a ``meta["check"]`` key used to turn failures into quarantine reasons."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    suite = gx.ExpectationSuite(name=f"galmorph-{name}")
    for c in REQUIRED_COLUMNS:
        suite.add_expectation(gxe.ExpectColumnToExist(column=c, meta={"check": "schema"}))
    for c in ("ra", "dec", "z"):
        suite.add_expectation(gxe.ExpectColumnValuesToBeInTypeList(
            column=c, type_list=["float64", "float32", "Float64"], meta={"check": "schema"}))
    suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column="object_id", meta={"check": "id_null"}))
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="object_id", meta={"check": "id_unique"}))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="ra", min_value=0, max_value=360,
                                                            strict_max=True, meta={"check": "ra_range"}))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="dec", min_value=-90, max_value=90,
                                                            meta={"check": "dec_range"}))
    if cfg.require_coords:
        for c in ("ra", "dec"):
            suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=c, meta={"check": f"{c}_null"}))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="z", min_value=0, max_value=cfg.z_physical_max,
                                                            meta={"check": "z_physical"}))
    if cfg.z_min is not None or cfg.z_max is not None:
        suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(
            column="z", min_value=cfg.z_min, max_value=cfg.z_max, meta={"check": "z_selection"}))
    if cfg.require_z:
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column="z", meta={"check": "z_null"}))
    dom = _label_domain(cfg)
    if "task" in df.columns:
        tasks = [t for t in df["task"].dropna().unique().tolist() if t != ""]
        for t in tasks:
            if t in dom:
                suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(
                    column="label", value_set=dom[t], row_condition=Column("task") == t,
                    meta={"check": "label_domain", "task": t}))
        unknown = [t for t in tasks if t not in dom]
        if unknown:
            suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(
                column="task", value_set=sorted(dom), meta={"check": "task_domain"}))
    return suite


_REASONS = {
    "id_null": lambda r: "object_id is null",
    "id_unique": lambda r: f"duplicate object_id {r.get('object_id')!r}",
    "ra_range": lambda r: f"ra {r.get('ra')} outside [0, 360)",
    "dec_range": lambda r: f"dec {r.get('dec')} outside [-90, 90]",
    "ra_null": lambda r: "ra missing",
    "dec_null": lambda r: "dec missing",
    "z_physical": lambda r: (f"negative redshift z={r.get('z')}" if not r.get("z") >= 0
                             else f"redshift z={r.get('z')} above the physical limit"),
    "z_null": lambda r: "redshift missing",
    "task_domain": lambda r: f"unknown task {r.get('task')!r}",
}


class GxRunner:
    """One ephemeral GX context for a validation run: a streamed release is validated chunk by chunk against the
    same suite (rebuilt only when a chunk names other tasks) without paying the context's start per chunk."""

    def __init__(self, cfg: ValidationConfig, name: str = "manifest"):
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        self.cfg, self.name = cfg, name
        self.ctx = gx.get_context(mode="ephemeral")
        self.ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        asset = self.ctx.data_sources.add_pandas(f"galmorph-{name}").add_dataframe_asset(name="manifest")
        self.batches = asset.add_batch_definition_whole_dataframe("whole")
        self.suites: dict[tuple, Any] = {}

    def validate(self, df: pd.DataFrame):
        tasks = tuple(sorted(str(t) for t in df["task"].dropna().unique())) if "task" in df.columns else ()
        if tasks not in self.suites:
            suite_name = self.name if not self.suites else f"{self.name}-{len(self.suites)}"
            self.suites[tasks] = self.ctx.suites.add(build_suite(df, self.cfg, suite_name))
        batch = self.batches.get_batch(batch_parameters={"dataframe": df})
        return batch.validate(self.suites[tasks], result_format={"result_format": "COMPLETE",
                                                                 "unexpected_index_column_names": ["_row"]})


def run_gx(df: pd.DataFrame, cfg: ValidationConfig, name: str = "manifest", runner: GxRunner | None = None):
    """Validate ``df`` with an ephemeral GX context (``runner``'s, else a new one); returns the GX
    ``ExpectationSuiteValidationResult``."""
    return (runner or GxRunner(cfg, name)).validate(df)


# --------------------------------------------------------------------------------------------
# per-row image checks
# --------------------------------------------------------------------------------------------
def check_image(path: Path, cfg: ValidationConfig) -> str | None:
    """``None`` when the image is usable, else the reason (file named)."""
    return inspect_image(path, cfg)[0]


def inspect_image(path: Path, cfg: ValidationConfig) -> tuple[str | None, float | None]:
    """``(reason, extent)``: the reason the image is unusable (``None`` when usable) and, for a usable
    image when ``cfg.model_image_size`` is set, the galaxy's extent in the model's input (px)."""
    from galmorph.imaging.io import ImageError, is_fits, load_image, read_fits

    try:
        if is_fits(path):
            im = read_fits(path)
            arr = im.data
            if cfg.require_wcs and im.wcs is None:
                return f"{path.name}: FITS header has no usable celestial WCS", None
        else:
            arr = load_image(path, allow_nan=True)
    except ImageError as exc:
        return str(exc).replace(str(path), path.name), None
    reason = check_decoded(arr, cfg, path.name)
    return reason, (model_extent(arr, cfg) if reason is None else None)


def model_extent(arr: np.ndarray, cfg: ValidationConfig) -> float | None:
    """The galaxy's extent (about 2 R90, :func:`galmorph.catalogue.cutout.galaxy_extent_px`) in the model's input
    described by ``cfg`` (None without ``cfg.model_image_size``; NaN when no light is above the sky)."""
    if not cfg.model_image_size:
        return None
    from galmorph.catalogue.cutout import extent_in_model_px, galaxy_extent_px

    return extent_in_model_px(galaxy_extent_px(arr), int(min(arr.shape[:2])), int(cfg.model_image_size),
                              cfg.model_crop_fraction)


def check_decoded(arr: np.ndarray, cfg: ValidationConfig, name: str) -> str | None:
    """The per-image checks on already decoded pixels (size, NaN/inf, blank): ``None`` or the reason,
    prefixed with ``name``. Shared by :func:`check_image` and the decode-once release path, which runs
    them on the pixels it scores (:mod:`galmorph.release_path`)."""
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < cfg.min_size:
        return f"{name}: image {arr.shape} smaller than {cfg.min_size} px"
    if cfg.expected_size is not None and tuple(arr.shape[:2]) != tuple(cfg.expected_size):
        return f"{name}: size {arr.shape[0]}x{arr.shape[1]} != expected {cfg.expected_size[0]}x{cfg.expected_size[1]}"
    lo, hi = float(np.min(arr)), float(np.max(arr))  # one pass each, no copy: the scoring pass runs this per image
    if not (math.isfinite(lo) and math.isfinite(hi)):  # a NaN or an inf reaches the min or the max
        return f"{name}: {int((~np.isfinite(arr)).sum())} NaN/inf pixel(s)"
    span = hi - lo
    scale = max(abs(hi), 1e-12)
    # std >= span / sqrt(2 n) for any n values spanning ``span``: past twice that bound the blank check passes
    # without the float64 std (the exact test below gives the same verdict)
    if span > 0 and span / math.sqrt(2 * arr.size) / scale >= 2 * cfg.blank_std:
        return None
    if span <= 0 or float(arr.std(dtype=np.float64)) / scale < cfg.blank_std:
        return f"{name}: blank image (constant value {float(arr.flat[0]):g})"
    return None


def image_checks(df: pd.DataFrame, cfg: ValidationConfig, data_root: Path | None = None,
                 progress: bool = True, workers: int = 1,
                 extents: dict[int, float] | None = None) -> dict[int, str]:
    """Row position -> reason for every row whose image fails; with ``extents`` (and
    ``cfg.model_image_size``) also row position -> the galaxy's extent in the model's input."""
    from tqdm import tqdm

    out: dict[int, str] = {}
    todo: list[tuple[int, Path]] = []
    for i, uri in enumerate(df["image_uri"].tolist()):
        if uri is None or uri is pd.NA or str(uri) == "":
            if cfg.require_images:
                out[i] = "no image_uri"
            continue
        try:
            todo.append((i, resolve_image_uri(str(uri), data_root)))
        except ManifestError as exc:
            out[i] = str(exc)
    if workers > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(workers) as ex:
            res = list(tqdm(ex.map(lambda t: inspect_image(t[1], cfg), todo), total=len(todo),
                            desc="image checks", disable=not progress))
    else:
        res = [inspect_image(p, cfg) for _, p in tqdm(todo, desc="image checks", disable=not progress)]
    for (i, _), (r, ext) in zip(todo, res):
        if r:
            out[i] = r
        elif extents is not None and ext is not None:
            extents[i] = ext
    return out


# --------------------------------------------------------------------------------------------
# the validation run
# --------------------------------------------------------------------------------------------
_VOLATILE_KEYS = {"ge_load_time", "validation_time", "run_id", "run_time", "id"}


def stable_gx_json(obj: Any) -> Any:
    """The GX result without its volatile fields (load time, run ids, random expectation ids), so that
    the saved report is byte-identical when the data and the suite are (DVC reproducibility)."""
    if isinstance(obj, dict):
        return {k: stable_gx_json(v) for k, v in obj.items() if k not in _VOLATILE_KEYS}
    if isinstance(obj, list):
        return [stable_gx_json(v) for v in obj]
    return obj


def _row_failures(gx_result, df: pd.DataFrame, cfg: ValidationConfig, row_offset: int = 0
                  ) -> tuple[dict[int, list[str]], list[str], dict]:
    reasons: dict[int, list[str]] = defaultdict(list)
    schema_errors: list[str] = []
    counts: dict[str, int] = {}
    for r in gx_result.results:
        cfgx = r.expectation_config
        check = (cfgx.meta or {}).get("check", cfgx.type)
        if r.success:
            continue
        if r.exception_info and r.exception_info.get("raised_exception"):
            schema_errors.append(f"{cfgx.type}({cfgx.kwargs.get('column')}): "
                                 f"{r.exception_info.get('exception_message')}")
            continue
        if check == "schema":
            schema_errors.append(f"{cfgx.type} failed for column {cfgx.kwargs.get('column')!r}: "
                                 f"{ {k: v for k, v in r.result.items() if k == 'observed_value'} }")
            continue
        idx = [int(u["_row"]) for u in (r.result.get("unexpected_index_list") or [])]
        counts[check] = len(idx)
        if check == "id_unique":
            # keep the first occurrence of each duplicated id, quarantine the others
            first: dict[str, int] = {}
            for i in sorted(idx):
                oid = str(df["object_id"].iat[i])
                if oid not in first:
                    first[oid] = i
                    continue
                reasons[i].append(f"duplicate object_id {oid!r} (first at row {row_offset + first[oid]})")
            continue
        for i in idx:
            row = df.iloc[i]
            if check == "z_selection":
                msg = f"z={row['z']:.6g} outside selection [{cfg.z_min}, {cfg.z_max}]"
            elif check == "label_domain":
                msg = f"label {row['label']!r} not a {cfgx.meta.get('task')} class"
            else:
                msg = _REASONS.get(check, lambda r_: check)(row.to_dict())
            reasons[i].append(msg)
    return reasons, schema_errors, counts


def _has_any(df: pd.DataFrame, column: str, numeric: bool) -> bool:
    if column not in df.columns:
        return False
    col = df[column]
    if numeric:
        return bool(np.isfinite(pd.to_numeric(col, errors="coerce").astype("float64")).any())
    return bool(col.notna().any() and (col.dropna().astype(str).str.strip() != "").any())


def resolve_auto_requirements(df: pd.DataFrame, cfg: ValidationConfig) -> ValidationConfig:
    """``cfg`` with ``require_coords``/``require_images`` left at None (auto) decided from ``df``: required
    when any row has them (then a row without them is quarantined with its reason)."""
    from dataclasses import replace

    changes = {}
    if cfg.require_coords is None:
        changes["require_coords"] = _has_any(df, "ra", True) or _has_any(df, "dec", True)
    if cfg.require_images is None:
        changes["require_images"] = _has_any(df, "image_uri", False)
    return replace(cfg, **changes) if changes else cfg


def _earlier_duplicates(ids: pd.Series, row_offset: int, repeats: Repeats, reasons: dict[int, list[str]],
                        counts: dict[str, int]) -> None:
    """Rows of this chunk whose object id an earlier chunk had (``repeats``: the whole manifest's, by file
    position): a duplicate reason each (a repeat within the chunk is GX's)."""
    text = ids.astype("string")
    first = repeats.first_of(np.arange(row_offset, row_offset + len(text)))
    for i in np.flatnonzero((first >= 0) & (first < row_offset)):
        # the first occurrence is an earlier chunk's, not one of this chunk's (GX's reason replaced)
        within = [m for m in reasons.get(int(i), []) if m.startswith("duplicate object_id ")]
        reasons[int(i)] = [m for m in reasons.get(int(i), []) if m not in within]
        reasons[int(i)].append(f"duplicate object_id {text.iat[int(i)]!r} (first at row {int(first[i])})")
        counts["id_unique"] = counts.get("id_unique", 0) + (0 if within else 1)


def validate_frame(df: pd.DataFrame, cfg: ValidationConfig | None = None, data_root: Path | str | None = None,
                   name: str = "manifest", progress: bool = True, workers: int = 1,
                   unreadable: list[dict] | None = None, row_offset: int = 0, repeats: Repeats | None = None,
                   gx_runner: GxRunner | None = None) -> ValidationResult:
    """Validate a manifest DataFrame (no files written).

    ``ra``/``dec``/``z`` cells that are present but not numbers are quarantined (their reason says so);
    missing ones pass unless ``require_coords``/``require_z``. ``unreadable`` are quarantine records of
    rows that could not be parsed at all (ragged CSV lines); they count as input rows. One chunk of a streamed
    manifest: ``row_offset`` is its first row's position, ``repeats`` the whole manifest's repeated object ids
    (:func:`~galmorph.catalogue.manifest.repeated_ids`; a repeat of an earlier chunk's id is quarantined as a
    duplicate), ``gx_runner`` the run's GX context."""
    cfg = resolve_auto_requirements(df, cfg or ValidationConfig())
    dr = Path(data_root) if data_root is not None else None
    df = df.reset_index(drop=True)
    unreadable = [{**r, "stage": STAGE} for r in (unreadable or [])]
    n = len(df)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if n == 0:
        return ValidationResult(name=name, rows=len(unreadable), passed=0, success=False,
                                failure_fraction=1.0 if unreadable else 0.0,
                                max_failure_fraction=cfg.max_failure_fraction, quarantine=quarantine_frame(unreadable),
                                schema_errors=[f"{name}: manifest has no {'readable ' if unreadable else ''}rows"])
    not_numbers = numeric_problems(df)
    df = df.copy()
    for c in FLOAT_COLUMNS:
        if c in df.columns and not pd.api.types.is_float_dtype(df[c].dtype):
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    work = df.copy()
    work["_row"] = np.arange(n)
    for c in missing:  # so that the suite still runs and reports every problem at once
        work[c] = None
    gx_res = run_gx(work, cfg, name, gx_runner)
    reasons, schema_errors, counts = _row_failures(gx_res, work, cfg, row_offset)
    if repeats is not None and "object_id" not in missing:
        _earlier_duplicates(df["object_id"], row_offset, repeats, reasons, counts)
    for i, msgs in not_numbers.items():
        reasons[i][:0] = msgs
        counts["not_a_number"] = counts.get("not_a_number", 0) + 1
    if missing:
        schema_errors.insert(0, f"{name}: missing required column(s) {missing}")
    img_fail: dict[str, int] = {}
    extents: dict[int, float] = {}
    if cfg.check_images and "image_uri" not in missing:
        for i, msg in image_checks(work, cfg, dr, progress=progress, workers=workers, extents=extents).items():
            reasons[i].append(msg)
            key = msg.split(": ", 1)[-1].split(" (")[0].split(" ")[0] if ": " in msg else msg
            img_fail[key] = img_fail.get(key, 0) + 1
    q = []
    for i in sorted(reasons):
        row = df.iloc[i]
        q.append(quarantine_record(row.get("object_id"), STAGE, "; ".join(reasons[i]), row.to_dict()))
    qdf = quarantine_frame(unreadable + q)
    bad = set(reasons)
    keep = [i for i in range(n) if i not in bad]
    passed_df = df.iloc[keep].reset_index(drop=True)
    warnings: list[str] = []
    n_small = 0
    if cfg.model_image_size and cfg.check_images:
        ext = np.array([extents.get(i, np.nan) for i in keep], dtype=float)
        small = np.isfinite(ext) & (ext < cfg.min_extent_px)
        n_small = int(small.sum())
        passed_df["extent_model_px"] = ext
        passed_df["small_extent"] = small
        if n_small:
            warnings.append(f"{name}: {n_small} of {int(np.isfinite(ext).sum())} galaxies are smaller than "
                            f"{cfg.min_extent_px:g} px across in the model's input ({cfg.model_image_size} px, "
                            f"crop {cfg.model_crop_fraction:g}): their arms are probably not resolved; use a "
                            "tighter crop or a larger input")
            log.warning("validate %s", warnings[-1])
    n += len(unreadable)
    frac = (len(bad) + len(unreadable)) / n
    success = not schema_errors and frac <= cfg.max_failure_fraction
    gx_json = stable_gx_json(gx_res.to_json_dict())
    res = ValidationResult(name=name, rows=n, passed=len(passed_df), success=success, failure_fraction=frac,
                           max_failure_fraction=cfg.max_failure_fraction, quarantine=qdf,
                           schema_errors=schema_errors, expectation_failures=counts, image_failures=img_fail,
                           gx_success=bool(gx_res.success), gx_result=gx_json, passed_manifest=passed_df,
                           n_extent_measured=len(extents), n_small_extent=n_small, warnings=warnings)
    assert res.passed + len(qdf) == n
    log.info("validate %s: %d rows, %d passed, %d quarantined (%.1f%%) -> %s", name, n, res.passed, len(qdf),
             100 * frac, "OK" if success else "FAILED")
    return res


def validate_manifest(manifest: str | Path | pd.DataFrame, cfg: ValidationConfig | None = None,
                      data_root: Path | str | None = None, out_manifest: str | Path | None = None,
                      quarantine_path: str | Path | None = None, report_path: str | Path | None = None,
                      log_to_mlflow: bool = True, progress: bool = True, workers: int = 1) -> ValidationResult:
    """Validate a manifest file (or frame); write the passed rows, the quarantine and the report.

    The report JSON holds the summary, the config and the full GX validation result; it is logged to
    MLflow (artifact ``validation/<name>.json`` + metrics) when a run is active."""
    unreadable: list[dict] = []
    if isinstance(manifest, pd.DataFrame):
        df, name, kind = manifest, "manifest", "manifest"
    elif not is_csv(manifest):
        res, cfg = _validate_streamed(Path(manifest), cfg or ValidationConfig(), data_root, out_manifest,
                                      quarantine_path, progress, workers)
        return _report(res, cfg, report_path, log_to_mlflow)
    else:
        path = Path(manifest)
        df, unreadable = read_manifest_table(path)  # Parquet or CSV; object_id + image_uri required
        name = Path(path.stem).stem if path.name.lower().endswith(".gz") else path.stem
        kind = "manifest" if is_csv(path) else manifest_metadata(path).get("kind", "manifest")
    cfg = resolve_auto_requirements(df, cfg or ValidationConfig())
    res = validate_frame(df, cfg, data_root, name=name, progress=progress, workers=workers, unreadable=unreadable)
    if out_manifest is not None and res.passed_manifest is not None and not res.schema_errors:
        write_manifest(res.passed_manifest, out_manifest, kind=kind,
                       extra_meta={**carried_metadata(manifest), "validated": True, "validation": res.summary()})
        res.out_manifest = Path(out_manifest)
    if quarantine_path is not None:
        write_quarantine(res.quarantine, quarantine_path)
        res.quarantine_path = Path(quarantine_path)
    return _report(res, cfg, report_path, log_to_mlflow)


def _report(res: ValidationResult, cfg: ValidationConfig, report_path: str | Path | None,
            log_to_mlflow: bool) -> ValidationResult:
    """The validation report (summary, config, quarantined rows, GX result) to ``report_path`` and MLflow."""
    report = {"summary": res.summary(), "config": asdict(cfg), "quarantined": res.to_json()["quarantined"],
              "gx_result": res.gx_result}
    if report_path is not None:
        report_path = Path(report_path)
        report_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = report_path.with_name(f".{report_path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(finite_json(report), indent=2, default=json_default))
        os.replace(tmp, report_path)
        res.report_path = report_path
    if log_to_mlflow:
        _log_mlflow(res, report)
    return res


#: A streamed validation keeps the first this many quarantined rows for its report (every one is in the
#: quarantine file)
REPORT_QUARANTINE_ROWS = 1000


def _auto_requirements(path: Path, cfg: ValidationConfig) -> ValidationConfig:
    """:func:`resolve_auto_requirements` over a whole Parquet manifest, reading only its ra/dec/image_uri
    columns chunk by chunk (a requirement holds for every chunk when any row of the release has the column)."""
    if cfg.require_coords is not None and cfg.require_images is not None:
        return cfg
    coords = images = False
    for df in iter_manifest(path, columns=["ra", "dec", "image_uri"]):
        coords = coords or _has_any(df, "ra", True) or _has_any(df, "dec", True)
        images = images or _has_any(df, "image_uri", False)
        if coords and images:
            break
    from dataclasses import replace

    return replace(cfg, require_coords=coords if cfg.require_coords is None else cfg.require_coords,
                   require_images=images if cfg.require_images is None else cfg.require_images)


def _merge_gx(total: dict | None, part: dict) -> dict:
    """GX results of the chunks as one: per expectation, success if it held in every chunk, the element and
    unexpected counts summed (the unexpected examples are the first chunk's that had any)."""
    if total is None:
        return part
    out = dict(total)
    out["success"] = bool(total.get("success")) and bool(part.get("success"))
    def key(r: dict) -> str:  # an expectation: its type and arguments
        ec = r.get("expectation_config", {})
        return str(ec.get("type")) + json.dumps(ec.get("kwargs"), sort_keys=True, default=str)

    by_key = {key(r): r for r in part.get("results", [])}
    merged = []
    for r in total.get("results", []):
        q = by_key.get(key(r))
        if q is None:
            merged.append(r)
            continue
        r = dict(r)
        r["success"] = bool(r.get("success")) and bool(q.get("success"))
        a, b = dict(r.get("result") or {}), q.get("result") or {}
        for k in ("element_count", "unexpected_count", "missing_count"):
            if isinstance(a.get(k), int) and isinstance(b.get(k), int):
                a[k] = a[k] + b[k]
        if not a.get("partial_unexpected_list") and b.get("partial_unexpected_list"):
            a["partial_unexpected_list"] = b["partial_unexpected_list"]
        for k in ("unexpected_list", "unexpected_index_list", "unexpected_index_query"):
            a.pop(k, None)  # per-chunk row lists: the quarantine file holds every row with its reason
        r["result"] = a
        merged.append(r)
    out["results"] = merged
    stats = dict(total.get("statistics") or {})
    stats.update(evaluated_expectations=len(merged), successful_expectations=sum(bool(r["success"]) for r in merged),
                 unsuccessful_expectations=sum(not r["success"] for r in merged))
    out["statistics"] = stats
    return out


def _validate_streamed(path: Path, cfg: ValidationConfig, data_root: Path | str | None,
                       out_manifest: str | Path | None, quarantine_path: str | Path | None, progress: bool,
                       workers: int) -> tuple[ValidationResult, ValidationConfig]:
    """:func:`validate_manifest` of a Parquet manifest chunk by chunk (:data:`~galmorph.catalogue.manifest.CHUNK_ROWS`
    rows): passed rows and quarantine written as they come, an object id repeating an earlier chunk's quarantined
    as a duplicate (found first by one pass over the id column, :func:`~galmorph.catalogue.manifest.repeated_ids`),
    counts and the GX results summed; memory bounded by a chunk whatever the release's size. The passed manifest is
    written only without schema errors."""
    import tempfile

    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist")
    name = Path(path.stem).stem if path.name.lower().endswith(".gz") else path.stem
    kind = manifest_metadata(path).get("kind", "manifest")
    cfg = _auto_requirements(path, cfg)
    qpath = Path(quarantine_path) if quarantine_path is not None else Path(tempfile.mkdtemp()) / "quarantine.parquet"
    runner = GxRunner(cfg, name)
    repeats = repeated_ids(path)  # no object_id column: none (a schema error)
    rows = passed = n_ext = n_small = 0
    schema_errors: list[str] = []
    counts: dict[str, int] = {}
    img_fail: dict[str, int] = {}
    gx_json: dict | None = None
    report_q: list[pd.DataFrame] = []
    n_report_q = 0
    writer = ManifestWriter(out_manifest, kind) if out_manifest is not None else None
    try:
        with QuarantineWriter(qpath) as qw:
            for df in iter_manifest(path):
                r = validate_frame(df, cfg, data_root, name=name, progress=progress, workers=workers,
                                   row_offset=rows, repeats=repeats, gx_runner=runner)
                rows += r.rows
                passed += r.passed
                schema_errors.extend(e for e in r.schema_errors if e not in schema_errors)
                for tot, part in ((counts, r.expectation_failures), (img_fail, r.image_failures)):
                    for k, v in part.items():
                        tot[k] = tot.get(k, 0) + int(v)
                n_ext += r.n_extent_measured
                n_small += r.n_small_extent
                gx_json = _merge_gx(gx_json, r.gx_result or {})
                qw.write(r.quarantine)
                if n_report_q < REPORT_QUARANTINE_ROWS and len(r.quarantine):
                    report_q.append(r.quarantine.iloc[:REPORT_QUARANTINE_ROWS - n_report_q])
                    n_report_q += len(report_q[-1])
                if writer is not None and r.passed_manifest is not None:
                    writer.write(r.passed_manifest)
            qw.close()
        if rows == 0:
            schema_errors.append(f"{name}: manifest has no rows")
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    frac = (rows - passed) / rows if rows else 0.0
    success = not schema_errors and rows > 0 and frac <= cfg.max_failure_fraction
    warnings = []
    if n_small:
        warnings.append(f"{name}: {n_small} of {n_ext} galaxies are smaller than {cfg.min_extent_px:g} px across in "
                        f"the model's input ({cfg.model_image_size} px, crop {cfg.model_crop_fraction:g}): their arms "
                        "are probably not resolved; use a tighter crop or a larger input")
    res = ValidationResult(name=name, rows=rows, passed=passed, success=success, failure_fraction=frac,
                           max_failure_fraction=cfg.max_failure_fraction,
                           quarantine=pd.concat(report_q, ignore_index=True) if report_q else quarantine_frame([]),
                           schema_errors=schema_errors, expectation_failures=counts, image_failures=img_fail,
                           gx_success=bool(gx_json.get("success")) if gx_json else None, gx_result=gx_json,
                           n_extent_measured=n_ext, n_small_extent=n_small, warnings=warnings)
    if quarantine_path is not None:
        res.quarantine_path = qpath
    if writer is not None:
        if schema_errors:
            writer.abort()
        else:
            res.out_manifest = writer.close({**carried_metadata(path), "validated": True,
                                             "validation": res.summary()})
    log.info("validate %s: %d rows, %d passed, %d quarantined (%.1f%%) -> %s", name, rows, passed, rows - passed,
             100 * frac, "OK" if success else "FAILED")
    return res, cfg


def _log_mlflow(res: ValidationResult, report: dict) -> None:
    try:
        import mlflow
    except ImportError:  # pragma: no cover - mlflow is a core dependency
        return
    if mlflow.active_run() is None:
        return
    mlflow.log_dict(report, f"validation/{res.name}.json")
    mlflow.log_metrics({f"validation.{res.name}.rows": res.rows, f"validation.{res.name}.passed": res.passed,
                        f"validation.{res.name}.quarantined": res.n_quarantined,
                        f"validation.{res.name}.failure_fraction": res.failure_fraction,
                        f"validation.{res.name}.success": float(res.success)})
    if res.n_extent_measured:
        mlflow.log_metric(f"validation.{res.name}.n_small_extent", res.n_small_extent)
    if res.warnings:
        mlflow.set_tag(f"galmorph.warning.validation.{res.name}", "; ".join(res.warnings)[:5000])
