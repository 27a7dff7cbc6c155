"""One typed settings object for the whole platform, and the one resolver of run settings.

Every field can be set by an environment variable ``GALMORPH_<NAME>`` (``GALMORPH_DATA_ROOT``,
``GALMORPH_MLFLOW_PORT``, ...) or by a ``.env`` file in the working directory.

Precedence (highest first), the same for every command, pipeline component, DVC stage and MLflow
Project entry, which all call :func:`resolve_settings`:

1. the command-line flag (``--tracking-uri``, ``--data-root``, ``--state-dir``, ``--audit-log``),
   i.e. the keyword arguments of :func:`resolve_settings` that are not ``None``;
2. the environment variable ``GALMORPH_<NAME>`` (``GALMORPH_MLFLOW_TRACKING_URI``, ``GALMORPH_DATA_ROOT``,
   ``GALMORPH_STATE_DIR``, ``GALMORPH_AUDIT_LOG``);
3. ``MLFLOW_TRACKING_URI`` (MLflow's own variable; the tracking URI only);
4. ``GALMORPH_<NAME>`` in the ``.env`` file of the working directory;
5. the default: tracking URI ``http://<host>:<mlflow_port>`` (the local stack), data root
   ``../shared/data`` when it exists, state dir ``<project>/.galmorph`` (:data:`REPO_ROOT`: the checkout, or
   the working directory for an installed wheel), audit log
   ``<state_dir>/registry/audit.jsonl``.

Library functions take explicit arguments; the callers named above fill them from the settings.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic.fields import FieldInfo
from galmorph.imaging.io import MAX_IMAGE_PIXELS
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict


def _project_root() -> Path:
    """The galmorph checkout this module runs from (``<root>/src/galmorph/settings.py`` beside
    ``<root>/pyproject.toml``: a checkout, the uv editable install, the images); installed from the wheel
    (``site-packages/galmorph/``) there is none, and the working directory is the project folder."""
    here = Path(__file__).resolve()
    root = here.parents[2]
    if here.parents[1].name == "src" and (root / "pyproject.toml").is_file():
        return root
    return Path.cwd().resolve()


#: The project folder: the checkout when running from one, else the working directory (at import). The
#: defaults below (state folder, params.yaml, ../shared/data) and deployment files (infra/) are read
#: under it; no code is loaded from it.
REPO_ROOT = _project_root()


def _default_data_root() -> Path | None:
    """``../shared/data`` beside the checkout (or beside the working directory) when it exists."""
    for base in (REPO_ROOT, Path.cwd()):
        cand = (base / ".." / "shared" / "data").resolve()
        if cand.is_dir():
            return cand
    return None


class _MlflowTrackingUriEnv(PydanticBaseSettingsSource):
    """``MLFLOW_TRACKING_URI`` from the environment as the tracking URI (below ``GALMORPH_*``, above
    ``.env``)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        return {"mlflow_tracking_uri": uri} if uri else {}


class Settings(BaseSettings):
    """Platform settings (environment prefix ``GALMORPH_``; precedence in the module docstring)."""

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
    hooks_port: int = Field(default=8095, ge=1, le=65535,
                            description="Port of the registry-event receiver (MLflow webhooks, #27).")
    hooks_secret: str | None = Field(
        default=None, description="HMAC secret of the MLflow webhooks (GALMORPH_HOOKS_SECRET); unset: generated "
        "once into <state_dir>/hooks/secret (a Secret in the chart).")
    hooks_url: str | None = Field(
        default=None, description="URL MLflow posts registry events to; default http://<host>:<hooks_port>/hooks/mlflow.")
    hooks_models: str = Field(
        default="galmorph-*", description="Registered models the receiver governs (comma-separated glob patterns).")
    hooks_max_age: float = Field(
        default=300.0, gt=0, description="Seconds a webhook delivery stays valid (older or replayed: refused, 401).")
    releases_dir: Path | None = Field(
        default=None, description="Folder where survey releases land (the release watcher's, GALMORPH_RELEASES_DIR): "
        "the registry-event receiver rescores the newest ready release of a task found there when the watcher's "
        "state is not on its machine (a cluster); unset: the watcher's state only.")
    label_db_url: str | None = Field(default=None, description="SQLAlchemy URL of the label database.")
    audit_log: Path | None = Field(
        default=None, description="JSON-lines promotion audit log; default <state_dir>/registry/audit.jsonl."
    )
    lock_url: str | None = Field(
        default=None, description="Promotion lock every promoting pod shares (GALMORPH_LOCK_URL): postgresql://... "
        "(advisory lock, e.g. on the tracking database) or file:///shared/folder; unset: derived from the "
        "tracking store (postgres: an advisory lock on it; sqlite/file store/server on this machine: a file "
        "lock), refused for a remote server."
    )
    params_file: Path = Field(default=REPO_ROOT / "params.yaml")
    num_workers: int = Field(default=0, ge=0, description="DataLoader worker processes.")
    kfp_host: str | None = Field(default=None, description="Kubeflow Pipelines endpoint for --host.")
    mlflow_connect_timeout: float = Field(
        default=10.0, gt=0, description="Seconds a command waits for the MLflow tracking server before failing."
    )
    image_registry: str = Field(default="ghcr.io/galmorph",
                                description="Registry (and namespace) of the galmorph container images.")
    image_tag: str = Field(default="0.1.0", description="Tag of the galmorph container images.")
    max_image_pixels: int = Field(
        default=MAX_IMAGE_PIXELS, ge=1,
        description="Largest image (width x height pixels) any stage decodes; larger ones are refused as "
                    "oversize or decompression bombs (GALMORPH_MAX_IMAGE_PIXELS; set for the process by the "
                    "CLI through galmorph.imaging.io.set_max_image_pixels).")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        # flag (init kwargs) > GALMORPH_* > MLFLOW_TRACKING_URI > .env > defaults
        return (init_settings, env_settings, _MlflowTrackingUriEnv(settings_cls), dotenv_settings,
                file_secret_settings)

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
        self.audit_log = (Path(self.audit_log).expanduser().resolve() if self.audit_log is not None
                          else self.state_dir / "registry" / "audit.jsonl")
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

    @property
    def hooks_dir(self) -> Path:
        """The receiver's state: deliveries seen, rescorings started, the generated secret."""
        return self.state_dir / "hooks"

    @property
    def hooks_endpoint(self) -> str:
        return self.hooks_url or f"http://{self.host}:{self.hooks_port}/hooks/mlflow"

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


def resolve_settings(tracking_uri: str | None = None, data_root: str | Path | None = None,
                     state_dir: str | Path | None = None, audit_log: str | Path | None = None,
                     **overrides: Any) -> Settings:
    """The run settings in the documented order: the arguments given (command-line flags; ``None`` or
    ``""`` means not given), then ``GALMORPH_*``, then ``MLFLOW_TRACKING_URI`` (tracking URI), then
    ``.env``, then the defaults. Read afresh on every call (not cached)."""
    given = {"mlflow_tracking_uri": tracking_uri, "data_root": data_root, "state_dir": state_dir,
             "audit_log": audit_log, **overrides}
    return Settings(**{k: v for k, v in given.items() if v is not None and v != ""})
