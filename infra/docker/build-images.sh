#!/usr/bin/env bash
# Build the galmorph images with podman (called by `make images`; idempotent).
#
#   infra/docker/build-images.sh            build (or reuse) the project image and the app image
#   infra/docker/build-images.sh --push     push them to the configured registry
#
# Names: galmorph.container_images (GALMORPH_IMAGE_REGISTRY, GALMORPH_IMAGE_TAG). The project image
# is tagged as both galmorph-cpu and galmorph-gpu (one image); galmorph-app is a thin layer on it.
# BASE_IMAGE (default: the mmdebstrap Debian base, made by make-base.sh when missing) is the build
# argument of the project image. The image is reused when its io.galmorph.inputs-hash label equals
# the hash of everything the build reads (Dockerfiles, uv.lock, pyproject, src/, components/,
# pipelines/, params.yaml, the base image id); otherwise podman rebuilds, reusing unchanged layers.
set -euo pipefail
cd "$(dirname "$0")/../.."
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/infra/podman/containers.conf}"
PODMAN="${PODMAN:-podman}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
BASE_IMAGE="${BASE_IMAGE:-localhost/galmorph-base:bookworm}"
UV_VERSION="${UV_VERSION:-0.13.9}"
# the cache `make setup` filled: UV_CACHE, else uv's own (UV_CACHE_DIR, XDG_CACHE_HOME, ~/.cache/uv)
UV_CACHE="${UV_CACHE:-${UV_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/uv}}"
CA_BUNDLE="${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}"

read -r CPU_IMAGE GPU_IMAGE APP_IMAGE < <(PYTHONPATH=src "$PY" -c \
  "from galmorph.container_images import image_names as n; d=n(); print(d['cpu'], d['gpu'], d['app'])")

if [ "${1:-}" = "--push" ]; then
  for img in "$CPU_IMAGE" "$GPU_IMAGE" "$APP_IMAGE"; do
    echo "pushing $img"; $PODMAN push "$img"
  done
  exit 0
fi

if [ "$BASE_IMAGE" = "localhost/galmorph-base:bookworm" ]; then
  infra/docker/make-base.sh "$BASE_IMAGE"
fi
base_id="$($PODMAN image inspect --format '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || echo "$BASE_IMAGE")"
inputs_hash="$( { echo "base=$base_id uv=$UV_VERSION"; \
  find pyproject.toml uv.lock README.md params.yaml src components pipelines monitoring infra/docker -type f \
    -not -path '*/__pycache__/*' -not -name '*.pyc' -not -path '*/tests/*' -print0 \
    | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-16)"
git_commit="$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
if ! git diff --quiet HEAD -- src components pipelines monitoring pyproject.toml uv.lock 2>/dev/null; then
  git_commit="${git_commit}-dirty"
fi

label() { $PODMAN image inspect --format "{{index .Labels \"$2\"}}" "$1" 2>/dev/null || true; }
ca_mount=()
build_args=()
if [ -f "$CA_BUNDLE" ]; then
  ca_mount=(-v "$CA_BUNDLE:/run/host-ca.crt:ro")
  build_args=(--build-arg SSL_CERT_FILE=/run/host-ca.crt)
fi
mkdir -p "$UV_CACHE"

if [ "$(label "$CPU_IMAGE" io.galmorph.inputs-hash)" = "$inputs_hash" ] && \
   [ "$(label "$APP_IMAGE" io.galmorph.inputs-hash)" = "$inputs_hash" ]; then
  echo "images up to date ($CPU_IMAGE, $GPU_IMAGE, $APP_IMAGE; inputs $inputs_hash)"
  exit 0
fi

t0=$SECONDS
echo "building $CPU_IMAGE (base $BASE_IMAGE, inputs $inputs_hash, commit $git_commit)"
$PODMAN build --layers -f infra/docker/project/Dockerfile \
  --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg UV_VERSION="$UV_VERSION" \
  --build-arg GIT_COMMIT="$git_commit" --build-arg INPUTS_HASH="$inputs_hash" \
  -v "$UV_CACHE:/root/.cache/uv" "${ca_mount[@]}" "${build_args[@]}" \
  -t "$CPU_IMAGE" .
$PODMAN tag "$CPU_IMAGE" "$GPU_IMAGE"
echo "building $APP_IMAGE"
$PODMAN build --layers -f infra/docker/app/Dockerfile \
  --build-arg PROJECT_IMAGE="$CPU_IMAGE" --build-arg GIT_COMMIT="$git_commit" \
  -v "$UV_CACHE:/root/.cache/uv" "${ca_mount[@]}" "${build_args[@]}" \
  --label io.galmorph.inputs-hash="$inputs_hash" \
  -t "$APP_IMAGE" .
echo "images built in $((SECONDS - t0)) s: $CPU_IMAGE = $GPU_IMAGE, $APP_IMAGE"
$PODMAN image prune -f >/dev/null 2>&1 || true
