"""Kubernetes placement of pipeline tasks: GPUs, node selectors, tolerations, volumes, secrets, retries,
caching. Applied at pipeline-definition time from ``infra/gpu-defaults.yaml``.

Kubernetes-only settings (kfp-kubernetes node selectors, tolerations, PVC mounts, secrets) and the
accelerator request are recorded in the IR's platform spec / container resources. kfp's local
``SubprocessRunner`` ignores them (shown by ``tests/test_pipelines_local.py``, which runs the very same
compiled definitions locally), so one definition serves both; ``GALMORPH_KFP_PLATFORM=none`` compiles
a package without them (for plain KFP backends without the kubernetes platform extension).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from galmorph.settings import REPO_ROOT

GPU_DEFAULTS_FILE = REPO_ROOT / "infra" / "gpu-defaults.yaml"

#: Used when infra/gpu-defaults.yaml is absent (kept equal to the file's values).
FALLBACK_GPU_DEFAULTS: dict[str, Any] = {
    "accelerator_type": "nvidia.com/gpu",
    "accelerator_limit": 1,
    "node_selector": {"nvidia.com/gpu.present": "true"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "cpu_request": "4",
    "memory_request": "16Gi",
    "memory_limit": "32Gi",
}

#: Secret holding the MLflow credentials (created by the Helm chart / profile overlay).
MLFLOW_SECRET = "galmorph-mlflow-credentials"
MLFLOW_SECRET_KEYS = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}
#: Secret holding the promotion lock URL shared by every promoting pod (``postgresql://...``: a Postgres
#: advisory lock, e.g. on the tracking database; see galmorph.promotion.registry.select_lock).
LOCK_SECRET = "galmorph-promotion-lock"
LOCK_SECRET_KEYS = {"url": "GALMORPH_LOCK_URL"}
#: PVC with the survey releases / data root, mounted read-only in ingest-like steps.
DATA_PVC = "galmorph-data"
DATA_MOUNT = "/data"


@dataclass
class Platform:
    kubernetes: bool = True
    gpu: dict[str, Any] = field(default_factory=lambda: dict(FALLBACK_GPU_DEFAULTS))
    gpu_defaults_source: str = "builtin"


def load_platform(path: str | Path | None = None, kubernetes: bool | None = None) -> Platform:
    """Platform settings: ``infra/gpu-defaults.yaml`` (or built-in defaults) and whether to emit
    kfp-kubernetes configs (``GALMORPH_KFP_PLATFORM``: ``kubernetes`` (default) | ``none``)."""
    import yaml

    if kubernetes is None:
        kubernetes = os.environ.get("GALMORPH_KFP_PLATFORM", "kubernetes").lower() != "none"
    p = Path(path) if path else GPU_DEFAULTS_FILE
    gpu = dict(FALLBACK_GPU_DEFAULTS)
    src = "builtin"
    if p.exists():
        loaded = yaml.safe_load(p.read_text()) or {}
        gpu.update({k: v for k, v in loaded.items() if v is not None})
        src = str(p.relative_to(REPO_ROOT)) if p.is_relative_to(REPO_ROOT) else str(p)
    return Platform(kubernetes=kubernetes, gpu=gpu, gpu_defaults_source=src)


def gpu_task(task, platform: Platform):
    """Request a GPU for ``task`` and place it on GPU nodes."""
    g = platform.gpu
    task.set_accelerator_type(str(g["accelerator_type"])).set_accelerator_limit(int(g["accelerator_limit"]))
    if g.get("cpu_request"):
        task.set_cpu_request(str(g["cpu_request"]))
    if g.get("memory_request"):
        task.set_memory_request(str(g["memory_request"]))
    if g.get("memory_limit"):
        task.set_memory_limit(str(g["memory_limit"]))
    if platform.kubernetes:
        from kfp import kubernetes

        for k, v in (g.get("node_selector") or {}).items():
            kubernetes.add_node_selector(task, label_key=str(k), label_value=str(v))
        for tol in g.get("tolerations") or []:
            kubernetes.add_toleration(task, **{k: v for k, v in tol.items()
                                               if k in ("key", "operator", "value", "effect", "toleration_seconds")})
    return task


#: Pod label the chart's NetworkPolicies (and the PodDefault) admit as a platform client
#: (values ``clients.podLabel``).
CLIENT_POD_LABEL = ("galmorph.io/platform-client", "true")


def platform_client(task, platform: Platform):
    """Label the step's pod as a platform client so the chart's NetworkPolicies let it reach MLflow,
    Evidently and (for the promotion lock) Postgres."""
    if platform.kubernetes:
        from kfp import kubernetes

        kubernetes.add_pod_label(task, label_key=CLIENT_POD_LABEL[0], label_value=CLIENT_POD_LABEL[1])
    return task


def mlflow_credentials(task, platform: Platform):
    """Inject the MLflow credentials from the cluster Secret as environment variables (and label the
    pod a platform client: :func:`platform_client`)."""
    if platform.kubernetes:
        from kfp import kubernetes

        platform_client(task, platform)
        kubernetes.use_secret_as_env(task, secret_name=MLFLOW_SECRET, secret_key_to_env=dict(MLFLOW_SECRET_KEYS),
                                     optional=True)
    return task


def promotion_lock(task, platform: Platform):
    """Give a promoting step the cluster-wide promotion lock (``GALMORPH_LOCK_URL`` from the Secret
    ``galmorph-promotion-lock``): without it each pod would lock a file in its own ``/tmp``, which
    serialises nothing between pods. Optional: without the Secret the step falls back to a file lock."""
    if platform.kubernetes:
        from kfp import kubernetes

        kubernetes.use_secret_as_env(task, secret_name=LOCK_SECRET, secret_key_to_env=dict(LOCK_SECRET_KEYS),
                                     optional=True)
    return task


def data_volume(task, platform: Platform):
    """Mount the data/releases PVC (read by ingest-like steps) at ``/data``."""
    if platform.kubernetes:
        from kfp import kubernetes

        kubernetes.mount_pvc(task, pvc_name=DATA_PVC, mount_path=DATA_MOUNT)
    return task
