"""One typed settings object for the whole platform.

Every value can be overridden by an environment variable ``GALMORPH_<NAME>`` (for example
``GALMORPH_DATA_ROOT``, ``GALMORPH_MLFLOW_PORT``) or by a ``.env`` file in the working directory.
Nothing else in the library reads the environment: functions take explicit arguments and the CLI
fills them from :func:`get_settings`.
"""

from __future__ import annotations

import functools
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Repository root when running from a checkout (``src/galmorph/settings.py`` -> repo).
REPO_ROOT = Path(__file__).resolve().parents[2]


def _default_data_root() -> Path | None:
    """``../shared/data`` beside the checkout (or beside the working directory) when it exists."""
    for base in (REPO_ROOT, Path.cwd()):
        cand = (base / ".." / "shared" / "data").resolve()
        if cand.is_dir():
            return cand
    return None


class Settings(BaseSettings):
    """Platform settings (environment prefix ``GALMORPH_``)."""

    model_config = SettingsConfigDict(env_prefix="GALMORPH_", env_file=".env", extra="ignore")

    data_root: Path | None = Field(
        default_factory=_default_data_root,
        description="Read-only root of the real survey data (gz1_chirality/, gz2_arms/, ...).",
    )
    state_dir: Path = Field(
        default=REPO_ROOT / ".galmorph",
        description="Project-local state: MLflow db and artifacts, Evidently workspace, label db, logs.",
    )
    host: str = Field(default="127.0.0.1", description="Interface local services bind to.")
    mlflow_port: int = Field(default=5055, ge=1, le=65535)
    mlflow_tracking_uri: str | None = Field(
        default=None, description="Tracking URI; defaults to the local stack's server."
    )
    mlflow_backend_uri: str | None = Field(
        default=None, description="Backend store of the local server; default sqlite under state_dir."
    )
    evidently_port: int = Field(default=8085, ge=1, le=65535)
    label_port: int = Field(default=8765, ge=1, le=65535)
    label_db_url: str | None = Field(default=None, description="SQLAlchemy URL of the label database.")
    params_file: Path = Field(default=REPO_ROOT / "params.yaml")
    num_workers: int = Field(default=0, ge=0, description="DataLoader worker processes.")
    kfp_host: str | None = Field(default=None, description="Kubeflow Pipelines endpoint for --host.")

    @model_validator(mode="after")
    def _fill_derived(self) -> "Settings":
        self.state_dir = Path(self.state_dir).resolve()
        if self.data_root is not None:
            self.data_root = Path(self.data_root).expanduser().resolve()
        if self.mlflow_tracking_uri is None:
            self.mlflow_tracking_uri = f"http://{self.host}:{self.mlflow_port}"
        if self.mlflow_backend_uri is None:
            self.mlflow_backend_uri = f"sqlite:///{self.state_dir / 'mlflow' / 'mlflow.db'}"
        if self.label_db_url is None:
            self.label_db_url = f"sqlite:///{self.state_dir / 'labels' / 'labels.db'}"
        return self

    # -- derived locations ------------------------------------------------------------------
    @property
    def mlflow_artifacts_dir(self) -> Path:
        return self.state_dir / "mlflow" / "artifacts"

    @property
    def evidently_workspace(self) -> Path:
        return self.state_dir / "evidently"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    def require_data_root(self) -> Path:
        """The data root, or a clear error saying how to set it."""
        if self.data_root is None or not Path(self.data_root).is_dir():
            raise FileNotFoundError(
                f"galmorph data root not found ({self.data_root!s}); set GALMORPH_DATA_ROOT to the "
                "folder holding gz1_chirality/, gz2_arms/, sdss_fits/, decals/, catalogues/"
            )
        return Path(self.data_root)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (cached; call ``get_settings.cache_clear()`` after changing env)."""
    return Settings()
