"""Container benchmark: image sizes, warm rebuild times, per-component start overhead in containers vs
kfp's SubprocessRunner. Writes benchmarks/results/containers.json (and prints it).

    uv run python benchmarks/containers.py [--cold] [--repeats 3]      (make bench-containers)

--cold removes the galmorph images, the base and the layer cache first and times `make images`
from scratch (minutes). Without it the cold time is not measured here (see containers.md for the
measured numbers). Needs podman and the images (`make images`).
"""


import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from _common import machine

from galmorph.container_images import APP_IMAGE, CPU_IMAGE, GPU_IMAGE
from galmorph.ops.docker_runner import PodmanService, container_settings, docker_runner, podman_env

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "results" / "containers.json"
ENV = podman_env()


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True, check=check)


def timed(cmd: list[str], cwd: Path = REPO) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=ENV, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def image_size_gb(image: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip()) / 1e9


def uv_cache() -> Path:
    """The uv cache `make setup` filled (what build-images.sh mounts)."""
    for var in ("UV_CACHE", "UV_CACHE_DIR"):
        if os.environ.get(var):
            return Path(os.environ[var])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "uv"


def warm_rebuild_after_src_edit() -> float:
    """Build the project image from a copy of the context with one src/ file edited (the dependency
    layer comes from the cache); returns the seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        ctx = Path(tmp)
        for name in ("pyproject.toml", "uv.lock", "README.md", "params.yaml"):
            shutil.copy2(REPO / name, ctx / name)
        for name in ("src", "components", "pipelines", "monitoring", "infra/docker"):
            shutil.copytree(REPO / name, ctx / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        with open(ctx / "src" / "galmorph" / "__init__.py", "a") as fh:
            fh.write(f"\n# benchmark edit {time.time()}\n")
        cmd = ["podman", "build", "--layers", "-f", "infra/docker/project/Dockerfile",
               "--build-arg", "BASE_IMAGE=localhost/galmorph-base:bookworm",
               "-v", f"{uv_cache()}:/root/.cache/uv", "-t", "localhost/galmorph-bench:warm", "."]
        dt = timed(cmd, cwd=ctx)
    podman("rmi", "localhost/galmorph-bench:warm", check=False)
    return dt


def component_overhead(repeats: int) -> dict[str, float]:
    """Median seconds of one trivial component (imports galmorph, returns a value) per runner."""
    from kfp import dsl, local

    @dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
    def noop(x: int) -> int:
        import galmorph  # noqa: F401 - what every real component does first

        return x + 1

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "kfp"
        root.mkdir()
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            assert noop(x=i).output == i + 1
            times.append(time.perf_counter() - t0)
        out["subprocess_s"] = statistics.median(times)
        with PodmanService(Path(tmp) / "state") as svc, \
                docker_runner(svc, container_settings({}, root, None, None)) as runner:
            local.init(runner=runner, pipeline_root=str(root), raise_on_error=True)
            times = []
            for i in range(repeats):
                t0 = time.perf_counter()
                assert noop(x=i).output == i + 1
                times.append(time.perf_counter() - t0)
        out["container_s"] = statistics.median(times)
    raw = [timed(["podman", "run", "--rm", "--network", "none", CPU_IMAGE, "python", "-c", "import galmorph"])
           for _ in range(repeats)]
    out["podman_run_import_galmorph_s"] = statistics.median(raw)
    out["overhead_s"] = out["container_s"] - out["subprocess_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cold", action="store_true", help="also time a cold `make images` (removes the images)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    # load average at the start; only a quiet run (< 0.5) is a result
    res: dict = {"machine": machine(), "images": {}}
    if args.cold:
        for img in (APP_IMAGE, GPU_IMAGE, CPU_IMAGE):
            podman("rmi", "-f", img, check=False)
        podman("rmi", "-f", "localhost/galmorph-base:bookworm", check=False)
        podman("image", "prune", "-a", "-f", check=False)  # the layer cache too: a fresh machine
        res["cold_build_s"] = timed(["infra/docker/build-images.sh"])
    res["noop_make_images_s"] = timed(["infra/docker/build-images.sh"])
    res["warm_rebuild_after_src_edit_s"] = warm_rebuild_after_src_edit()
    cpu, app = image_size_gb(CPU_IMAGE), image_size_gb(APP_IMAGE)
    res["images"] = {"project (cpu = gpu)": round(cpu, 2), "app": round(app, 2),
                     "app layer on the project image": round(app - cpu, 3),
                     "cpu and gpu are one image": podman("image", "inspect", "--format", "{{.Id}}", CPU_IMAGE).stdout
                     == podman("image", "inspect", "--format", "{{.Id}}", GPU_IMAGE).stdout}
    res["component_start"] = component_overhead(args.repeats)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
