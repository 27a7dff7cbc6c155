"""Compile the pipeline definitions into KFP IR YAML packages and detect stale committed packages."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import yaml

from galmorph.ops import PIPELINES, compiled_dir

log = logging.getLogger(__name__)

#: Fields that change with the kfp version but not with the pipeline.
VOLATILE_KEYS = ("sdkVersion",)


def compile_pipeline(name: str, out_dir: str | Path | None = None) -> Path:
    """Compile ``galmorph_pipelines.<name>`` to ``<out_dir>/<name>.yaml`` (default: :func:`compiled_dir`,
    ``pipelines/`` in a checkout)."""
    from kfp import compiler

    from galmorph.ops.loader import load_pipeline

    out = Path(out_dir) if out_dir else compiled_dir()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.yaml"
    compiler.Compiler().compile(load_pipeline(name), str(path))
    log.info("compiled %s -> %s", name, path)
    return path


def compile_all(out_dir: str | Path | None = None, names: tuple[str, ...] = PIPELINES) -> list[Path]:
    return [compile_pipeline(n, out_dir) for n in names]


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE_KEYS}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def normalised(path: str | Path) -> str:
    """The package as canonical YAML without volatile fields (multi-document: IR + platform spec)."""
    docs = [d for d in yaml.safe_load_all(Path(path).read_text()) if d is not None]
    return yaml.safe_dump_all([_strip(d) for d in docs], sort_keys=True)


def stale_packages(committed_dir: str | Path, fresh_dir: str | Path,
                   names: tuple[str, ...] = PIPELINES) -> dict[str, str]:
    """``{name: unified diff}`` for every committed package that differs from a fresh compile
    (missing committed packages count as stale)."""
    out: dict[str, str] = {}
    for n in names:
        c, f = Path(committed_dir) / f"{n}.yaml", Path(fresh_dir) / f"{n}.yaml"
        if not c.exists():
            out[n] = f"{c} is missing; run `galmorph pipeline compile`"
            continue
        a, b = normalised(c), normalised(f)
        if a != b:
            out[n] = "".join(difflib.unified_diff(a.splitlines(True), b.splitlines(True), str(c), str(f), n=2))[:4000]
    return out
