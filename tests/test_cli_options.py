"""Shared CLI pieces defined once: the shard-range parser, task -> registered model URI, --task choices."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from galmorph.promotion.registry import model_ref, model_uri
from galmorph.scoring.batch import parse_shard_range, parse_work_item, plan_work
from galmorph.tasks import TASKS


@pytest.mark.parametrize("text, shards", [
    ("3-7", [3, 4, 5, 6, 7]), ("2", [2]), ("0-1,5", [0, 1, 5]), (" 0 - 2 , 4 ", [0, 1, 2, 4]),
    ("4-4", [4]), ("1-3,2-4", [1, 2, 3, 4]), ("0,0", [0]),
])
def test_shard_ranges(text, shards):
    assert parse_shard_range(text) == shards


@pytest.mark.parametrize("text, reason", [
    ("5-2", "reversed"), ("0-1,9-3", "reversed"), ("", "empty"), (" , ", "empty"), ("a-b", "non-negative integer"),
    ("-3", "non-negative integer"), ("2-", "non-negative integer"), ("1.5", "non-negative integer"),
])
def test_shard_range_errors_name_the_text_and_the_reason(text, reason):
    with pytest.raises(ValueError, match=reason) as err:
        parse_shard_range(text)
    assert repr(text) in str(err.value)


def test_work_items_round_trip_through_the_one_parser():
    items = [parse_work_item(i) for i in plan_work(n_rows=95, shard_size=10, n_workers=3, model_uri="models:/m/1")]
    assert [s for i in items for s in i["shards"]] == list(range(10))
    assert {i["n_items"] for i in items} == {3}  # each worker knows how many may run beside it
    assert parse_work_item('{"shards": "0-1", "model_uri": "m", "shard_size": 5}')["n_items"] == 1  # planned before


def _cgroup(tmp_path, v2: str | None = None, v1: tuple[int, int] | None = None):
    root = tmp_path / "cg"
    root.mkdir(parents=True)
    if v2 is not None:
        (root / "cpu.max").write_text(v2 + "\n")
    if v1 is not None:
        (root / "cpu").mkdir()
        (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{v1[0]}\n")
        (root / "cpu" / "cpu.cfs_period_us").write_text(f"{v1[1]}\n")
    return root


def test_a_scoring_worker_computes_with_its_pods_limit_or_its_share_of_the_machine(tmp_path):
    from galmorph.scoring.batch import cpu_quota, cpus_per_worker

    assert cpu_quota(_cgroup(tmp_path / "a", v2="150000 100000")) == 1.5  # cgroup v2: a 1.5-CPU limit
    assert cpu_quota(_cgroup(tmp_path / "b", v2="max 100000")) is None  # no limit
    assert cpu_quota(_cgroup(tmp_path / "c", v1=(400000, 100000))) == 4.0  # cgroup v1
    assert cpu_quota(_cgroup(tmp_path / "d", v1=(-1, 100000))) is None
    assert cpu_quota(tmp_path / "none") is None
    # a limit is the pod's own, whatever else runs: at least one CPU, never more than it may run on
    assert cpus_per_worker(4, quota=1.5, available=16) == 1 and cpus_per_worker(4, quota=8.0, available=16) == 8
    assert cpus_per_worker(1, quota=32.0, available=16) == 16
    # no limit: the plan's workers share the machine (kfp's local runner runs them side by side)
    assert [cpus_per_worker(k, quota=0.0, available=2) for k in (1, 2, 4)] == [2, 1, 1]
    assert cpus_per_worker(3, quota=0.0, available=16) == 5


@pytest.mark.parametrize("shards, reason", [("5-2", "reversed"), ("", "empty"), ("x", "non-negative integer")])
def test_score_rejects_a_bad_shard_list_before_scoring(tmp_path, shards, reason):
    from galmorph.cli import main

    man = tmp_path / "m.parquet"
    man.write_bytes(b"")
    r = CliRunner().invoke(main, ["score", "--model", "chirality", "--manifest", str(man), "--out",
                                  str(tmp_path / "o"), "--shards", shards])
    assert r.exit_code == 2 and "--shards" in r.output and reason in r.output, r.output
    assert not (tmp_path / "o").exists()


def test_model_uri_of_a_task():
    assert model_uri("chirality") == "models:/galmorph-chirality@champion"
    assert model_uri("arms", "challenger") == "models:/galmorph-arms@challenger"
    with pytest.raises(ValueError, match="task"):
        model_uri("")
    # a bare task name means its champion; URIs and paths pass through
    for task in TASKS:
        assert model_ref(task) == f"models:/galmorph-{task}@champion"
    for uri in ("models:/galmorph-arms/3", "runs:/abc/model", "/tmp/model", "models:/x@challenger"):
        assert model_ref(uri) == uri


def _commands(group: click.Group, path=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_task_option_offers_the_tasks():
    from galmorph.cli import main

    found = {}
    for path, cmd in _commands(main):
        for p in cmd.params:
            if "--task" in getattr(p, "opts", ()) and isinstance(p.type, click.Choice):
                found[" ".join(path)] = list(p.type.choices)
    assert {"train", "simulate", "ingest", "demo", "label sample"} <= set(found)
    assert all(choices == list(TASKS) for choices in found.values()), found


def test_shared_options_mean_the_same_everywhere():
    from galmorph.cli import main

    helps: dict[str, set[str]] = {}
    for _, cmd in _commands(main):
        for p in cmd.params:
            for opt in ("--tracking-uri", "--data-root"):
                if opt in getattr(p, "opts", ()):
                    helps.setdefault(opt, set()).add(p.help)
    assert set(helps) == {"--tracking-uri", "--data-root"}
    assert all(len(h) == 1 for h in helps.values()), helps  # one definition, one help text


def test_task_options_are_the_tasks_except_promotes_registered_name():
    """Every ``--task`` offers the choices of TASKS; only ``promote --task`` is free text (it names the
    registered model ``galmorph-<task>``, which tests isolate under names of their own)."""
    from galmorph.cli import main

    free = {" ".join(path) for path, cmd in _commands(main) for p in cmd.params
            if "--task" in getattr(p, "opts", ()) and not isinstance(p.type, click.Choice)}
    assert free == {"promote"}, free


def test_pipeline_name_arguments_offer_the_pipelines():
    from galmorph.cli import main
    from galmorph.ops import PIPELINES

    found = {" ".join(path): list(p.type.choices) for path, cmd in _commands(main) if path[0] == "pipeline"
             for p in cmd.params if isinstance(p, click.Argument) and isinstance(p.type, click.Choice)}
    assert {"pipeline compile", "pipeline run", "pipeline schedule", "pipeline params"} <= set(found), found
    assert all(choices == list(PIPELINES) for choices in found.values()), found
