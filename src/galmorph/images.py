"""Container images used by the Kubeflow components (built from infra/docker/)."""

REGISTRY = "ghcr.io/galmorph"
VERSION = "0.1.0"
CPU_IMAGE = f"{REGISTRY}/galmorph-cpu:{VERSION}"
GPU_IMAGE = f"{REGISTRY}/galmorph-gpu:{VERSION}"
APP_IMAGE = f"{REGISTRY}/galmorph-app:{VERSION}"
