"""Soak: 4 labellers post labels to the real label server while exports run (issue #30.3). Writes
results/soak_labels.{json,md}.

`galmorph label serve --auth token` on a queue of ``labels / 4`` objects (one small image shared by all
rows), four `galmorph label token add` labellers, each a thread with its own token and keep-alive
connection posting every object of the queue once (a shuffled order, a random class label) at a paced rate
so that all labels go out over ``--seconds``; meanwhile `galmorph label export --policy latest` runs again
and again into numbered files. Afterwards, from the label database and the export files:

* every accepted POST (200) is in the store exactly once: one ``labels`` row per (labeller, object) with the
  posted label and exactly one ``set`` event; nothing refused or unanswered is there unless the outcome was
  unknown (a broken connection, counted apart); no event of a (labeller, object) twice;
* each export is a consistent snapshot: its (object, labeller) votes are exactly the first K ``set`` events
  of the store (K = its number of votes), and its label counts agree with those events; exports grow;
* the last export (after the labellers stop) equals the store;
* the server's RSS (sampled every 0.5 s) in the last quarter against the first.

    uv run python benchmarks/soak_labels.py [--quick] [--labels 20000] [--seconds 600]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

from _common import galmorph_exe, machine
from _soak import rss_row, RssSampler, free_port, load_line, loadavg, percentiles

OUT = Path(os.environ.get("GALMORPH_BENCH_OUT") or Path(__file__).resolve().parent / "results")
TASK = "lopsided"
CLASSES = ("symmetric", "lopsided")
N_LABELLERS = 4


def write_queue_file(tmp: Path, n: int) -> Path:
    from PIL import Image

    from galmorph.labelling.queue import write_queue

    img = tmp / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(img)
    q = pd.DataFrame({"object_id": [f"s{i:06d}" for i in range(n)], "survey": "soak", "ra": 0.0, "dec": 0.0,
                      "z": 0.05, "z_bin": "0.04-0.06", "image_uri": str(img), "label": None, "task": TASK,
                      "provenance": "soak", "queue_bin": [f"bin{i % 4}" for i in range(n)],
                      "queue_position": np.arange(n)})
    return write_queue(q, tmp / "queue.parquet", {"soak": True, "n": n})


class Labeller(threading.Thread):
    def __init__(self, name: str, token: str, port: int, ids: list[str], interval: float, t_start: float, seed: int,
                 t_stop: float):
        super().__init__(daemon=True)
        self.t_stop = t_stop
        self.name_, self.token, self.port, self.interval, self.t_start = name, token, port, interval, t_start
        rng = random.Random(seed)
        self.plan = [(oid, rng.choice(CLASSES)) for oid in rng.sample(ids, len(ids))]
        self.results: list[dict] = []  # object_id, label, status (int, or "error: ..."), ms, t

    def _conn(self):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)

    def run(self) -> None:
        conn = self._conn()
        headers = {"Host": f"127.0.0.1:{self.port}", "Authorization": f"Bearer {self.token}",
                   "Content-Type": "application/json", "X-Requested-With": "galmorph"}
        for i, (oid, label) in enumerate(self.plan):
            due = self.t_start + i * self.interval
            now = time.time()
            if due > now:
                time.sleep(due - now)
            if time.time() > self.t_stop:  # the wall-clock limit: the rest is not sent (reported)
                break
            body = json.dumps({"object_id": oid, "label": label}).encode()
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/api/label", body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
                status: int | str = r.status
                if status == 200:
                    saved = json.loads(data)["saved"]
                    if saved["object_id"] != oid or saved["label"] != label or saved["labeller"] != self.name_:
                        status = f"wrong echo {saved}"
            except (OSError, http.client.HTTPException) as exc:
                status = f"error: {type(exc).__name__}: {exc}"
                conn.close()
                conn = self._conn()
            self.results.append({"object_id": oid, "label": label, "status": status,
                                 "ms": 1000 * (time.perf_counter() - t0), "t": time.time()})
        conn.close()


def exporter(db: str, queue: Path, out_dir: Path, stop: threading.Event, log: list[dict]) -> None:
    i = 0
    while not stop.is_set():
        out = out_dir / f"export-{i:04d}.parquet"
        t0 = time.perf_counter()
        r = subprocess.run([*galmorph_exe(), "label", "export", "--db", db, "--out", str(out), "--queue", str(queue),
                            "--policy", "latest"], capture_output=True, text=True)
        log.append({"i": i, "path": str(out), "rc": r.returncode, "s": round(time.perf_counter() - t0, 2),
                    "stderr": r.stderr[-500:] if r.returncode else ""})
        i += 1


def check_export(path: Path, set_events: pd.DataFrame) -> dict:
    """One export against the store's ``set`` events (in id = commit order)."""
    ex = pd.read_parquet(path)
    votes = {(o, who) for o, ls in zip(ex["object_id"].astype(str), ex["labellers"].astype(str)) for who in ls.split(",")
             if who}
    k = len(votes)
    prefix = set_events.iloc[:k]
    prefix_pairs = set(zip(prefix.object_id, prefix.labeller))
    counts_ok = True
    if k:
        want = prefix.groupby("object_id").label.value_counts().unstack(fill_value=0)
        got = ex.set_index("object_id")[[f"n_{c}" for c in CLASSES]].rename(columns=lambda c: c[2:])
        want = want.reindex(index=got.index, columns=list(CLASSES), fill_value=0)
        counts_ok = bool((want.to_numpy() == got.to_numpy()).all())
    return {"rows": int(len(ex)), "votes": k, "prefix_of_events": prefix_pairs == votes, "counts_agree": counts_ok,
            "unique_objects": bool(ex["object_id"].is_unique)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="400 labels over 30 s (smoke test)")
    ap.add_argument("--labels", type=int, default=None, help="labels in all [20000; quick 400]")
    ap.add_argument("--seconds", type=float, default=None, help="pace the labels over this long [600; quick 30]")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="stop sending after this long, whatever is left (reported) [2 x --seconds]")
    a = ap.parse_args()
    n_labels = a.labels or (400 if a.quick else 20_000)
    seconds = a.seconds or (30.0 if a.quick else 600.0)
    n_obj = n_labels // N_LABELLERS
    max_seconds = a.max_seconds or 2 * seconds
    m = machine()
    load0 = loadavg()
    from galmorph.labelling.store import LabelStore

    tmp = Path(tempfile.mkdtemp(prefix="soak-labels-"))
    queue = write_queue_file(tmp, n_obj)
    db = f"sqlite:///{tmp / 'labels.db'}"
    names = [f"labeller{i}" for i in range(N_LABELLERS)]
    tokens = {}
    for n in names:  # the labellers' tokens, as an admin makes them
        r = subprocess.run([*galmorph_exe(), "label", "token", "add", n, "--db", db], capture_output=True, text=True,
                           check=True)
        tokens[n] = r.stdout.strip()
    port = free_port()
    log_path = tmp / "serve.log"
    with open(log_path, "w") as fh:
        server = subprocess.Popen([*galmorph_exe(), "label", "serve", "--queue", str(queue), "--db", db, "--auth", "token",
                                   "--host", "127.0.0.1", "--port", str(port)], stdout=fh, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 180
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/healthz", headers={"Host": f"127.0.0.1:{port}"})
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"label server did not start: {log_path.read_text()[-2000:]}")
            time.sleep(0.5)
        ids = [f"s{i:06d}" for i in range(n_obj)]
        interval = seconds / n_obj
        exports_dir = tmp / "exports"
        exports_dir.mkdir()
        ex_log: list[dict] = []
        stop = threading.Event()
        with RssSampler(server.pid, every=0.5) as rss:
            t_start = time.time() + 1.0
            lab = [Labeller(n, tokens[n], port, ids, interval, t_start + k * interval / N_LABELLERS, seed=k,
                            t_stop=t_start + max_seconds)
                   for k, n in enumerate(names)]
            ex_th = threading.Thread(target=exporter, args=(db, queue, exports_dir, stop, ex_log), daemon=True)
            ex_th.start()
            for t in lab:
                t.start()
            for t in lab:
                t.join()
            t_end = time.time()
            stop.set()
            ex_th.join()
        # the final export, after every labeller stopped
        final = tmp / "final.parquet"
        rfin = subprocess.run([*galmorph_exe(), "label", "export", "--db", db, "--out", str(final), "--queue",
                               str(queue), "--policy", "latest"], capture_output=True, text=True)
        server_alive = server.poll() is None
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
    load1 = loadavg()
    wall = t_end - t_start

    # ---- checks
    store = LabelStore(db)
    ev = store.events()
    sets = ev[ev.action == "set"].sort_values("id").reset_index(drop=True)
    labels = store.labels(TASK)
    res_rows = [{"labeller": t.name_, **r} for t in lab for r in t.results]
    rr = pd.DataFrame(res_rows)
    rr["status_s"] = rr["status"].astype(str)
    ok = rr[rr.status_s == "200"]
    unknown = rr[rr.status_s.str.startswith("error")]
    refused = rr[~rr.index.isin(ok.index) & ~rr.index.isin(unknown.index)]
    cur = {(o, w): lb for o, w, lb in zip(labels.object_id, labels.labeller, labels.label)}
    ev_count = sets.groupby(["object_id", "labeller"]).size()
    lost = [(r.object_id, r.labeller) for r in ok.itertuples() if cur.get((r.object_id, r.labeller)) != r.label
            or ev_count.get((r.object_id, r.labeller), 0) != 1]
    duplicated = int((ev_count > 1).sum())
    refused_in_store = [(r.object_id, r.labeller) for r in refused.itertuples() if (r.object_id, r.labeller) in cur]
    unknown_saved = sum((r.object_id, r.labeller) in cur for r in unknown.itertuples())
    extra = len(cur) - len(ok) - unknown_saved  # store rows no POST accounts for
    exports = []
    for e in ex_log:
        if e["rc"] == 0:
            exports.append({**e, **check_export(Path(e["path"]), sets)})
        else:
            exports.append(e)
    grow = [e["votes"] for e in exports if e["rc"] == 0]
    fin = check_export(final, sets) if rfin.returncode == 0 else {"error": rfin.stderr[-500:]}
    final_equals_store = rfin.returncode == 0 and fin["votes"] == len(cur) == len(sets) and fin["prefix_of_events"]
    flat = rss.flatness()
    lat = percentiles(ok["ms"].tolist())
    by_t = ok.sort_values("t")["ms"].to_numpy()
    qn = max(1, len(by_t) // 4)
    lat_q = [round(float(np.median(by_t[:qn])), 1), round(float(np.median(by_t[-qn:])), 1)] if len(by_t) else [None, None]
    res = {
        "machine": m, "quick": a.quick, "load_avg_start": load0, "load_avg_end": load1,
        "target": {"labels": n_labels, "seconds": seconds, "labellers": N_LABELLERS, "objects": n_obj,
                   "max_seconds": max_seconds},
        "not_sent_at_the_limit": int(n_labels - len(rr)),
        "wall_s": round(wall, 1), "posts": int(len(rr)), "accepted": int(len(ok)), "refused": int(len(refused)),
        "refused_statuses": refused.status_s.value_counts().to_dict(), "unknown_outcome": int(len(unknown)),
        "unknown_outcome_saved": int(unknown_saved), "requests_per_s": round(len(rr) / wall, 2),
        "accepted_per_s": round(len(ok) / wall, 2), "latency": lat,
        "latency_p50_first_last_quarter_ms": lat_q,
        "store": {"labels": len(cur), "set_events": int(len(sets)), "events": int(len(ev))},
        "lost": len(lost), "lost_examples": lost[:10], "duplicated": duplicated,
        "refused_but_in_store": len(refused_in_store), "store_rows_unaccounted": int(extra),
        "exports": {"n": len(exports), "ok": sum(e["rc"] == 0 for e in exports),
                    "failed": [e for e in exports if e["rc"] != 0][:5],
                    "all_prefix_of_events": all(e.get("prefix_of_events", False) for e in exports if e["rc"] == 0),
                    "all_counts_agree": all(e.get("counts_agree", False) for e in exports if e["rc"] == 0),
                    "all_unique": all(e.get("unique_objects", False) for e in exports if e["rc"] == 0),
                    "grow": grow == sorted(grow), "votes": grow, "seconds": [e["s"] for e in exports]},
        "final_export": fin, "final_export_equals_store": bool(final_equals_store), "server_alive_at_end": server_alive,
        "server_rss": flat,
    }
    res["nothing_lost"] = bool(res["lost"] == 0 and res["duplicated"] == 0 and res["refused_but_in_store"] == 0
                               and extra == 0 and final_equals_store and res["exports"]["all_prefix_of_events"]
                               and res["exports"]["all_counts_agree"] and res["exports"]["grow"])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "soak_labels.json").write_text(json.dumps(res, indent=2, default=str))
    ex = res["exports"]
    md = [f"# Soak: {N_LABELLERS} labellers, {n_labels:,} labels paced over {seconds:.0f} s, exports running", "",
          load_line(load0, load1) + f" {m['cpus']} CPUs; {m['date']}.", "",
          f"**Nothing lost: {'yes' if res['nothing_lost'] else 'NO'}.** `galmorph label serve --auth token` on a "
          f"queue of {n_obj:,} objects; each labeller (own token, own keep-alive connection) posts every object "
          f"once; `galmorph label export --policy latest` ran {ex['n']} times meanwhile.", "",
          "| figure | value |", "|---|---|",
          f"| POSTs sent of {n_labels:,} planned (sending stops after {max_seconds:.0f} s) / accepted (200) / refused / "
          f"outcome unknown | {len(rr):,} / {len(ok):,} / {len(refused)} / {len(unknown)} |",
          f"| wall time | {wall:.1f} s |",
          f"| requests/s (all POSTs) | {res['requests_per_s']} |",
          f"| latency p50 / p99 / max (accepted) | {lat.get('p50_ms')} / {lat.get('p99_ms')} / {lat.get('max_ms')} ms |",
          f"| latency p50 of the first / last quarter of the accepted POSTs | {lat_q[0]} / {lat_q[1]} ms |",
          f"| store: label rows / set events | {len(cur):,} / {len(sets):,} |",
          f"| accepted POSTs missing or wrong in the store | {res['lost']} |",
          f"| (labeller, object) with more than one event | {duplicated} |",
          f"| refused POSTs found in the store / store rows no POST accounts for | {len(refused_in_store)} / {extra} |",
          f"| exports ok / each a prefix of the event history / label counts agree / growing | {ex['ok']} of {ex['n']} "
          f"/ {ex['all_prefix_of_events']} / {ex['all_counts_agree']} / {ex['grow']} |",
          f"| last export (labellers stopped) equals the store | {final_equals_store} |",
          rss_row("server", flat), "",
          "A label is in the store exactly once when its (labeller, object) has one `labels` row holding the posted "
          "label and one `set` event. An export is consistent when its votes (object, labeller) are exactly the "
          "first K `set` events in commit order (K = its number of votes) and its per-class counts are those "
          "events' counts. The labellers were paced at the target rate; where the server could not keep up, "
          "the wall time shows it."]
    (OUT / "soak_labels.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
