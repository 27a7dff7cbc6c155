"""Soak: a large manifest scored by `galmorph score`, killed with SIGKILL three times at random moments and
resumed, with the MLflow tracking server restarted in the middle (issue #30.3). Writes
results/soak_scoring.{json,md}.

A private MLflow server (`galmorph stack up --service mlflow`, own state folder and port); a tiny CNN
(32 px) logged and registered through the platform's model contract (``galmorph.models.io.log_model``);
a release manifest of ``--rows`` rows cycling over 64 small PNGs under distinct object ids, with one
zero-byte image every 50 000 rows (from row 7: these must end in the quarantine with a reason).

1. Reference: the same `galmorph score` command, uninterrupted, into its own folder.
2. Soak: the command into another folder; SIGKILL when a random number of shards has landed plus a
   random delay (three times: in the first, middle and last third); between the first and second kill the
   MLflow server is stopped and started again (`galmorph stack down/up`) while the command runs; after each
   kill the same command is run again; the last run completes.

Checks: the soak catalogue has every row of the manifest exactly once or the row is in the quarantine with a
reason; rows in + quarantined = rows out; it equals the reference row for row (ids, order, probabilities to
1e-6, predicted class, high-confidence flag); summary.json's counts are those of the files; the scored
release is recorded in MLflow (the run the last command names exists and holds its counts); peak RSS of
each run of the command (process + decode workers) and, for the uninterrupted reference, the first quarter
of its samples against the last.

    uv run python benchmarks/soak_scoring.py [--quick] [--rows 200000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from _common import galmorph_exe, machine
from _soak import PrivateStack, RssSampler, load_line, loadavg

OUT = Path(os.environ.get("GALMORPH_BENCH_OUT") or Path(__file__).resolve().parent / "results")
CLASSES = ["CW", "ACW", "other"]
BROKEN_EVERY, BROKEN_OFFSET = 50_000, 7


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def write_release(tmp: Path, n_rows: int) -> tuple[Path, list[str]]:
    from PIL import Image

    from galmorph.catalogue.manifest import write_manifest

    rng = np.random.default_rng(1)
    d = tmp / "img"
    d.mkdir(parents=True, exist_ok=True)
    pool = []
    for i in range(64):
        p = d / f"t{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
        pool.append(str(p))
    broken = d / "zero.png"
    broken.write_bytes(b"")
    uris = np.array(pool, dtype=object)[np.arange(n_rows) % len(pool)]
    bad = np.arange(BROKEN_OFFSET, n_rows, BROKEN_EVERY)
    uris[bad] = str(broken)
    ids = [f"r{i:07d}" for i in range(n_rows)]
    df = pd.DataFrame({"object_id": ids, "survey": "soak", "ra": 0.0, "dec": 0.0, "z": np.nan, "z_bin": None,
                       "image_uri": uris, "label": None, "task": "chirality", "provenance": "soak"})
    return write_manifest(df, tmp / "release.parquet", kind="release"), [ids[i] for i in bad]


def register(stack: PrivateStack) -> str:
    import mlflow

    from galmorph.models.io import ModelSpec, log_model

    stack.use_here()
    spec = ModelSpec(task="chirality", classes=CLASSES, arch="soak-tiny", image_size=32)
    mlflow.set_experiment("soak-scoring-model")
    with mlflow.start_run(run_name="soak-tiny"):
        info = log_model(Tiny().eval(), spec, registered_model_name="galmorph-soak-scoring")
    return f"models:/galmorph-soak-scoring/{info.registered_model_version}"


def n_done(out: Path) -> int:
    from galmorph.scoring.batch import completed_shards

    return len(completed_shards(out)) if out.exists() else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="5 000 rows (smoke test)")
    ap.add_argument("--rows", type=int, default=None, help="manifest rows [200000; quick 5000]")
    ap.add_argument("--shard-size", type=int, default=None, help="rows per shard [rows / 100]")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    a = ap.parse_args()
    n_rows = a.rows or (5_000 if a.quick else 200_000)
    shard = a.shard_size or max(50, n_rows // 100)
    n_shards = -(-n_rows // shard)
    m = machine()
    load0 = loadavg()
    rng = random.Random(a.seed)
    tmp = Path(tempfile.mkdtemp(prefix="soak-scoring-"))
    stack = PrivateStack(tmp / "state")
    t_up = stack.up()
    events: list[dict] = []
    try:
        man, broken_ids = write_release(tmp, n_rows)
        model = register(stack)
        base = [*galmorph_exe(), "score", "--model", model, "--manifest", str(man), "--batch-size", "256",
                "--shard-size", str(shard), "--num-workers", "1", "--no-progress", "--release", "soak", "--json"]

        def run_to_end(out: Path, tag: str, rss: RssSampler) -> dict:
            t0 = time.perf_counter()
            p = subprocess.Popen([*base, "--out", str(out)], env=stack.env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
            rss.watch(p.pid)
            so, se = p.communicate()
            rss.watch(None)
            dt = time.perf_counter() - t0
            events.append({"run": tag, "pid": p.pid, "rc": p.returncode, "seconds": round(dt, 1),
                           "shards_after": n_done(out)})
            if p.returncode:
                raise RuntimeError(f"{tag}: galmorph score exited {p.returncode}: {se[-3000:]}")
            return {"json": json.loads(so), "seconds": dt, "pid": p.pid}

        # 1. the uninterrupted reference
        ref_dir = tmp / "reference"
        with RssSampler() as rss_ref:
            ref = run_to_end(ref_dir, "reference", rss_ref)
        ref_flat = rss_ref.flatness()

        # 2. the soak: three kills, the server restarted between the first and the second
        soak = tmp / "soak"
        thirds = [(0.05, 0.30), (0.40, 0.62), (0.70, 0.92)]
        targets = [max(1, int(n_shards * rng.uniform(*t))) for t in thirds]
        restart_at = max(targets[0] + 1, int(n_shards * 0.34))
        shard_s = ref["seconds"] / n_shards
        restart: dict = {}
        restarter: threading.Thread | None = None

        def do_restart() -> None:  # in a thread: the kills keep their moments while the server restarts
            restart["at_shards"] = n_done(soak)
            restart["down_s"] = round(stack.down(), 1)
            time.sleep(2.0)  # the server is away while scoring goes on
            restart["up_s"] = round(stack.up(), 1)
            restart["shards_after"] = n_done(soak)

        attempts = []
        with RssSampler() as rss_soak:
            t_soak = time.perf_counter()
            for k, target in enumerate(targets):
                if restarter is not None:
                    restarter.join()  # the model is loaded from the server: it must be back
                t0 = time.perf_counter()
                p = subprocess.Popen([*base, "--out", str(soak)], env=stack.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
                rss_soak.watch(p.pid)
                start_shards = n_done(soak)
                target = max(target, start_shards + 1)
                while p.poll() is None and n_done(soak) < target:
                    if k == 1 and restarter is None and n_done(soak) >= restart_at:
                        restarter = threading.Thread(target=do_restart, daemon=True)
                        restarter.start()
                    time.sleep(0.05)
                delay = rng.uniform(0, shard_s)  # a random moment inside the next shard
                time.sleep(delay)
                killed = p.poll() is None
                if killed:
                    os.kill(p.pid, signal.SIGKILL)
                p.wait()
                if k == 1 and restarter is None:  # the kill came before the restart point: restart between runs
                    restarter = threading.Thread(target=do_restart, daemon=True)
                    restarter.start()
                rss_soak.watch(None)
                attempts.append({"attempt": k, "pid": p.pid, "killed": killed, "rc": p.returncode,
                                 "target_shards": target, "shards_at_start": start_shards,
                                 "shards_at_kill": n_done(soak), "delay_after_target_s": round(delay, 2),
                                 "seconds": round(time.perf_counter() - t0, 1),
                                 "stderr_tail": "" if killed else p.stderr.read()[-1500:]})
                events.append({"run": f"soak-{k}", **attempts[-1]})
            if restarter is not None:
                restarter.join()
            last = run_to_end(soak, "soak-final", rss_soak)
            soak_s = time.perf_counter() - t_soak
    finally:
        try:
            stack.down()
        except Exception as exc:  # noqa: BLE001 - reported, the results stand
            events.append({"run": "stack down", "error": str(exc)})
    load1 = loadavg()

    # ---- checks
    manifest_ids = pd.read_parquet(man, columns=["object_id"])["object_id"].astype(str)
    cat = pd.read_parquet(soak / "catalogue.parquet")
    refc = pd.read_parquet(ref_dir / "catalogue.parquet")
    qpath = soak / "quarantine.parquet"
    quar = pd.read_parquet(qpath) if qpath.exists() else pd.DataFrame({"object_id": [], "reason": []})
    ids = cat["object_id"].astype(str)
    qids = quar["object_id"].astype(str)
    seen = pd.concat([ids, qids])
    missing = sorted(set(manifest_ids) - set(seen))
    dup = int(seen.duplicated().sum())
    extra = sorted(set(seen) - set(manifest_ids))
    reasons_ok = bool(quar["reason"].astype(str).str.len().gt(0).all()) if len(quar) else True
    pcols = [c for c in cat.columns if c.startswith("p_")]
    same_rows = (len(cat) == len(refc) and ids.tolist() == refc["object_id"].astype(str).tolist()
                 and bool(np.allclose(cat[pcols].to_numpy(float), refc[pcols].to_numpy(float), atol=1e-6))
                 and bool((cat["pred"].astype(str) == refc["pred"].astype(str)).all())
                 and bool((cat["high_confidence"] == refc["high_confidence"]).all()))
    summ = json.loads((soak / "summary.json").read_text())
    summary_true = (summ["n_rows"] == n_rows and summ["n_scored"] == len(cat) and summ["n_quarantined"] == len(quar)
                    and summ["duplicate_object_ids"] == 0 and not summ["shards_missing"]
                    and sum(summ["class_counts"].values()) == len(cat))
    fj = last["json"]
    json_true = (fj["summary"]["n_scored"] == len(cat) and fj["summary"]["n_quarantined"] == len(quar)
                 and set(fj["scoring"]["shards_skipped"]) | set(fj["scoring"]["shards_done"]) == set(range(n_shards)))
    mlflow_ok: dict = {}
    try:
        stack.up()
        import mlflow

        r = mlflow.MlflowClient(stack.uri).get_run(fj["mlflow_run_id"]) if fj.get("mlflow_run_id") else None
        mlflow_ok = {"run_id": fj.get("mlflow_run_id"),
                     "n_scored_metric": r.data.metrics.get("n_scored") if r else None,
                     "n_rows_metric": r.data.metrics.get("n_rows") if r else None}
        mlflow_ok["true"] = bool(r and mlflow_ok["n_scored_metric"] == len(cat) and mlflow_ok["n_rows_metric"] == n_rows)
        stack.down()
    except Exception as exc:  # noqa: BLE001
        mlflow_ok = {"error": f"{type(exc).__name__}: {exc}", "true": False}
    soak_flat = rss_soak.flatness()
    peaks = {}
    for pid in [e["pid"] for e in attempts] + [last["pid"]]:
        f = rss_soak.flatness(pid)
        peaks[pid] = f.get("rss_peak_mib")
    res = {
        "machine": m, "quick": a.quick, "load_avg_start": load0, "load_avg_end": load1, "rows": n_rows,
        "shard_size": shard, "shards": n_shards, "broken_rows": len(broken_ids), "stack_up_s": round(t_up, 1),
        "reference": {"seconds": round(ref["seconds"], 1), "img_s": round(n_rows / ref["seconds"], 1), "rss": ref_flat},
        "soak": {"seconds_all_runs": round(soak_s, 1), "attempts": attempts, "final_run_s": round(last["seconds"], 1),
                 "final_shards_skipped": len(fj["scoring"]["shards_skipped"]), "mlflow_restart": restart,
                 "rss_peak_per_run_mib": list(peaks.values()), "rss": soak_flat},
        "kills": sum(x["killed"] for x in attempts),
        "catalogue_rows": int(len(cat)), "quarantined": int(len(quar)),
        "quarantined_are_the_broken_rows": sorted(qids) == sorted(broken_ids), "quarantine_reasons_given": reasons_ok,
        "missing": len(missing), "missing_examples": missing[:10], "duplicated": dup, "unknown_ids": len(extra),
        "identical_to_reference": bool(same_rows), "summary_json_true": bool(summary_true),
        "final_json_true": bool(json_true), "mlflow": mlflow_ok, "events": events,
    }
    res["nothing_lost"] = bool(not missing and dup == 0 and not extra and same_rows and summary_true and json_true
                               and res["quarantined_are_the_broken_rows"] and reasons_ok)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "soak_scoring.json").write_text(json.dumps(res, indent=2, default=str))
    selfend = [f"run {x['attempt']}: {x['rc']}: " + (x["stderr_tail"].strip().splitlines() or [""])[-1][:200]
               .replace("|", "/") for x in attempts if not x["killed"]]
    kills = ", ".join(f"{x['shards_at_kill']}" for x in attempts if x["killed"])
    md = [f"# Soak: {n_rows:,} manifest rows scored through {res['kills']} kill -9 and an MLflow server restart", "",
          load_line(load0, load1) + f" {m['cpus']} CPUs; {m['date']}.", "",
          f"**Nothing lost: {'yes' if res['nothing_lost'] else 'NO'}.** `galmorph score` (tiny CNN at 32 px, "
          f"registered on a private `galmorph stack up` server; batch 256, 1 decode worker, {n_shards} shards of "
          f"{shard:,} rows) killed with SIGKILL after {kills} of {n_shards} shards had landed (plus a random delay "
          f"inside the next shard), the MLflow server stopped and started again (`galmorph stack down/up`) at shard "
          f"{restart.get('at_shards')} while the command ran; after each kill the same command was run again.", "",
          "| figure | value |", "|---|---|",
          f"| manifest rows / catalogue rows / quarantined (zero-byte images planted: {len(broken_ids)}) | "
          f"{n_rows:,} / {len(cat):,} / {len(quar)} |",
          f"| rows missing / duplicated / not of the manifest | {len(missing)} / {dup} / {len(extra)} |",
          f"| quarantined rows are exactly the planted ones, each with a reason | "
          f"{res['quarantined_are_the_broken_rows'] and reasons_ok} |",
          f"| catalogue identical to the uninterrupted reference (ids, order, p to 1e-6, pred, flag) | {same_rows} |",
          f"| summary.json / the last command's --json report true counts | {summary_true} / {json_true} |",
          f"| scored release recorded in MLflow with the true counts (after the restart) | {mlflow_ok.get('true')} |",
          f"| reference (uninterrupted): seconds / img/s | {ref['seconds']:.1f} / {n_rows / ref['seconds']:.1f} |",
          f"| soak: all runs of the command, seconds; shards the last run found complete | {soak_s:.1f}; "
          f"{len(fj['scoring']['shards_skipped'])} of {n_shards} |",
          f"| reference RSS peak; second vs last quarter peak (the first is start-up) | "
          f"{ref_flat.get('rss_peak_mib')} MiB; {ref_flat.get('rss_second_quarter_peak_mib')} vs "
          f"{ref_flat.get('rss_last_quarter_peak_mib')} MiB ({ref_flat.get('rss_growth_last_vs_second_pct')} %) |",
          f"| soak RSS peak of each run of the command | {', '.join(f'{v} MiB' for v in peaks.values())} |",
          f"| runs of the command that ended by themselves before their kill (exit code: last line) | "
          f"{'; '.join(selfend) or 'none'} |", "",
          "RSS is the command's process plus its decode worker. The restart's stop and start took "
          f"{restart.get('down_s')} s and {restart.get('up_s')} s; shards went on landing while the server was away "
          f"({restart.get('at_shards')} -> {restart.get('shards_after')})."]
    (OUT / "soak_scoring.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
