"""The rescoring pipeline itself, as a user schedules it: ``galmorph.ops.run.run_local("rescoring", ...)`` (kfp's
local SubprocessRunner, the route of ``galmorph pipeline run rescoring``) with its defaults, on a ``folder:``
release of real GZ1 JPEGs, an untrained ResNet-18 at 128 px registered as the chirality champion (with the
drift reference its training run would have logged) on a private MLflow server.

``--model reference``: instead, the chirality reference model, trained as a user trains it (``galmorph train
--task chirality --preset reference`` on the training part of the reference benchmark's split 0, with the drift
reference ``galmorph train`` logs) and made champion; the releases are GZ1 images it did not train on. Writes
results/rescoring_reference.{json,md}.

``--memory 20000,200000``: the pipeline with all its defaults (4 workers, shards of 10 000) on releases of that
many rows (the GZ1 JPEGs again under new names), the peak resident memory of each task's processes sampled
every 0.5 s: memory flat in release size. Writes results/rescoring_memory.{json,md}.

Two release sizes give the marginal rate (images/s between them) and the fixed cost per run (the time the
smaller run takes beyond its images at the marginal rate); per-task wall times from the task log; 1 and 2
scoring workers (``n_workers``: work items of the ParallelFor, which kfp's local runner runs at once on the
same CPUs). Against the eager fp32 forward ceiling of the
same network measured in the same run, before and after. Writes results/rescoring.{json,md}.

    uv run python benchmarks/bench_rescoring.py [--quick] [--sizes 1000,5000] [--workers 1,2] [--model reference]
    uv run python benchmarks/bench_rescoring.py --memory 20000,200000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import tempfile
import time
from pathlib import Path

from _common import forward_ceiling, machine, quiet_line

OUT = Path(os.environ.get("GALMORPH_BENCH_OUT") or Path(__file__).resolve().parent / "results")
CLASSES = ["CW", "ACW", "other"]
MEMORY_SAMPLE_S = 0.1  # the memory run's RSS sampling interval
HALVES_MIN_SAMPLES = 40  # 4 s of a process's life
TASKS = ("ingest", "validate", "resolve-model", "cutout", "shard", "score", "merge", "drift", "publish")
_LOG_TIME = re.compile(r"^(\d{2}:\d{2}:\d{2}(?:\.\d+)?) - INFO - (?:Executing task|Task) '([\w-]+)'")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server(tmp: Path) -> str:
    """A private MLflow server (its own state folder and port) for this process and its pipeline tasks."""
    import mlflow

    from galmorph.ops.stack import start_service
    from galmorph.settings import Settings, get_settings

    port = free_port()
    s = Settings(state_dir=tmp / "state", host="127.0.0.1", mlflow_port=port, evidently_port=free_port(),
                 label_port=free_port(), mlflow_tracking_uri=f"http://127.0.0.1:{port}")
    start_service(s, "mlflow", timeout=300)
    import atexit

    from galmorph.ops.stack import stop_service

    atexit.register(stop_service, s, "mlflow")  # the private server goes with the benchmark
    os.environ.update(GALMORPH_STATE_DIR=str(s.state_dir), GALMORPH_MLFLOW_PORT=str(port),
                      MLFLOW_TRACKING_URI=s.mlflow_tracking_uri)
    get_settings.cache_clear()
    mlflow.set_tracking_uri(s.mlflow_tracking_uri)
    mlflow.set_registry_uri(s.mlflow_tracking_uri)
    return s.mlflow_tracking_uri


def _champion(eager, image_size: int, reference_images: list[Path]) -> str:
    """Register ``eager`` as galmorph-chirality@champion with a drift reference logged on its run."""
    import mlflow
    import pandas as pd

    from galmorph.drift.features import compute_drift_features
    from galmorph.drift.reference import log_drift_reference
    from galmorph.models.io import ModelSpec, log_model

    spec = ModelSpec(task="chirality", classes=CLASSES, arch="resnet18", image_size=image_size)
    mlflow.set_experiment("bench-rescoring-models")
    ref = compute_drift_features(pd.DataFrame({"object_id": [p.stem for p in reference_images],
                                               "image_uri": [str(p) for p in reference_images]}),
                                 progress=False, frame_size=image_size).features
    with mlflow.start_run() as run:
        info = log_model(eager.eval(), spec, registered_model_name="galmorph-chirality")
    log_drift_reference(run.info.run_id, ref, model_name="galmorph-chirality",
                        model_version=str(info.registered_model_version))
    mlflow.MlflowClient().set_registered_model_alias("galmorph-chirality", "champion", info.registered_model_version)
    return f"models:/galmorph-chirality/{info.registered_model_version}"


def verify(model_uri: str, data_root: Path, workdir: Path) -> dict:
    """The version's verified path, checked once as at registration/promotion (recorded on the version)."""
    from galmorph.models.io import load_for_inference
    from galmorph.scoring.accel import verified_path

    t0 = time.perf_counter()
    _, choice, checked = verified_path(load_for_inference(model_uri), "cpu", data_root=data_root, workdir=workdir)
    return {"chosen": choice.chosen, "decode": choice.decode, "refused": choice.refused, "checked": checked,
            "seconds": round(time.perf_counter() - t0, 1), "agreement_set": choice.agreement_set,
            "candidates": [{"path": a.path, "decode": a.decode, "top1": round(a.top1_agreement, 4),
                            "img_s": round(a.img_s, 1), "passed": a.passed} for a in choice.candidates]}


def _release(images: list[Path], out: Path, n: int | None = None) -> Path:
    """A ``folder:`` release of symlinks: ``images``, or ``n`` rows cycling through them under new names."""
    out.mkdir(parents=True, exist_ok=True)
    if n is None:
        for p in images:
            (out / p.name).symlink_to(p)
    else:
        for i in range(n):
            p = images[i % len(images)]
            (out / f"r{i:07d}-{p.name}").symlink_to(p)
    return out


def _task_of(proc, cache: dict) -> str | None:
    """The pipeline function a process runs for (``--function_to_execute NAME`` on it or an ancestor)."""
    import psutil

    chain, p = [], proc
    while p is not None and p.pid not in cache:
        chain.append(p.pid)
        try:
            cmd = p.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            cmd = []
        name = next((cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a == "--function_to_execute"), None)
        if name is None:
            name = next((a.split("--function_to_execute", 1)[1].split()[0] for a in cmd
                         if "--function_to_execute " in a), None)
        if name is not None:
            cache[p.pid] = name
            break
        try:
            p = p.parent()
        except psutil.NoSuchProcess:
            p = None
    found = cache.get(p.pid) if p is not None else None
    for pid in chain:
        cache[pid] = found
    return found


class RssSampler:
    """Peak resident memory of each pipeline task's processes (summed over a task's process tree, the largest
    sample), sampled every ``every`` s from this process's descendants while it runs; each process's samples are
    kept too (:meth:`halves`)."""

    def __init__(self, every: float = 0.5):
        import threading

        self.every, self.peaks, self.process_peaks, self._stop = every, {}, {}, threading.Event()
        self.series: dict[str, dict[int, list[int]]] = {}  # task -> pid -> its RSS samples in order
        self._thread = threading.Thread(target=self._run, daemon=True)

    def halves(self) -> dict[str, dict[str, float]]:
        """Per task, its largest process's peak in the first and in the second half of its samples (MB): memory
        that grows with the rows a process has handled shows as a higher second half."""
        out = {}
        for task, procs in self.series.items():
            xs = max(procs.values(), key=max)
            h = len(xs) // 2
            if h:
                out[task] = {"first": round(max(xs[:h]) / 2**20, 1), "second": round(max(xs[h:]) / 2**20, 1),
                             "samples": len(xs)}
        return out

    def _run(self) -> None:
        import psutil

        me, cache = psutil.Process(), {}
        while not self._stop.is_set():
            now: dict[str, int] = {}
            for c in me.children(recursive=True):
                try:
                    task = _task_of(c, cache)
                    if task:
                        rss = c.memory_info().rss
                        now[task] = now.get(task, 0) + rss
                        self.process_peaks[task] = max(self.process_peaks.get(task, 0), rss)
                        self.series.setdefault(task, {}).setdefault(c.pid, []).append(rss)
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
            for k, v in now.items():
                self.peaks[k] = max(self.peaks.get(k, 0), v)
            self._stop.wait(self.every)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def task_seconds(log_file: Path) -> dict[str, float]:
    """Wall seconds per task from kfp's local log: first start to last finish of the tasks of that name (the
    score workers of the ParallelFor run at once: their stage's wall time)."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for line in log_file.read_text(errors="replace").splitlines():
        line = _ANSI.sub("", line)
        m = _LOG_TIME.match(line)
        if not m:
            continue
        h, mi, s = m.group(1).split(":")
        t = int(h) * 3600 + int(mi) * 60 + float(s)
        key = re.sub(r"-\d+$", "", m.group(2))
        if "Executing task" in line:
            first.setdefault(key, t)
        elif "finished" in line:
            last[key] = t
    return {k: round((last[k] - first[k]) % 86400, 2) for k in first if k in last}


def run_once(n: int, workers: int | None, images: list[Path], tmp: Path, uri: str, extra: dict,
             memory: bool = False, repeat: int = 0) -> dict:
    """One pipeline run on ``n`` rows. ``workers`` None: the pipeline's own ``n_workers`` and ``shard_size``;
    ``memory``: ``n`` rows cycling through ``images`` and the peak memory of each task sampled."""
    from galmorph.ops.run import run_local

    tag = f"r{n}-w{workers or 'dflt'}-{'-'.join(f'{k}{v}' for k, v in sorted(extra.items())) or 'defaults'}"
    tag += f"-rep{repeat}" if repeat else ""
    rel = _release(images, tmp / "releases" / tag, n) if memory else _release(images[:n], tmp / "releases" / tag)
    log_file = tmp / "logs" / f"{tag}.log"
    params = {"release_uri": str(rel), "release": tag, "task": "chirality", "publish_dir": str(tmp / "published"),
              "hold_on_drift": False, **extra}
    if workers is not None:
        params.update(n_workers=workers, shard_size=max(1, -(-n // workers)))
    t0 = time.perf_counter()
    sampler = RssSampler(every=MEMORY_SAMPLE_S) if memory else contextlib.nullcontext()
    with sampler:
        res = run_local("rescoring", params, pipeline_root=tmp / "kfp", tracking_uri=uri, log_file=log_file)
    wall = time.perf_counter() - t0
    summary = json.loads((tmp / "published" / tag / "summary.json").read_text())
    out = {"rows": n, "workers": workers, "params": extra, "repeat": repeat, "wall_s": round(wall, 2),
           "tasks_s": task_seconds(log_file), "n_scored": summary.get("n_scored"),
           "n_quarantined": summary.get("n_quarantined"), "precision": "{chosen}/{decode}".format(**(summary.get("inference") or {"chosen": "?", "decode": "?"})),
           "run_dir": res["run_dir"]}
    if memory:
        out["peak_rss_mb"] = {k: round(v / 2**20, 1) for k, v in sorted(sampler.peaks.items())}
        out["peak_process_rss_mb"] = {k: round(v / 2**20, 1) for k, v in sorted(sampler.process_peaks.items())}
        out["halves_mb"] = sampler.halves()
        out["sample_s"] = sampler.every
        text = _ANSI.sub("", log_file.read_text(errors="replace"))
        out["score_work_items"] = len(re.findall(r"Executing task 'score(?:-\d+)?'", text))  # one per item
    return out


def _params(p: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(p.items())) or "defaults"


def _table(runs: list[dict], ceiling: float) -> list[str]:
    head = ["rows", "workers", "params", "run", "path used", "wall s", *TASKS]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        t = r["tasks_s"]
        md.append("| " + " | ".join([str(r["rows"]), str(r["workers"]), _params(r["params"]),
                                     str(r.get("repeat", 0) + 1), str(r["precision"]),
                                     f"{r['wall_s']:.1f}",
                                     *[f"{t[k]:.1f}" if k in t else "-" for k in TASKS]]) + " |")
    return md


def _median_run(rs: list[dict]) -> dict:
    """One size's repeats as one run: the median wall time and the median score-stage time."""
    import statistics

    return {**rs[0], "wall_s": statistics.median(r["wall_s"] for r in rs),
            "tasks_s": {"score": statistics.median(r["tasks_s"].get("score", 0.0) for r in rs)}, "n_runs": len(rs)}


def margins(runs: list[dict], ceiling: float) -> list[dict]:
    """Marginal rate and fixed cost per worker count (the two sizes; repeated runs of a size: their medians)."""
    out = []
    keys = list(dict.fromkeys((r["workers"], json.dumps(r["params"], sort_keys=True)) for r in runs))
    for w, pk in keys:
        mine = [r for r in runs if r["workers"] == w and json.dumps(r["params"], sort_keys=True) == pk]
        rs = [_median_run([r for r in mine if r["rows"] == n]) for n in sorted({r["rows"] for r in mine})]
        if len(rs) < 2:
            continue
        a, b = rs[0], rs[-1]
        if b["wall_s"] <= a["wall_s"]:  # the larger run was faster: the load changed between them, no margin
            continue
        rate = (b["rows"] - a["rows"]) / (b["wall_s"] - a["wall_s"])
        fixed = a["wall_s"] - a["rows"] / rate
        ds = b["tasks_s"].get("score", 0.0) - a["tasks_s"].get("score", 0.0)
        score_rate = (b["rows"] - a["rows"]) / ds if ds > 0 else float("nan")
        out.append({"workers": w, "params": json.loads(pk), "precision": b.get("precision"),
                    "score_marginal_img_s": round(score_rate, 1), "score_ratio": round(score_rate / ceiling, 3),
                    "marginal_img_s": round(rate, 1), "ratio_to_ceiling": round(rate / ceiling, 3),
                    "fixed_s": round(fixed, 1), "end_to_end_img_s": round(b["rows"] / b["wall_s"], 1),
                    "end_to_end_ratio": round(b["rows"] / b["wall_s"] / ceiling, 3),
                    "sizes": [a["rows"], b["rows"]], "runs_per_size": min(a["n_runs"], b["n_runs"])})
    return out


DESI_ROWS = 8_700_000


def desi_estimate(mg: list[dict], decode_ms: float | None) -> list[str]:
    """How long the 8.7 M-galaxy release takes, from the pipeline's own figures (the default path's marginal
    rate per worker and its fixed cost), on N CPU workers like this machine; GPU rows are assumptions."""
    g = next((x for x in mg if not x["params"] and x["workers"] == 1), None)
    if g is None:
        return []
    # the score stage's marginal bounds the pipeline's (an end-to-end margin above it is the load's noise)
    rate = min(g["marginal_img_s"], g.get("score_marginal_img_s") or g["marginal_img_s"])
    fixed = max(0.0, g["fixed_s"])
    md = ["## The 8.7 M-galaxy (DESI-size) release from these figures", "",
          f"Per worker (this machine's {os.cpu_count()} CPUs): the default path's marginal {rate} img/s (the lower of the "
          f"end-to-end and the score stage's) and a fixed "
          f"{fixed:.0f} s per run; N workers scale linearly only while the release store and the MLflow server keep "
          "up (not measured here: the local runner's workers share this machine's CPUs).", "",
          "| workers | hours |", "|---|---|"]
    for n in (1, 8, 32, 128):
        md.append(f"| {n} CPU worker(s) | {(fixed + DESI_ROWS / (n * rate)) / 3600:.1f} |")
    if decode_ms:
        gpu = 1000.0 / decode_ms * 16 / 2  # a 16-core GPU node decoding at this machine's per-core rate
        md += ["", f"GPU (**assumption, not measured**: no GPU lent to this run): a GPU node's forward pass is far "
               f"above its CPUs' decode, so a node decodes at about this machine's per-core rate x 16 cores "
               f"(decode + checks {decode_ms:.1f} ms per image per 2 cores here: about {gpu:.0f} img/s per node).", "",
               "| GPU nodes (assumed) | hours |", "|---|---|"]
        for n in (1, 8, 32):
            md.append(f"| {n} | {(fixed + DESI_ROWS / (n * gpu)) / 3600:.1f} |")
    return md


def decode_check_ms(images: list[Path], image_size: int = 128, n: int = 200) -> float:
    """ms per image of what the scoring pass does besides the forward: decode, the per-image checks, framing."""
    from galmorph.catalogue.validation import ValidationConfig, check_decoded
    from galmorph.imaging.io import load_image
    from galmorph.imaging.preprocess import prepare_image

    cfg = ValidationConfig()
    t0 = time.perf_counter()
    for p in images[:n]:
        img = load_image(p)
        check_decoded(img, cfg, p.name)
        prepare_image(img, image_size)
    return 1000 * (time.perf_counter() - t0) / n


def rewrite(path: Path) -> str:
    """Write results/rescoring*.{json,md} again from a results JSON (the same runs, this script's tables)."""
    d = json.loads(Path(path).read_text())
    if d.get("kind") == "memory":
        return write_memory(d["machine"], d["runs"], d["model"], complete=d.get("complete", True))
    ctx = {k: d[k] for k in ("machine", "verified_path", "quick", "model_uri", "model")}
    ctx["ceilings"] = d["ceiling_before_after"]
    ctx["stem"] = d.get("stem", "rescoring")
    ctx["model_note"] = d.get("model_note", "")
    return write_results(ctx, d["runs"], d.get("decode_check_ms_per_image"))


def reference_champion(root: Path, tmp: Path, uri: str) -> tuple[str, list[Path], str]:
    """The chirality reference model as a user trains it: ``galmorph train --task chirality --preset reference``
    on the training part of the reference benchmark's split 0 (all its CW/ACW and the preset's sample of
    "other", with the catalogue counts of the training part), registered with the drift reference
    ``galmorph train`` logs, then made champion. Returns its URI, the GZ1 images it did not train on (the
    releases) and a note."""
    import mlflow

    from reference import galmorph, load_task, training_part

    from galmorph.catalogue.manifest import write_manifest
    from galmorph.ops.demo import REAL_N_OTHER
    from galmorph.training.defaults import CATALOGUE_COUNTS_KEY

    train_df, _test, counts = training_part(load_task("chirality", root), "chirality", 0, REAL_N_OTHER)
    man = write_manifest(train_df, tmp / "reference-train.parquet", kind="labelled",
                         extra_meta={CATALOGUE_COUNTS_KEY: counts})
    t0 = time.perf_counter()
    res = galmorph("train", "--task", "chirality", "--preset", "reference", "--manifest", man, "--tracking-uri", uri,
                   "--data-root", root, "--out-dir", tmp / "train")
    minutes = (time.perf_counter() - t0) / 60
    if not res.get("drift_reference"):
        raise SystemExit("galmorph train logged no drift reference")
    mlflow.MlflowClient().set_registered_model_alias(res["registered_name"], "champion", res["registered_version"])
    trained = {Path(u).resolve() for u in train_df["image_uri"]}
    images = [p for p in sorted((root / "gz1_chirality" / "images").glob("*.jp*g")) if p.resolve() not in trained]
    note = (f"trained by `galmorph train --task chirality --preset reference` on {len(train_df)} GZ1 galaxies "
            f"(split 0's training part: every CW/ACW + {REAL_N_OTHER} \"other\") in {minutes:.1f} min, made "
            f"champion; the releases are GZ1 images it did not train on")
    return f"models:/{res['registered_name']}/{res['registered_version']}", images, note


RESNET18 = "resnet18 (untrained, timm), 128 px, one view"


def resnet18_champion(images: list[Path]):
    """An untrained ResNet-18 (seed 0) registered as champion, its drift reference the last 200 ``images`` (kept
    out of the releases): ``(eager module, model URI)``."""
    import timm
    import torch

    torch.manual_seed(0)
    eager = timm.create_model("resnet18", pretrained=False, num_classes=len(CLASSES)).eval()
    return eager, _champion(eager, 128, images[-200:])


def memory_main(a, m: dict, images: list[Path]) -> None:
    """``--memory``: the pipeline with all its defaults at each size, peak memory per task."""
    sizes = [int(x) for x in a.memory.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-rescoring-memory-"))
    uri = _server(tmp)
    _eager, model_uri = resnet18_champion(images)
    verify(model_uri, a.data_root, tmp / "accel")  # as at registration: every run reuses the record
    model = RESNET18
    runs: list[dict] = []
    for n in sizes:
        r = run_once(n, None, images[:-200], tmp, uri, {}, memory=True)
        print(json.dumps({k: v for k, v in r.items() if k != "run_dir"}), flush=True)
        runs.append(r)
        write_memory(m, runs, model, complete=False)
    print(write_memory(m, runs, model, complete=True))


def write_memory(m: dict, runs: list[dict], model: str, complete: bool) -> str:
    """results/rescoring_memory.{json,md}: peak memory per task at each release size."""
    OUT.mkdir(parents=True, exist_ok=True)
    end = os.getloadavg()
    res = {"kind": "memory", "machine": m, "model": model, "load_avg_at_end": [round(x, 2) for x in end],
           "complete": complete, "runs": runs}
    (OUT / "rescoring_memory.json").write_text(json.dumps(res, indent=2, default=str))
    tasks = [t for t in TASKS if any(t.replace("-", "_") in r.get("peak_rss_mb", {}) for r in runs)]
    head = ["rows", "scored", "quarantined", "score work items", "wall s", *[f"{t} MB" for t in tasks]]
    md = [f"# The rescoring pipeline's memory against release size ({model})", "",
          f"Started {m['load_avg_at_start']} load average ({end[0]:.2f} at the end); {m['cpus']} CPUs (memory does "
          "not depend on the load; the wall times are not speed results). `galmorph.ops.run.run_local('rescoring', "
          "...)` with every pipeline default (4 scoring workers, shards of 10 000 rows, the verified path) but "
          "`hold_on_drift=false`, on `folder:` releases of real GZ1 JPEGs repeated under new names. Peak resident "
          f"memory of each task, sampled every {runs[-1].get('sample_s', 0.5) if runs else MEMORY_SAMPLE_S} s; first of "
          "its largest single process (for `score`: one worker or one of its image-decoding processes, forked from it):", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, what in (("peak_process_rss_mb", "largest single process"), ("peak_rss_mb", "all its processes")):
        if key != "peak_process_rss_mb":
            md += ["", f"Summed over all of a task's processes at once (`score`: its concurrent workers, one per work "
                   "item, at most `n_workers`):", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in runs:
            pk = r.get(key, {})
            md.append("| " + " | ".join([f"{r['rows']:,}", str(r["n_scored"]), str(r["n_quarantined"]),
                                         str(r.get("score_work_items", "?")), f"{r['wall_s']:.0f}", *[f"{pk[t.replace('-', '_')]:.0f}"
                                                                 if t.replace("-", "_") in pk else "-"
                                                                 for t in tasks]]) + " |")
        if len(runs) >= 2:
            a, b = runs[0], runs[-1]
            pa, pb = a.get(key, {}), b.get(key, {})
            md.append("| " + " | ".join([f"MB added for {b['rows'] / a['rows']:.0f}× the rows", "", "", "", "",
                                         *[f"{pb[k] - pa[k]:+.0f}" if k in pa and k in pb else "-"
                                           for k in (t.replace("-", "_") for t in tasks)]]) + " |")
            ratios = {t: pb[t] / pa[t] for t in pa if t in pb and pa[t] > 0}
            worst = max(ratios, key=ratios.get) if ratios else None
            if worst:
                md += ["", f"{what[0].upper()}{what[1:]}: from {a['rows']:,} to {b['rows']:,} rows "
                       f"({b['rows'] / a['rows']:.0f}× the rows) the largest peak went {max(pa.values()):.0f} → "
                       f"{max(pb.values()):.0f} MB; the task that grew most is `{worst}`: {pa[worst]:.0f} → "
                       f"{pb[worst]:.0f} MB ({ratios[worst]:.2f}×)."]
    last = runs[-1] if runs else {}
    long = {t: h for t, h in (last.get("halves_mb") or {}).items() if h["samples"] >= HALVES_MIN_SAMPLES}
    if long:
        md += ["", f"Within the {last['rows']:,}-row run, for the tasks whose largest process was sampled at least "
               f"{HALVES_MIN_SAMPLES} times (a shorter one's first half is mostly its start): that process's peak over "
               "the first and the second half of its samples (memory that grows with the rows a process has handled "
               "shows as a higher second half):", "",
               "| task | samples | first half MB | second half MB | second − first MB |", "|---|---|---|---|---|"]
        for t in tasks:
            h = long.get(t.replace("-", "_"))
            if h:
                md.append(f"| {t} | {h['samples']} | {h['first']:.0f} | {h['second']:.0f} | "
                          f"{h['second'] - h['first']:+.0f} |")
    if not complete:
        md += ["", "**Incomplete**: written after each pipeline run; the benchmark had not finished."]
    text = "\n".join(md) + "\n"
    (OUT / "rescoring_memory.md").write_text(text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 and 400 images, one worker count")
    ap.add_argument("--sizes", default="", help="release sizes (default 1000,5000; 1000,4000 with --model reference: "
                                                 "the GZ1 images it did not train on)")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--repeat", type=int, default=None, help="runs of each size and variant, interleaved "
                    "(default 3, 1 with --quick); the marginal rate and the fixed cost come from each size's median "
                    "(one run's figure moved by about 15 %% between quiet runs)")
    ap.add_argument("--data-root", type=Path, default=None)
    ap.add_argument("--rewrite", type=Path, default=None, help="only rewrite the results from this results JSON")
    ap.add_argument("--fp32", action=argparse.BooleanOptionalAction, default=None,
                    help="also run the pipeline with precision=fp32, decode=full (default: not with --quick)")
    ap.add_argument("--model", choices=("resnet18", "reference"), default="resnet18",
                    help="the champion: an untrained ResNet-18 (default) or the chirality reference model, trained "
                         "by `galmorph train` first (results/rescoring_reference.*)")
    ap.add_argument("--memory", default="", help="only the memory run at these sizes (e.g. 20000,200000)")
    a = ap.parse_args()
    if a.rewrite:
        print(rewrite(a.rewrite))
        return
    m = machine()
    from galmorph.settings import get_settings

    root = Path(a.data_root or get_settings().require_data_root())
    a.data_root = root
    images = sorted((root / "gz1_chirality" / "images").glob("*.jp*g"))
    if a.memory:
        memory_main(a, m, images)
        return
    a.fp32 = (not a.quick) if a.fp32 is None else a.fp32
    sizes = [200, 400] if a.quick else [int(x) for x in (a.sizes or ("1000,4000" if a.model == "reference"
                                                                    else "1000,5000")).split(",")]
    workers = [1] if a.quick else [int(x) for x in a.workers.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-rescoring-"))
    uri = _server(tmp)
    stem, note = "rescoring", ""
    if a.model == "reference":
        from galmorph.models.io import load_for_inference

        model_uri, images, note = reference_champion(root, tmp, uri)
        lm = load_for_inference(model_uri)
        eager, size = lm.module, lm.spec.image_size
        model, stem = (f"the chirality reference model ({lm.spec.arch}, {size} px, crop {lm.spec.crop_fraction}, "
                       f"{getattr(lm.spec, 'tta_views', 1) or 1} views)"), "rescoring_reference"
    if len(images) < max(sizes) + (0 if a.model == "reference" else 200):
        raise SystemExit(f"{len(images)} GZ1 images under {root} for the releases; need {max(sizes)}")
    if a.model == "resnet18":
        (eager, model_uri), size, model = resnet18_champion(images), 128, RESNET18
    verified = verify(model_uri, root, tmp / "accel")
    print(json.dumps(verified), flush=True)
    secs = 2.0 if a.quick else 5.0
    c0 = forward_ceiling(eager, size, 64, secs)
    runs: list[dict] = []
    ctx = {"machine": m, "verified_path": verified, "quick": a.quick, "model_uri": model_uri,
           "model": model, "ceilings": [c0], "stem": stem, "model_note": note}
    variants = [(w, {}) for w in workers] + [(workers[0], {"precision": "fp32", "decode": "full"})] * bool(a.fp32)
    a.repeat = (1 if a.quick else 3) if a.repeat is None else a.repeat
    for rep in range(max(1, a.repeat)):
        if rep:  # the ceiling between repeats too: the cores' speed drifts within minutes
            ctx["ceilings"].append(forward_ceiling(eager, size, 64, secs))
        for w, extra in variants:
            for n in sizes:
                r = run_once(n, w, images, tmp, uri, extra, repeat=rep)
                print(json.dumps({k: v for k, v in r.items() if k != "run_dir"}), flush=True)
                runs.append(r)
                write_results(ctx, runs, None)  # what has run so far, should a later run not finish
    ctx["ceilings"].append(forward_ceiling(eager, size, 64, secs))
    print(write_results(ctx, runs, decode_check_ms(images, size)))


def write_results(ctx: dict, runs: list[dict], dms: float | None) -> str:
    """results/rescoring.{json,md} of the runs so far; the ceiling is the mean of those measured (before, after)."""
    m, verified, cs = ctx["machine"], ctx["verified_path"], ctx["ceilings"]
    ceiling = sum(cs) / len(cs)
    mg = margins(runs, ceiling)
    end = os.getloadavg()
    stem = ctx.get("stem", "rescoring")
    res = {**{k: v for k, v in ctx.items() if k != "ceilings"}, "load_avg_at_end": [round(x, 2) for x in end],
           "ceiling_eager_fp32_img_s": round(ceiling, 1), "ceiling_before_after": [round(c, 1) for c in cs],
           "complete": dms is not None, "runs": runs, "margins": mg,
           "decode_check_ms_per_image": round(dms, 2) if dms else None}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{stem}.json").write_text(json.dumps(res, indent=2, default=str))
    after = (f", after {cs[-1]:.1f}" + (f", between repeats {', '.join(f'{c:.1f}' for c in cs[1:-1])}"
                                          if len(cs) > 2 else "")) if len(cs) > 1 else \
        ", after: not measured (the run was stopped)"
    title = "ResNet-18 at 128 px" if stem == "rescoring" else ctx["model"]
    md = [f"# The rescoring pipeline end to end (kfp local runner, defaults), {title}", "",
          *([f"The champion: {ctx['model']}, {ctx['model_note']}.", ""] if ctx.get("model_note") else []),
          quiet_line(m) + f" ({m['load_avg_at_start']}; {end[0]:.2f} at the end); {m['cpus']} CPUs. "
          f"Real GZ1 JPEGs as a `folder:` release; `galmorph.ops.run.run_local('rescoring', ...)` with the "
          f"pipeline's defaults (precision, decode, no cutouts written) but `n_workers`, `shard_size` = rows / "
          f"workers, `hold_on_drift=false`. Eager fp32 forward ceiling of the same network, same run: "
          f"**{ceiling:.1f} img/s** (before {cs[0]:.1f}{after}).", "",
          f"The version's verified path, checked once at registration (as a promotion would) in "
          f"{verified['seconds']} s against fp32 on {verified['agreement_set']}: **{verified['chosen']}** (decode "
          f"{verified['decode']}; refused: {', '.join(verified['refused']) or 'none'}). Every pipeline run reuses it "
          "from the version's record (not in the fixed cost below).", "",
          "Per-task wall seconds (kfp's local log; `score`: the stage's wall time, its workers running at once on "
          "the same CPUs):", "", *_table(runs, ceiling), "",
          "Marginal rate: images between the two sizes over the time between them, end to end (ingest to published "
          "catalogue) and of the score stage alone (less noisy: the other stages' times move with the machine's "
          "load by more than the images add); fixed cost: the smaller run's time beyond its images at the end-to-end "
          "marginal rate. With repeated runs (interleaved), each size's median wall and score-stage times; the "
          "ceiling is the mean of those measured.", "",
          "| workers | params | path used | sizes | runs per size | marginal img/s | marginal / ceiling | score stage "
          "marginal img/s | score / ceiling | fixed s per run | end to end img/s (larger) | end to end / ceiling |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in mg:
        md.append(f"| {g['workers']} | {_params(g['params'])} | {g['precision']} | {g['sizes'][0]} -> {g['sizes'][1]} | "
                  f"{g.get('runs_per_size', 1)} | "
                  f"{g['marginal_img_s']} | **{g['ratio_to_ceiling']:.2f}** | {g['score_marginal_img_s']} | "
                  f"**{g['score_ratio']:.2f}** | **{g['fixed_s']}** | "
                  f"{g['end_to_end_img_s']} | {g['end_to_end_ratio']:.2f} |")
    if dms is None:
        md += ["", "**Incomplete**: written after each pipeline run; the benchmark had not finished."]
    md += ["", *desi_estimate(mg, dms)]
    text = "\n".join(md) + "\n"
    (OUT / f"{stem}.md").write_text(text)
    return text

if __name__ == "__main__":
    main()
