"""Promotion against the real local MLflow server: first model, pass, fail (challenger + reasons, via the
CLI), redshift-bin guard, mirror-test guard for chirality-equivariant models, rollback, two concurrent
promotions with different audit logs (one registry, one lock), and a promotion that loses a race."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from galmorph.promotion.registry import (CHALLENGER, CHAMPION, LOCK_URL_ENV, PREVIOUS, PromotionError, PromotionPolicy,
                                        aliases, promote, read_audit, registry_lock, rollback, select_lock)
from test_eval_support import ChiralityCE, OracleNet, TinyCNN, log_test_model, write_coded_dataset

CLASSES = ["symmetric", "lopsided"]
FAST = {"log_evaluations": False, "evaluate_kwargs": {"html": False}}  # keep the registry work, skip the reports


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    path, truth = write_coded_dataset(tmp_path_factory.mktemp("coded"), CLASSES, n=64, seed=4)
    return path


def _register(task, net, **kw):
    from galmorph.models.io import registered_name

    info = log_test_model(net, task, kw.pop("classes", CLASSES), kw.pop("size", 16), registered_name=registered_name(task),
                          **kw)
    return str(info.registered_model_version)


def _tags(task, version):
    import mlflow

    from galmorph.models.io import registered_name

    return mlflow.MlflowClient().get_model_version(registered_name(task), version).tags


def test_first_champion_pass_and_rollback(mlflow_server, coded, tmp_path):
    # (#26) the first champion must beat chance on the 64 held-out galaxies: 80 % right, not 65 %
    task = "ptest-pass"
    audit = tmp_path / "audit.jsonl"
    v1 = _register(task, OracleNet(2, error_rate=0.2))
    v2 = _register(task, OracleNet(2, error_rate=0.02))
    d1 = promote(task, v1, eval_manifest=coded, audit_log=audit, out_dir=tmp_path / "p")
    assert d1.decision == "first-champion" and d1.champion_after == v1 and d1.passed
    d2 = promote(task, None, eval_manifest=coded, audit_log=audit, out_dir=tmp_path / "p")  # latest = v2
    assert d2.candidate_version == v2 and d2.decision == "promoted", d2.reasons
    assert d2.checks["primary"]["improvement"] > 0.1
    al = aliases("galmorph-" + task)
    assert al[CHAMPION] == v2 and al[PREVIOUS] == v1 and CHALLENGER not in al
    t2, t1 = _tags(task, v2), _tags(task, v1)
    assert t2["galmorph.decision"] == "promoted" and t1["galmorph.decision"] == "superseded"
    assert json.loads(t2["galmorph.decision_metrics"])["f1_macro"] > json.loads(t1["galmorph.decision_metrics"])["f1_macro"]
    assert t1["galmorph.superseded_by"] == v2
    assert any(k.startswith("galmorph.audit.") for k in t2)
    # the same version again is a no-op, recorded
    assert promote(task, v2, eval_manifest=coded, audit_log=audit, **FAST).decision == "already-champion"
    # rollback restores the previous champion and records it
    r = rollback(task, audit_log=audit, reason="test")
    assert r.champion_before == v2 and r.champion_after == v1
    al = aliases("galmorph-" + task)
    assert al[CHAMPION] == v1 and PREVIOUS not in al
    assert _tags(task, v2)["galmorph.decision"] == "rolled-back"
    with pytest.raises(PromotionError, match="nothing to roll back"):
        rollback(task, audit_log=audit)
    log = read_audit(audit)
    assert [e["decision"] for e in log] == ["first-champion", "promoted", "already-champion", "rolled-back"]
    assert log[1]["candidate_metrics"]["f1_macro"] == pytest.approx(d2.candidate_metrics["f1_macro"])


def test_promote_fail_sets_challenger_and_prints_reasons(mlflow_server, coded, tmp_path):
    from galmorph.cli import main

    task = "ptest-fail"
    audit = tmp_path / "audit.jsonl"
    v1 = _register(task, OracleNet(2, error_rate=0.1))
    v2 = _register(task, OracleNet(2, error_rate=0.3))
    runner = CliRunner()
    res = runner.invoke(main, ["promote", "--task", task, "--version", v1, "--manifest", str(coded),
                               "--audit-log", str(audit), "--out", str(tmp_path / "p")])
    assert res.exit_code == 0, res.output
    assert "first-champion" in res.output
    res = runner.invoke(main, ["promote", "--task", task, "--version", v2, "--manifest", str(coded), "--delta", "0.01",
                               "--audit-log", str(audit), "--out", str(tmp_path / "p"), "--fail-on-reject"])
    assert res.exit_code == 3, res.output
    assert "rejected" in res.output and "f1_macro" in res.output and "delta=0.01" in res.output
    al = aliases("galmorph-" + task)
    assert al[CHAMPION] == v1 and al[CHALLENGER] == v2 and PREVIOUS not in al
    t = _tags(task, v2)
    assert t["galmorph.decision"] == "rejected" and "f1_macro" in t["galmorph.decision_reasons"]
    assert "rejected" in _tags(task, v1)["galmorph.last_defended"]
    entries = read_audit(audit)
    assert entries[-1]["decision"] == "rejected" and entries[-1]["champion_after"] == v1
    assert entries[-1]["reasons"]


def test_a_new_champion_has_its_inference_path_checked_once_and_scoring_uses_it(mlflow_server, coded, tmp_path,
                                                                                 monkeypatch):
    """#31: the verified inference path is checked against fp32 when a version becomes champion (not when it is
    refused) and recorded on the version; `galmorph score` with its defaults then uses it without a check."""
    import galmorph.scoring.accel as accel
    from galmorph.cli import main

    task = "ptest-path"
    good = _register(task, OracleNet(2, error_rate=0.02))
    assert f"{accel.VERIFIED_TAG}.cpu" not in _tags(task, good)
    assert promote(task, good, eval_manifest=coded, audit_log=tmp_path / "a.jsonl", **FAST).decision == "first-champion"
    rec = json.loads(_tags(task, good)[f"{accel.VERIFIED_TAG}.cpu"])
    assert rec["requested"] == "verified" and rec["chosen"] in ("fp32", *accel.VERIFIED_CANDIDATES)
    assert any(c["path"] == "fp32" and c["decode"] == "full" for c in rec["candidates"])
    bad = _register(task, OracleNet(2, error_rate=0.4))
    assert not promote(task, bad, eval_manifest=coded, audit_log=tmp_path / "a.jsonl", **FAST).passed
    assert f"{accel.VERIFIED_TAG}.cpu" not in _tags(task, bad)  # a refused version pays nothing
    monkeypatch.setattr(accel, "choose_path", lambda *a, **k: pytest.fail("scoring checked the path again"))
    res = CliRunner().invoke(main, ["score", "--model", f"models:/galmorph-{task}@champion", "--manifest", str(coded),
                                    "--out", str(tmp_path / "s"),
                                    "--no-log-mlflow", "--no-progress", "--batch-size", "16"])
    assert res.exit_code == 0, res.output
    used = json.loads((tmp_path / "s" / "scoring.json").read_text())["inference"]
    assert used["requested"] == "verified" and used["chosen"] == rec["chosen"] and used["decode"] == rec["decode"]
    assert f"inference path: {rec['chosen']}, {rec['decode']} decode" in res.output


def test_redshift_bin_guard(mlflow_server, coded, tmp_path):
    """A candidate better overall but broken in one redshift bin is rejected by the epsilon rule."""
    task = "ptest-zbin"
    audit = tmp_path / "audit.jsonl"
    v1 = _register(task, OracleNet(2, error_rate=0.3))
    v2 = _register(task, OracleNet(2, error_rate=0.0, bad_z=(0.05, 0.07)))
    promote(task, v1, eval_manifest=coded, audit_log=audit, **FAST)
    d = promote(task, v2, eval_manifest=coded, audit_log=audit, policy=PromotionPolicy(max_bin_auc_drop=0.05), **FAST)
    assert d.checks["primary"]["passed"], d.checks  # better macro F1 ...
    assert d.decision == "rejected"  # ... but the 0.05-0.07 bin collapses
    assert d.checks["redshift_bins"]["0.05-0.07"]["passed"] is False
    assert any("0.05-0.07" in r and "epsilon=0.05" in r for r in d.reasons)
    assert all(v["passed"] for k, v in d.checks["redshift_bins"].items() if v.get("compared") and k != "0.05-0.07")
    # with a lenient epsilon the same candidate passes
    d2 = promote(task, v2, eval_manifest=coded, audit_log=audit, policy=PromotionPolicy(max_bin_auc_drop=1.0), **FAST)
    assert d2.decision == "promoted" and aliases("galmorph-" + task)[CHAMPION] == v2


def test_chirality_equivariant_models_must_pass_mirror_test(mlflow_server, sim_chirality, tmp_path):
    task = "ptest-chir"
    audit = tmp_path / "audit.jsonl"
    classes = ["CW", "ACW", "other"]
    # a plain CNN that claims to be chirality-equivariant fails the mirror test, even as the first model
    fake = _register(task, TinyCNN(3, seed=3), classes=classes, size=32, chirality_equivariant=True, arch="fake-ce")
    d = promote(task, fake, eval_manifest=sim_chirality["manifest"], audit_log=audit,
                log_evaluations=False, evaluate_kwargs={"sweep_realisations": 2, "html": False})
    assert d.decision == "rejected" and "mirror test" in d.reasons[0]
    assert aliases("galmorph-" + task) == {CHALLENGER: fake}
    real = _register(task, ChiralityCE(seed=1), classes=classes, size=32, chirality_equivariant=True, arch="ce")
    # (an untrained net: the quality floor is switched off here, this test is about the mirror test)
    d2 = promote(task, real, eval_manifest=sim_chirality["manifest"], audit_log=audit,
                 policy=PromotionPolicy(min_margin_over_majority=None),
                 log_evaluations=False, evaluate_kwargs={"sweep_realisations": 2, "html": False})
    assert d2.decision == "first-champion" and d2.checks["mirror_test"]["passed"]
    assert d2.checks["mirror_test"]["label_swap_fraction"] == 1.0


class MajorityNet(torch.nn.Module):
    """Always predicts class 0 (the majority-class predictor of a set whose first class is the largest)."""

    def forward(self, x):
        z = torch.zeros((x.shape[0], 2), dtype=x.dtype) + x.mean() * 0
        return z + torch.tensor([2.0, 0.0])


def test_quality_floor_refuses_a_majority_class_model_even_as_first_champion(mlflow_server, coded, tmp_path):
    task = "ptest-floor"
    audit = tmp_path / "audit.jsonl"
    v1 = _register(task, MajorityNet())
    d = promote(task, v1, eval_manifest=coded, audit_log=audit, **FAST)
    assert d.decision == "rejected" and not d.passed
    fl = d.checks["quality_floor"]
    assert fl["passed"] is False and fl["majority_class"] == "symmetric" and fl["margin"] == 0.02
    assert fl["metric"] == "f1_macro" and fl["ci_low"] <= fl["value"] <= fl["ci_high"]
    assert fl["value"] == pytest.approx(fl["majority_value"])  # it *is* the majority predictor
    assert any("quality floor" in r and "majority-class" in r for r in d.reasons)
    assert aliases("galmorph-" + task) == {CHALLENGER: v1}  # no champion at all
    # a model that learned something clears the floor and becomes the first champion
    v2 = _register(task, OracleNet(2, error_rate=0.2))
    d2 = promote(task, v2, eval_manifest=coded, audit_log=audit, **FAST)
    assert d2.decision == "first-champion" and d2.checks["quality_floor"]["passed"]
    assert d2.checks["quality_floor"]["ci_low"] > d2.checks["quality_floor"]["majority_value"] + 0.02
    # the margin is read from params.yaml's promotion section
    params = tmp_path / "params.yaml"
    params.write_text("promotion:\n  min_margin_over_majority: 0.9\n")
    assert PromotionPolicy.from_params(params).min_margin_over_majority == 0.9
    repo_params = Path(__file__).resolve().parents[1] / "params.yaml"
    assert PromotionPolicy.from_params(repo_params).min_margin_over_majority > 0


def test_registry_lock_is_exclusive(tmp_path):
    lock = tmp_path / "x.lock"
    got = threading.Event()
    release = threading.Event()

    def holder():
        with registry_lock(lock):
            got.set()
            release.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    assert got.wait(30)
    with pytest.raises(PromotionError, match="could not lock"):
        with registry_lock(lock, timeout=0.3):
            pass
    release.set()
    t.join()
    with registry_lock(lock, timeout=5):
        pass


_WORKER = """
import json, sys
from galmorph.promotion.registry import promote
d = promote(sys.argv[1], sys.argv[2], eval_manifest=sys.argv[3], audit_log=sys.argv[4], out_dir=sys.argv[5],
            log_evaluations=False, evaluate_kwargs={"html": False})
print("DECISION " + json.dumps({"decision": d.decision, "before": d.champion_before, "after": d.champion_after}))
"""


def test_concurrent_promotions_leave_a_consistent_registry(mlflow_server, coded, tmp_path, monkeypatch):
    """Two promotions at once, each with its own audit log (issue #30: the lock was the audit log's folder,
    so both read the same champion and both reported "promoted" while the registry kept one): serialised
    by the registry's one lock whatever audit log they name."""
    monkeypatch.delenv(LOCK_URL_ENV, raising=False)
    task = "ptest-concurrent"
    v1 = _register(task, OracleNet(2, error_rate=0.25))
    v2 = _register(task, OracleNet(2, error_rate=0.12))
    v3 = _register(task, OracleNet(2, error_rate=0.05))
    promote(task, v1, eval_manifest=coded, audit_log=tmp_path / "audit.jsonl", **FAST)
    env = {k: v for k, v in os.environ.items() if k != LOCK_URL_ENV} | {"MLFLOW_TRACKING_URI": mlflow_server}
    audits = {v: tmp_path / f"pod-{v}" / "audit.jsonl" for v in (v2, v3)}  # one audit log per promotion
    logs = [open(tmp_path / f"worker{v}.log", "w") for v in (v2, v3)]  # files, not pipes: no full-pipe stalls
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, task, v, str(coded), str(audits[v]), str(tmp_path / f"w{v}")],
                              env=env, stdout=fh, stderr=subprocess.STDOUT) for v, fh in zip((v2, v3), logs)]
    for p, fh in zip(procs, logs):
        p.wait(timeout=900)
        fh.close()
        assert p.returncode == 0, Path(fh.name).read_text()[-3000:]
    log = sorted([e for a in audits.values() for e in read_audit(a)], key=lambda e: e["timestamp"])
    assert len(log) == 2
    first, second = log
    # serialised: the second decision saw the registry the first one left
    assert second["champion_before"] == first["champion_after"]
    al = aliases("galmorph-" + task)
    assert al[CHAMPION] == v3  # the best model wins whatever the order
    if first["candidate_version"] == v2:
        assert [first["decision"], second["decision"]] == ["promoted", "promoted"]
        assert al[PREVIOUS] == v2 and CHALLENGER not in al
    else:
        assert [first["decision"], second["decision"]] == ["promoted", "rejected"]
        assert al[PREVIOUS] == v1 and al[CHALLENGER] == v2


def test_the_lock_is_the_registrys_not_the_audit_logs(mlflow_server, coded, tmp_path, monkeypatch):
    """Without GALMORPH_LOCK_URL the lock derives from the registry URI: a promotion naming another audit
    log waits for (here: times out on) the lock another process of this registry holds."""
    monkeypatch.delenv(LOCK_URL_ENV, raising=False)
    task = "ptest-onelock"
    name = "galmorph-" + task
    v1 = _register(task, OracleNet(2, error_rate=0.2))
    lock = select_lock(None, tracking_uri=mlflow_server)
    assert lock == select_lock()  # this process's registry
    a, b = tmp_path / "a" / "audit.jsonl", tmp_path / "b" / "audit.jsonl"
    with lock.hold(name, timeout=5):
        with pytest.raises(PromotionError, match="could not lock"):
            promote(task, v1, eval_manifest=coded, audit_log=b, lock_timeout=0.5, **FAST)
    assert read_audit(b) == [] and CHAMPION not in aliases(name)
    assert promote(task, v1, eval_manifest=coded, audit_log=a, lock_timeout=5, **FAST).decision == "first-champion"


def test_a_promotion_that_loses_a_race_says_so_and_exits_non_zero(mlflow_server, coded, tmp_path, monkeypatch):
    """The champion moves (a writer outside the lock) while the candidate is evaluated: nothing is written,
    the decision is recorded as lost-race and the command exits non-zero saying so."""
    import mlflow

    import galmorph.evaluation.core as core
    from galmorph.cli import main

    task = "ptest-race"
    name = "galmorph-" + task
    audit = tmp_path / "audit.jsonl"
    v1 = _register(task, OracleNet(2, error_rate=0.25))
    v2 = _register(task, OracleNet(2, error_rate=0.1))
    v3 = _register(task, OracleNet(2, error_rate=0.2))
    promote(task, v1, eval_manifest=coded, audit_log=audit, **FAST)
    real = core.evaluate

    def evaluate_while_another_writer_moves_the_champion(*a, **kw):
        out = real(*a, **kw)
        mlflow.MlflowClient().set_registered_model_alias(name, CHAMPION, v3)
        return out

    monkeypatch.setattr(core, "evaluate", evaluate_while_another_writer_moves_the_champion)
    res = CliRunner().invoke(main, ["promote", "--task", task, "--version", v2, "--manifest", str(coded),
                                    "--audit-log", str(audit), "--out", str(tmp_path / "p"), "--json"])
    assert res.exit_code == 1, res.output
    assert f"lost a race: the champion changed from v{v1} to v{v3}" in res.stderr
    assert json.loads(res.stdout)["error"].startswith(f"{name}: lost a race")
    al = aliases(name)
    assert al[CHAMPION] == v3 and PREVIOUS not in al and CHALLENGER not in al  # nothing written
    last = read_audit(audit)[-1]
    assert last["decision"] == "lost-race" and last["candidate_version"] == v2 and not last["passed"]
    assert last["champion_before"] == v1 and last["champion_after"] == v3


def test_remote_tracking_server_without_a_lock_url_is_refused(tmp_path, monkeypatch):
    """No lock every promoting process is known to share: refused, saying what to set."""
    from galmorph.promotion.locks import FileLock, PostgresAdvisoryLock

    monkeypatch.delenv(LOCK_URL_ENV, raising=False)
    with pytest.raises(PromotionError, match=f"remote tracking server http://mlflow:5000.*set {LOCK_URL_ENV}"):
        select_lock(None, tracking_uri="http://mlflow:5000")
    with pytest.raises(PromotionError, match=f"set {LOCK_URL_ENV}"):
        select_lock(None, tracking_uri="mysql://u:pw@db/mlflow")
    # one registry, one lock: the store's own lock, or the lock URL every pod shares
    db = tmp_path / "state" / "mlflow.db"
    assert select_lock(None, tracking_uri=f"sqlite:///{db}").path("m") == db.parent / ".mlflow.db.m.promotion.lock"
    assert select_lock(None, tracking_uri="http://localhost:5055") == select_lock(None,
                                                                                 tracking_uri="http://127.0.0.1:5055/")
    assert isinstance(select_lock(None, tracking_uri="postgresql://u@db/mlflow"), PostgresAdvisoryLock)
    monkeypatch.setenv(LOCK_URL_ENV, f"file://{tmp_path / 'shared'}")
    lock = select_lock(None, tracking_uri="http://mlflow:5000")
    assert isinstance(lock, FileLock) and lock.path("m") == tmp_path / "shared" / ".m.promotion.lock"


def test_policy_file_errors_are_clear(tmp_path):
    from galmorph.promotion.policy import PolicyError

    with pytest.raises(PolicyError, match=f"promotion policy file {tmp_path / 'nope.yaml'} does not exist"):
        PromotionPolicy.from_params(tmp_path / "nope.yaml")
    assert PromotionPolicy.from_params(tmp_path / "nope.yaml", missing_ok=True) == PromotionPolicy()
    bad = tmp_path / "bad.yaml"
    bad.write_text("promotion: [1, 2\n")
    with pytest.raises(PolicyError, match="bad.yaml is not valid YAML"):
        PromotionPolicy.from_params(bad)
    bad.write_text("promotion:\n  delta: lots\n")
    with pytest.raises(PolicyError, match="min_improvement: 'lots' is not a float"):
        PromotionPolicy.from_params(bad)
    bad.write_text("promotion:\n  deltta: 0.1\n")
    with pytest.raises(ValueError, match="unknown promotion policy key"):
        PromotionPolicy.from_params(bad)


class LookupNet(torch.nn.Module):
    """Memorises an evaluation set: the logits of the stored image whose per-channel means are nearest to
    the input's (exportable; mirror-invariant key, so swapping the CW/ACW logits gives the mirrored model)."""

    def __init__(self, keys: torch.Tensor, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("keys", keys)
        self.register_buffer("table", logits)

    def forward(self, x):
        k = x.mean(dim=(2, 3))
        d = ((k[:, None, :] - self.keys[None, :, :]) ** 2).sum(-1)
        return self.table[d.argmin(dim=1)]


def _lookup_nets(manifest, size, classes):
    """A correct and a mirrored (CW <-> ACW) memorising chirality model of ``manifest``'s labels."""
    from galmorph.datasets.images import ManifestImageDataset
    from galmorph.catalogue.manifest import read_manifest

    man = read_manifest(manifest)
    ds = ManifestImageDataset(man, size, 3, 1.0, classes=classes)
    keys = torch.stack([ds[i][0].mean(dim=(1, 2)) for i in range(len(ds))])
    idx = torch.tensor([classes.index(str(c)) for c in man["label"]])
    logits = torch.nn.functional.one_hot(idx, len(classes)).float() * 6.0
    return LookupNet(keys, logits), LookupNet(keys, logits[:, [1, 0, 2]])


def test_winding_check_flags_a_mirrored_chirality_challenger(mlflow_server, sim_chirality, tmp_path):
    """A challenger with CW/ACW swapped disagrees with the winding measurement on its confident galaxies; the
    correct champion does not. With the other checks opened wide, the winding check alone rejects it (and
    only records it when ``winding_blocks`` is off)."""
    task = "ptest-wind"
    audit = tmp_path / "audit.jsonl"
    classes = ["CW", "ACW", "other"]
    good, mirrored = _lookup_nets(sim_chirality["manifest"], 32, classes)
    kw = {"log_evaluations": False, "evaluate_kwargs": {"sweep_realisations": 2, "html": False, "card": False}}
    open_policy = dict(min_margin_over_majority=None, min_improvement=-1.0, max_bin_auc_drop=1.0)
    v1 = _register(task, good, classes=classes, size=32)
    d1 = promote(task, v1, eval_manifest=sim_chirality["manifest"], audit_log=audit,
                 policy=PromotionPolicy(**open_policy), **kw)
    assert d1.decision == "first-champion"
    w1 = d1.checks["winding"]
    assert w1["candidate_disagreement"] == 0.0 and w1["candidate_n_compared"] >= 10 and not w1["flagged"]
    v2 = _register(task, mirrored, classes=classes, size=32)
    d2 = promote(task, v2, eval_manifest=sim_chirality["manifest"], audit_log=audit,
                 policy=PromotionPolicy(**open_policy), **kw)
    w2 = d2.checks["winding"]
    assert d2.decision == "rejected" and w2["flagged"] and w2["blocking"]
    assert w2["candidate_disagreement"] == 1.0 and w2["champion_disagreement"] == 0.0
    assert d2.reasons == [w2["reason"]] and "winding check" in w2["reason"]
    assert d2.candidate_metrics["winding_disagreement"] == 1.0
    assert aliases("galmorph-" + task)[CHAMPION] == v1
    # recorded, not blocking
    d3 = promote(task, v2, eval_manifest=sim_chirality["manifest"], audit_log=audit,
                 policy=PromotionPolicy(**open_policy, winding_blocks=False), **kw)
    assert d3.decision == "promoted" and d3.checks["winding"]["flagged"] and not d3.checks["winding"]["blocking"]
    assert any("not blocking" in r for r in d3.reasons)
    assert read_audit(audit)[-1]["checks"]["winding"]["flagged"] is True
    # the margin comes from params.yaml
    assert PromotionPolicy.from_params(Path(__file__).resolve().parents[1] / "params.yaml").winding_margin == 0.02
