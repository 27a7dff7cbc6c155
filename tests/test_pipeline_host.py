"""The --host code paths (submit, upload, schedule, release watch) against a fake kfp.Client.

No Kubeflow Pipelines API exists on this machine; the fake client below stands in for the Kubernetes/KFP
API server -- the one mock this project allows. It records the calls and keeps the server's state
(pipelines, versions, experiments, recurring runs, runs) so that idempotency can be asserted. Everything
else (compiled packages, parameter coercion, state files, locks) is real.
"""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest
import yaml

from galmorph.ops.run import PipelineRunError, kfp_cron, schedule, submit, upload_all
from galmorph.ops.release import host_starter, process_releases, watch


class FakeKfpClient:
    """In-memory stand-in for kfp.Client (the Kubeflow Pipelines API)."""

    def __init__(self):
        self.pipelines, self.versions, self.runs, self.recurring = {}, {}, [], {}
        self.experiments = {}
        self.calls = []
        self._lock = threading.Lock()

    def _id(self, prefix):
        return f"{prefix}-{len(self.calls)}"

    def create_run_from_pipeline_package(self, pipeline_file, arguments=None, run_name=None, experiment_name=None,
                                         **kw):
        spec = next(yaml.safe_load_all(open(pipeline_file)))  # a real package must parse (IR + platform spec)
        assert "root" in spec and "deploymentSpec" in spec
        with self._lock:
            self.calls.append(("run", run_name))
            rid = self._id("run")
            self.runs.append(SimpleNamespace(run_id=rid, display_name=run_name, arguments=arguments,
                                             package=pipeline_file))
        return SimpleNamespace(run_id=rid)

    def list_runs(self, page_size=10, filter=None, **kw):
        name = json.loads(filter)["predicates"][0]["string_value"] if filter else None
        return SimpleNamespace(runs=[r for r in self.runs if name is None or r.display_name == name])

    def get_pipeline_id(self, name):
        return self.pipelines.get(name)

    def upload_pipeline(self, pipeline_package_path, pipeline_name=None, description=None, **kw):
        self.calls.append(("upload", pipeline_name))
        pid = self._id("pipe")
        self.pipelines[pipeline_name] = pid
        self.versions[pid] = [SimpleNamespace(display_name=description.split("(")[-1].rstrip(")"))]
        return SimpleNamespace(pipeline_id=pid)

    def list_pipeline_versions(self, pipeline_id, page_size=10, **kw):
        return SimpleNamespace(pipeline_versions=self.versions.get(pipeline_id, []))

    def upload_pipeline_version(self, pipeline_package_path, pipeline_version_name, pipeline_id=None, **kw):
        self.calls.append(("version", pipeline_version_name))
        self.versions[pipeline_id].append(SimpleNamespace(display_name=pipeline_version_name))
        return SimpleNamespace(pipeline_version_id=self._id("ver"))

    def get_experiment(self, experiment_id=None, experiment_name=None, **kw):
        if experiment_name not in self.experiments:
            raise ValueError(f"no experiment {experiment_name}")
        return self.experiments[experiment_name]

    def create_experiment(self, name, description=None, namespace=None):
        self.calls.append(("experiment", name))
        self.experiments[name] = SimpleNamespace(experiment_id=self._id("exp"), display_name=name)
        return self.experiments[name]

    def list_recurring_runs(self, experiment_id=None, page_size=10, **kw):
        return SimpleNamespace(recurring_runs=list(self.recurring.values()))

    def create_recurring_run(self, experiment_id, job_name, description=None, cron_expression=None, params=None,
                             pipeline_package_path=None, **kw):
        self.calls.append(("recurring", job_name, cron_expression))
        rid = self._id("rr")
        self.recurring[rid] = SimpleNamespace(recurring_run_id=rid, display_name=job_name, description=description,
                                              cron=cron_expression, params=params)
        return self.recurring[rid]

    def delete_recurring_run(self, recurring_run_id):
        self.calls.append(("delete-recurring", recurring_run_id))
        del self.recurring[recurring_run_id]
        return {}


def test_submit_coerces_parameters():
    c = FakeKfpClient()
    res = submit("rescoring", "http://kfp", {"release_uri": "/data/r1", "shard_size": "500",
                                             "hold_on_drift": "false"}, run_name="r", client=c)
    run = c.runs[0]
    assert res["run_id"] == run.run_id and run.arguments == {"release_uri": "/data/r1", "shard_size": 500,
                                                             "hold_on_drift": False}
    with pytest.raises(PipelineRunError, match="'nope' is not a parameter of pipeline 'rescoring'"):
        submit("rescoring", "http://kfp", {"nope": "1"}, client=c)


def test_upload_is_idempotent_and_versions_by_content(tmp_path):
    c = FakeKfpClient()
    first = upload_all("http://kfp", client=c)
    assert [r["action"] for r in first] == ["created"] * 3
    again = upload_all("http://kfp", client=c)
    assert [r["action"] for r in again] == ["unchanged"] * 3
    # a changed package becomes a new version of the existing pipeline
    pkgs = tmp_path / "pk"
    pkgs.mkdir()
    from galmorph.ops import compiled_dir

    for n in ("training", "rescoring", "labelling"):
        text = (compiled_dir() / f"{n}.yaml").read_text()
        if n == "training":
            text = text.replace("defaultValue: tiny", "defaultValue: small", 1)
        (pkgs / f"{n}.yaml").write_text(text)
    third = upload_all("http://kfp", package_dir=pkgs, client=c)
    assert [r["action"] for r in third] == ["new-version", "unchanged", "unchanged"]


def test_schedule_creates_once_and_replaces_on_change():
    c = FakeKfpClient()
    r1 = schedule("rescoring", "0 3 * * 1", "http://kfp", {"release_uri": "/releases/latest"}, client=c)
    assert r1["action"] == "created" and r1["cron"] == "0 0 3 * * 1"
    assert schedule("rescoring", "0 3 * * 1", "http://kfp", client=c)["action"] == "unchanged"
    r3 = schedule("rescoring", "30 4 * * *", "http://kfp", client=c)
    assert r3["action"] == "created" and len(c.recurring) == 1
    assert next(iter(c.recurring.values())).cron == "0 30 4 * * *"
    with pytest.raises(PipelineRunError):
        kfp_cron("* * *")


def _release(root, name, manifest_src):
    import shutil

    d = root / name
    d.mkdir(parents=True)
    shutil.copyfile(manifest_src, d / "manifest.parquet")
    return d


def test_release_watch_starts_one_run_per_release(tmp_path, sim_chirality):
    c = FakeKfpClient()
    root, state = tmp_path / "releases", tmp_path / "state" / "watch.json"
    _release(root, "dr1", sim_chirality["manifest"])
    (root / "incoming").mkdir()  # no manifest yet: not a release
    (root / "incoming" / "manifest.parquet").write_bytes(b"PAR1 half-copied")
    start, find = host_starter("http://kfp", {"shard_size": "100"}, client=c, release_root_in_cluster="/releases")
    done = watch(root, state, start, find, once=True)
    assert [d["action"] for d in done] == ["started"] and len(c.runs) == 1
    assert c.runs[0].arguments == {"shard_size": 100, "release_uri": "/releases/dr1", "release": "dr1"}
    # a restart (new starter, same state file) does nothing for dr1; a new release gets exactly one run
    _release(root, "dr2", sim_chirality["manifest"])
    start2, find2 = host_starter("http://kfp", client=c)
    assert [d["release"] for d in watch(root, state, start2, find2, once=True)] == ["dr2"]
    assert watch(root, state, start2, find2, max_passes=2, interval=0.01) == []
    assert [r.display_name for r in c.runs] == ["galmorph-rescoring-dr1", "galmorph-rescoring-dr2"]
    st = json.loads(state.read_text())["releases"]
    assert st["dr1"]["status"] == st["dr2"]["status"] == "submitted" and "incoming" not in st


def test_release_watch_recovers_pending_without_resubmitting(tmp_path, sim_chirality):
    """A watcher killed after submitting but before recording: the next pass finds the run by name."""
    c = FakeKfpClient()
    root, state = tmp_path / "releases", tmp_path / "watch.json"
    _release(root, "dr3", sim_chirality["manifest"])
    start, find = host_starter("http://kfp", client=c)

    def start_then_crash(rel):
        start(rel)
        raise KeyboardInterrupt  # the process dies here, state still says "pending"

    with pytest.raises(KeyboardInterrupt):
        process_releases(root, state, start_then_crash, find)
    assert json.loads(state.read_text())["releases"]["dr3"]["status"] == "pending"
    done = process_releases(root, state, start, find)
    assert [d["action"] for d in done] == ["recovered"] and len(c.runs) == 1


def test_concurrent_watchers_submit_once(tmp_path, sim_chirality):
    c = FakeKfpClient()
    root, state = tmp_path / "releases", tmp_path / "watch.json"
    for n in ("a", "b", "c"):
        _release(root, n, sim_chirality["manifest"])
    start, find = host_starter("http://kfp", client=c)
    threads = [threading.Thread(target=process_releases, args=(root, state, start, find)) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(r.display_name for r in c.runs) == [f"galmorph-rescoring-{n}" for n in "abc"]


def test_a_failed_local_run_names_the_failed_tasks_exception(tmp_path):
    """The demo and `pipeline run --local` send the task logs to a file; the error then quotes the
    exception of the last traceback in it, so that a CI log shows why without the (temporary) file."""
    from galmorph.ops.run import last_error_line

    log = tmp_path / "task.log"
    log.write_text("Executing task 'train'\n    Traceback (most recent call last):\n      File \"a.py\", line 1\n"
                   "    ValueError: an earlier failure, retried\n"
                   "Executing task 'evaluate'\n    Traceback (most recent call last):\n"
                   "      File \"b.py\", line 2, in evaluate\n        raise MlflowException(msg)\n"
                   "    mlflow.exceptions.MlflowException: No such artifact: 'MLmodel'\n    404 Client Error\n")
    assert last_error_line(log) == "mlflow.exceptions.MlflowException: No such artifact: 'MLmodel'"
    log.write_text("all tasks succeeded\n")
    assert last_error_line(log) == ""
    assert last_error_line(tmp_path / "missing.log") == ""
