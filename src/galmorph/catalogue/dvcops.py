"""DVC helpers: the data version (DVC md5) of a manifest or cutout set, and DVC operations.

The data version of a path is the md5 DVC records for it: the entry in ``dvc.lock`` (stage output)
or in ``<path>.dvc`` when the path is tracked and the recorded hash still matches the files,
otherwise the same hash computed with DVC's own hashing (``dvc_data``): a file's md5, or for a
folder the ``<md5>.dir`` hash of its listing. MLflow runs record it as their dataset version
(:func:`log_dataset`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

log = logging.getLogger(__name__)


@dataclass
class DataVersion:
    path: Path
    md5: str  # "<hex>" for a file, "<hex>.dir" for a folder
    source: str  # "dvc.lock" | "<name>.dvc" | "computed"
    stale_record: str | None = None  # the recorded hash when it no longer matches the files

    def to_dict(self) -> dict:
        return {"path": str(self.path), "md5": self.md5, "source": self.source, "stale_record": self.stale_record}


def find_dvc_root(path: str | Path) -> Path | None:
    """The closest folder above ``path`` holding a ``.dvc/`` folder."""
    p = Path(path).resolve()
    for cand in [p, *p.parents]:
        if (cand / ".dvc").is_dir():
            return cand
    return None


def compute_md5(path: str | Path) -> str:
    """DVC's md5 of a file, or ``<md5>.dir`` of a folder (same algorithm ``dvc add``/``dvc repro`` use)."""
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db.local import LocalHashFileDB
    from dvc_data.hashfile.hash import file_md5
    from dvc_objects.fs.local import LocalFileSystem

    path = Path(path).resolve()
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist")
    fs = LocalFileSystem()
    if path.is_file():
        return file_md5(str(path), fs)
    with tempfile.TemporaryDirectory(prefix="galmorph-dvc-odb-") as tmp:
        _, _, obj = build(LocalHashFileDB(fs, tmp), str(path), fs, "md5")
    return obj.hash_info.value


def _recorded_md5(path: Path, root: Path) -> tuple[str, str] | None:
    """``(md5, record name)`` of ``path`` in ``dvc.lock`` or ``<path>.dvc``."""
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    lock = root / "dvc.lock"
    if lock.exists():
        data = yaml.safe_load(lock.read_text()) or {}
        for stage in (data.get("stages") or {}).values():
            for out in stage.get("outs") or []:
                if str(out.get("path", "")).rstrip("/") == rel and out.get("md5"):
                    return str(out["md5"]), "dvc.lock"
    dvcfile = path.with_name(path.name + ".dvc")
    if dvcfile.exists():
        data = yaml.safe_load(dvcfile.read_text()) or {}
        for out in data.get("outs") or []:
            if out.get("md5"):
                return str(out["md5"]), dvcfile.name
    return None


def data_version_info(path: str | Path) -> DataVersion:
    """The data version of ``path`` with where it came from (see module docstring)."""
    path = Path(path).resolve()
    md5 = compute_md5(path)
    root = find_dvc_root(path)
    rec = _recorded_md5(path, root) if root else None
    if rec is None:
        return DataVersion(path, md5, "computed")
    if rec[0] == md5:
        return DataVersion(path, md5, rec[1])
    log.warning("%s: %s records md5 %s but the files hash to %s (run `dvc repro`/`dvc commit`)", path, rec[1],
                rec[0], md5)
    return DataVersion(path, md5, "computed", stale_record=rec[0])


def data_version(path: str | Path) -> str:
    """The DVC md5 of a manifest / cutout set: what MLflow runs record as their dataset version."""
    return data_version_info(path).md5


def log_dataset(path: str | Path, name: str | None = None, context: str = "training") -> str:
    """Record ``path`` as the active MLflow run's input dataset with the DVC hash as its digest
    (plus the ``galmorph.data_version`` tag). Returns the version; does nothing without an active run."""
    import mlflow

    info = data_version_info(path)
    if mlflow.active_run() is None:
        return info.md5
    path = Path(path)
    name = name or path.name.split(".")[0]
    mlflow.set_tag("galmorph.data_version", info.md5)
    mlflow.set_tag(f"galmorph.data_version.{name}", info.md5)
    try:
        import pandas as pd
        from mlflow.data.pandas_dataset import from_pandas

        mpath = path / "manifest.parquet" if path.is_dir() else path
        if mpath.suffix == ".parquet" and mpath.exists():
            df = pd.read_parquet(mpath)
            ds = from_pandas(df.head(0) if len(df.columns) > 200 else df, source=str(path.resolve()), name=name,
                             digest=info.md5[:36])
            mlflow.log_input(ds, context=context)
    except Exception as exc:  # noqa: BLE001 - the tag above is the contract; the dataset entry is a bonus
        log.warning("could not log %s as an MLflow dataset: %s", path, exc)
    return info.md5


# --------------------------------------------------------------------------------------------
# running DVC
# --------------------------------------------------------------------------------------------
def _dvc_argv() -> list[str]:
    cand = Path(sys.executable).parent / "dvc"
    return [str(cand)] if cand.exists() else [sys.executable, "-m", "dvc"]


def run_dvc(args: list[str], cwd: str | Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``dvc <args>`` in ``cwd`` with this interpreter's bin folder on PATH (so stage commands find
    ``galmorph``)."""
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e.setdefault("DVC_NO_ANALYTICS", "1")
    e.update(env or {})
    proc = subprocess.run([*_dvc_argv(), *args], cwd=cwd, env=e, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"`dvc {' '.join(args)}` failed in {cwd} (exit {proc.returncode}):\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def repro(cwd: str | Path, targets: list[str] | None = None, force: bool = False) -> str:
    return run_dvc(["repro", *(["--force"] if force else []), *(targets or [])], cwd).stdout


def push(cwd: str | Path, remote: str | None = None) -> str:
    return run_dvc(["push", *(["-r", remote] if remote else [])], cwd).stdout


def ensure_local_remote(cwd: str | Path, name: str = "demo", url: str = ".dvc-remote") -> None:
    """Configure (idempotently) a local default remote; ``url`` relative to the repo root (DVC stores it relative to ``.dvc/``)."""
    run_dvc(["remote", "add", "--force", "--default", name, url], cwd)
