"""Soak: promotions racing from 4 processes against one registry (issue #30.3): `galmorph promote` calls and
direct ``@champion`` moves through ``MlflowClient.set_registered_model_alias`` (the route of the MLflow UI
and API). Writes results/soak_promotions.{json,md}.

A private MLflow server (`galmorph stack up --service mlflow`, own state folder, port and audit log
``<state>/registry/audit.jsonl``); six versions of ``galmorph-soak-promote`` of known quality (models that
read the truth coded in the pixels of a 96-image evaluation set and are wrong on a known fraction: error
rates 20, 15, 10, 6, 3, 1 % for versions 1 to 6), version 1 made champion first. Then 4 worker processes
run ``--ops`` operations in all (a seeded plan: 60 % `galmorph promote --task soak-promote --version V`,
40 % alias moves of ``@champion`` to a random version), each worker one after the other with a random pause,
all four at once. Finally one serial `galmorph promote` of the best version.

What is checked:

* no crash or hang: every `galmorph promote` exits 0, or 1 with one ``error:`` line and no traceback (a lost
  race, an alias found moved after the write, a lock timeout: each counted); every worker finishes;
* the local audit log holds every `galmorph promote` call exactly once (matched by its process id), with the
  decision the command printed (``--json``); a call that exited 1 holds ``lost-race`` or ``inconsistent``;
  MLflow's audit runs (``galmorph-promotion-audit``) hold the same records;
* every champion an audited promotion started from (``champion_before``) is the champion the audited
  decision before it left, or a version an alias move had been issued to before that promotion read the
  registry;
* the final ``@champion`` is the champion the last audited decision left, or the version of an alias move
  that ended after that decision read the registry;
* after the race, a serial `galmorph promote` of the best version leaves it champion (the registry is usable
  and the guard still compares on quality);
* the MLflow server's RSS (sampled every 0.5 s): the last quarter against the first.

    uv run python benchmarks/soak_promotions.py [--quick] [--ops 50]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from _common import galmorph_exe, machine
from _soak import rss_row, PrivateStack, RssSampler, load_line, loadavg, percentiles

OUT = Path(os.environ.get("GALMORPH_BENCH_OUT") or Path(__file__).resolve().parent / "results")
TASK = "soak-promote"
NAME = f"galmorph-{TASK}"
CLASSES = ["symmetric", "lopsided"]
ERROR_RATES = [0.20, 0.15, 0.10, 0.06, 0.03, 0.01]  # versions 1..6: known quality, best last
N_WORKERS = 4
SIZE = 16


def write_coded_set(out: Path, n: int = 96, seed: int = 4) -> Path:
    """PNGs of uniform colour: red = class code, green = a per-object uniform number u, blue = z / 0.2."""
    from galmorph.catalogue.manifest import assign_z_bin, write_manifest
    from galmorph.imaging.io import save_raster

    rng = np.random.default_rng(seed)
    (out / "img").mkdir(parents=True, exist_ok=True)
    k, rows = len(CLASSES), []
    bins = ((0.01, 0.03), (0.03, 0.05), (0.05, 0.07), (0.07, 0.10))
    for i in range(n):
        c = i % k
        u = float(rng.integers(0, 256)) / 255.0
        lo, hi = bins[(i // k) % len(bins)]
        z = float(rng.uniform(lo + 0.2 * (hi - lo), hi - 0.2 * (hi - lo)))
        img = np.empty((SIZE, SIZE, 3), dtype=np.float32)
        img[..., 0], img[..., 1], img[..., 2] = (c + 0.5) / k, u, z / 0.2
        p = out / "img" / f"obj{i:04d}.png"
        save_raster(img, p)
        rows.append({"object_id": f"obj{i:04d}", "survey": "soak", "ra": 10.0 + i * 0.01, "dec": 1.0, "z": z,
                     "image_uri": str(p), "label": CLASSES[c], "task": TASK, "provenance": "coded"})
    df = pd.DataFrame(rows)
    df["z_bin"] = assign_z_bin(df["z"])
    return write_manifest(df, out / "eval.parquet", kind="soak-coded")


def oracle(error_rate: float):
    """Reads the coded pixels: the true class when u >= error_rate, the other class otherwise."""
    import torch
    import torch.nn as nn

    class Oracle(nn.Module):
        def __init__(self):
            super().__init__()
            self.k, self.error_rate = len(CLASSES), float(error_rate)
            self.register_buffer("ar", torch.arange(self.k, dtype=torch.float32))

        def forward(self, x):
            r, g = x[:, 0].mean(dim=(1, 2)), x[:, 1].mean(dim=(1, 2))
            true = torch.clamp(torch.floor(r * self.k), 0, self.k - 1)
            margin = g - self.error_rate + 0.5 / 255
            onehot = (self.ar[None, :] == true[:, None]).float()
            return 8.0 * margin[:, None] * onehot

    return Oracle().eval()


def register_versions(stack: PrivateStack) -> list[str]:
    import mlflow

    from galmorph.models.io import ModelSpec, log_model

    stack.use_here()
    mlflow.set_experiment("soak-promotion-models")
    out = []
    for er in ERROR_RATES:
        spec = ModelSpec(task=TASK, classes=CLASSES, arch=f"oracle-{er:.2f}", image_size=SIZE, in_chans=3)
        with mlflow.start_run(run_name=f"oracle-{er:.2f}"):
            out.append(str(log_model(oracle(er), spec, registered_model_name=NAME).registered_model_version))
    return out


# --------------------------------------------------------------------------------------------
# a worker process
# --------------------------------------------------------------------------------------------
def worker(plan_path: Path, out_path: Path) -> None:
    import mlflow

    plan = json.loads(plan_path.read_text())
    client = mlflow.MlflowClient()
    results = []
    for op in plan["ops"]:
        time.sleep(op["pause"])
        t0 = time.time()
        if op["kind"] == "alias":
            try:
                client.set_registered_model_alias(NAME, "champion", op["version"])
                err = None
            except Exception as exc:  # noqa: BLE001 - recorded
                err = f"{type(exc).__name__}: {exc}"
            results.append({**op, "t0": t0, "t1": time.time(), "error": err})
            continue
        p = subprocess.Popen([*galmorph_exe(), "promote", "--task", TASK, "--version", op["version"], "--manifest",
                              plan["manifest"], "--out", plan["out"], "--json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        try:
            so, se = p.communicate(timeout=plan["timeout"])
            hung = False
        except subprocess.TimeoutExpired:
            p.kill()
            so, se = p.communicate()
            hung = True
        results.append({**op, "t0": t0, "t1": time.time(), "pid": p.pid, "rc": p.returncode, "hung": hung,
                        "stdout": so[-20000:], "stderr": se[-3000:]})
    out_path.write_text(json.dumps(results))


def _ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _decision(stdout: str) -> dict:
    try:
        return json.loads(stdout)
    except ValueError:
        return {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 operations (smoke test)")
    ap.add_argument("--ops", type=int, default=None, help="operations in all [50; quick 8]")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800.0, help="a `galmorph promote` call longer than this hangs")
    ap.add_argument("--worker", nargs=2, type=Path, metavar=("PLAN", "OUT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        worker(*a.worker)
        return
    n_ops = a.ops or (8 if a.quick else 50)
    m = machine()
    load0 = loadavg()
    rng = random.Random(a.seed)
    tmp = Path(tempfile.mkdtemp(prefix="soak-promotions-"))
    stack = PrivateStack(tmp / "state")
    audit_path = tmp / "state" / "registry" / "audit.jsonl"
    stack.up()
    try:
        manifest = write_coded_set(tmp / "coded")
        versions = register_versions(stack)
        promote = [*galmorph_exe(), "promote", "--task", TASK, "--manifest", str(manifest), "--out",
                   str(tmp / "reports"), "--json"]
        first = subprocess.run([*promote, "--version", versions[0]], env=stack.env, capture_output=True, text=True)
        if first.returncode:
            raise RuntimeError(f"first promotion failed: {first.stderr[-2000:]}")
        ops = [{"kind": "cli" if rng.random() < 0.6 else "alias", "version": rng.choice(versions),
                "pause": round(rng.uniform(0, 2.0), 2)} for _ in range(n_ops)]
        procs, outs = [], []
        with RssSampler(stack.server_pid(), every=0.5) as rss:
            t0 = time.time()
            for w in range(N_WORKERS):
                mine = [{**op, "i": i, "worker": w} for i, op in enumerate(ops) if i % N_WORKERS == w]
                plan = tmp / f"plan{w}.json"
                plan.write_text(json.dumps({"ops": mine, "manifest": str(manifest), "out": str(tmp / "reports"),
                                            "timeout": a.timeout}))
                outs.append(tmp / f"worker{w}.json")
                fh = open(tmp / f"worker{w}.log", "w")
                procs.append((subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", str(plan),
                                                str(outs[-1])], env=stack.env, stdout=fh, stderr=subprocess.STDOUT),
                              fh))
            worker_rc = []
            for p, fh in procs:
                try:
                    worker_rc.append(p.wait(timeout=a.timeout * (n_ops // N_WORKERS + 1)))
                except subprocess.TimeoutExpired:
                    p.kill()
                    worker_rc.append("hung")
                fh.close()
            wall = time.time() - t0
        final_aliases = _aliases(stack)
        # after the race: a serial promotion of the best version
        best = versions[-1]
        ap_ = subprocess.Popen([*promote, "--version", best], env=stack.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        so, se = ap_.communicate(timeout=a.timeout)
        after = subprocess.CompletedProcess(ap_.args, ap_.returncode, so, se)
        after_pid = ap_.pid
        after_aliases = _aliases(stack)
        mlflow_audit = _mlflow_audit(stack)
    finally:
        stack.down()
    load1 = loadavg()

    # ---- checks
    from galmorph.promotion.audit import read_audit

    done = [r for o in outs if o.exists() for r in json.loads(o.read_text())]
    cli = [r for r in done if r["kind"] == "cli"]
    moves = [r for r in done if r["kind"] == "alias"]
    audit = read_audit(audit_path)
    race = [e for e in audit if e["pid"] in {r["pid"] for r in cli}]
    by_pid = pd.Series([e["pid"] for e in audit]).value_counts().to_dict()
    outcome = {"exit0": 0, "lost-race": 0, "inconsistent": 0, "lock": 0, "other": 0}
    unclean, audit_wrong = [], []
    for r in cli:
        entries = [e for e in audit if e["pid"] == r["pid"]]
        err = [ln for ln in r["stderr"].splitlines() if ln.startswith("error:")]
        if r["rc"] == 0:
            outcome["exit0"] += 1
            ok = len(entries) == 1 and entries[0]["decision"] == _decision(r["stdout"]).get("decision")
        elif r["rc"] == 1 and err and "Traceback" not in r["stderr"]:
            kind = ("lost-race" if "lost a race" in err[0] else "inconsistent" if "expected v" in err[0] else
                    "lock" if "lock" in err[0] else "other")
            outcome[kind] += 1
            ok = (len(entries) == 1 and entries[0]["decision"] in ("lost-race", "inconsistent")) if kind in (
                "lost-race", "inconsistent") else len(entries) <= 1
        else:
            unclean.append({k: r[k] for k in ("i", "version", "rc", "hung", "stderr")})
            ok = False
        if not ok:
            audit_wrong.append({"pid": r["pid"], "rc": r["rc"], "entries": len(entries),
                                "printed": _decision(r["stdout"]).get("decision") or r["stderr"][-300:]})
    # the champion each audited promotion started from is explained
    unexplained = []
    prev = None
    for e in audit:
        if prev is not None and e["champion_before"] != prev["champion_after"]:
            t = _ts(e["timestamp"])
            if not any(mv["version"] == e["champion_before"] and mv["t0"] <= t + 0.5 for mv in moves):
                unexplained.append({"pid": e["pid"], "decision": e["decision"], "before": e["champion_before"],
                                    "previous_after": prev["champion_after"]})
        prev = e
    before_after = [e for e in audit if e["pid"] != after_pid]
    last = before_after[-1] if before_after else None
    final = final_aliases.get("champion")
    later_moves = {mv["version"] for mv in moves if last and mv["t1"] >= _ts(last["timestamp"]) - 0.5}
    final_ok = bool(last and (final == last["champion_after"] or final in later_moves))
    after_dec = _decision(after.stdout).get("decision")
    after_ok = after.returncode == 0 and after_aliases.get("champion") == best and after_dec in ("promoted",
                                                                                               "already-champion")
    ml_pids = pd.Series([r.get("pid") for r in mlflow_audit]).value_counts().to_dict() if mlflow_audit else {}
    mlflow_same = all(ml_pids.get(e["pid"], 0) == by_pid.get(e["pid"], 0) for e in audit) and len(mlflow_audit) == len(
        audit)
    flat = rss.flatness()
    cli_lat = percentiles([1000 * (r["t1"] - r["t0"]) for r in cli])
    mv_lat = percentiles([1000 * (r["t1"] - r["t0"]) for r in moves])
    decisions = pd.Series([e["decision"] for e in race]).value_counts().to_dict()
    res = {
        "machine": m, "quick": a.quick, "load_avg_start": load0, "load_avg_end": load1, "ops": n_ops,
        "workers": N_WORKERS, "versions": dict(zip(versions, ERROR_RATES)), "wall_s": round(wall, 1),
        "worker_exit": worker_rc, "ops_done": len(done), "cli_calls": len(cli), "alias_moves": len(moves),
        "alias_move_errors": [r["error"] for r in moves if r["error"]], "ops_per_s": round(len(done) / wall, 3),
        "cli_latency": cli_lat, "alias_latency": mv_lat, "cli_outcomes": outcome, "decisions": decisions,
        "unclean_exits": unclean, "audit_mismatches": audit_wrong,
        "audit_entries_per_cli_call_all_one": not audit_wrong, "champion_before_unexplained": unexplained,
        "final_champion": final, "last_audited_champion": last["champion_after"] if last else None,
        "later_alias_moves_to": sorted(later_moves), "final_champion_explained": final_ok,
        "after_race": {"rc": after.returncode, "decision": after_dec, "aliases": after_aliases, "ok": after_ok,
                       "stderr": after.stderr[-500:] if after.returncode else ""},
        "mlflow_audit_records": len(mlflow_audit), "local_audit_records": len(audit),
        "mlflow_audit_same_records": bool(mlflow_same), "mlflow_server_rss": flat,
    }
    res["nothing_lost"] = bool(len(done) == n_ops and all(rc == 0 for rc in worker_rc) and not unclean
                               and not audit_wrong and not unexplained and final_ok and after_ok and mlflow_same
                               and not res["alias_move_errors"])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "soak_promotions.json").write_text(json.dumps(res, indent=2, default=str))
    md = [f"# Soak: {n_ops} promotions racing from {N_WORKERS} processes (`galmorph promote` and alias moves)", "",
          load_line(load0, load1) + f" {m['cpus']} CPUs; {m['date']}.", "",
          f"**Nothing lost: {'yes' if res['nothing_lost'] else 'NO'}.** One registry on a private `galmorph stack up` "
          f"server; versions 1-6 of known quality (error rates {', '.join(f'{e:.0%}' for e in ERROR_RATES)}), v1 "
          f"champion first; {len(cli)} `galmorph promote` calls and {len(moves)} `@champion` moves through "
          "`MlflowClient.set_registered_model_alias`, spread over 4 worker processes running at once.", "",
          "| figure | value |", "|---|---|",
          f"| operations done / workers finished cleanly | {len(done)} of {n_ops} / "
          f"{sum(rc == 0 for rc in worker_rc)} of {N_WORKERS} |",
          f"| wall time; operations/s | {wall:.1f} s; {res['ops_per_s']} |",
          f"| `galmorph promote` latency p50 / p99 / max | {cli_lat.get('p50_ms')} / {cli_lat.get('p99_ms')} / "
          f"{cli_lat.get('max_ms')} ms |",
          f"| alias move latency p50 / p99 / max | {mv_lat.get('p50_ms')} / {mv_lat.get('p99_ms')} / "
          f"{mv_lat.get('max_ms')} ms |",
          f"| `galmorph promote` exits: 0 / lost race / alias moved after the write / lock / other | "
          f"{outcome['exit0']} / {outcome['lost-race']} / {outcome['inconsistent']} / {outcome['lock']} / "
          f"{outcome['other']} |",
          f"| exits neither 0 nor a clean 1 (traceback, signal, hang) | {len(unclean)} |",
          f"| audited decisions of the race | {', '.join(f'{k} {v}' for k, v in sorted(decisions.items()))} |",
          f"| calls not in the audit log exactly once with the printed decision | {len(audit_wrong)} |",
          f"| MLflow audit runs hold the same records as the local log | {mlflow_same} ({len(mlflow_audit)} / "
          f"{len(audit)}) |",
          f"| champion_before neither the previous decision's champion nor an issued alias move | {len(unexplained)} |",
          f"| final @champion v{final}: the last audited decision's (v{res['last_audited_champion']}) or a later alias "
          f"move's | {final_ok} |",
          f"| after the race, `galmorph promote` of the best version v{best}: {after_dec}, champion "
          f"v{after_aliases.get('champion')} | {after_ok} |",
          rss_row("MLflow server", flat), "",
          "A call is matched to its audit record by process id. \"Lost race\": the champion moved while the "
          "candidate was evaluated, nothing written (exit 1); \"alias moved after the write\": the aliases read back "
          "were not those written (recorded as `inconsistent`, exit 1). Promotions are serialised by the "
          "registry's lock, which alias moves through the MLflow API do not take: those are the races measured."]
    (OUT / "soak_promotions.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


def _aliases(stack: PrivateStack) -> dict:
    import mlflow

    return dict(mlflow.MlflowClient(stack.uri).get_registered_model(NAME).aliases)


def _mlflow_audit(stack: PrivateStack) -> list[dict]:
    from galmorph.promotion.audit import read_mlflow_audit

    try:
        return read_mlflow_audit(NAME)
    except Exception:  # noqa: BLE001 - counted as a mismatch
        return []


if __name__ == "__main__":
    main()
