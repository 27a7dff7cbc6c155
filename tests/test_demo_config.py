"""`galmorph demo`'s configuration and its decisions, without running it: params.yaml's `demo:` section is
what the demo runs, every task's training settings resolve, the CLI options replace what they name, and
a task left without a champion is a decision (exit 3, the model version and the reasons) -- never a
traceback. The demo itself runs in tests/test_demo.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from galmorph.ops.demo import DEMO_TASKS, EXIT_REJECTED, DemoConfig, DemoRejected, _champion

REPO = Path(__file__).resolve().parents[1]


def test_params_yaml_demo_section_is_the_default_config():
    cfg = DemoConfig.from_params(REPO / "params.yaml")
    assert cfg == DemoConfig(), "params.yaml demo: and galmorph.ops.demo.DemoConfig's defaults differ"
    assert set(cfg.tasks) == set(DEMO_TASKS) and cfg.release_task in cfg.run and set(cfg.run) <= set(DEMO_TASKS)
    cfg.check(DEMO_TASKS)  # every task's preset + overrides resolve to a valid training config


def test_demo_training_is_seeded_and_deterministic():
    from galmorph.training.config import resolve_config

    for task, spec in DemoConfig().tasks.items():
        tc = resolve_config(task, spec.preset, spec.overrides)
        assert tc.deterministic and tc.trials == 1, task
        assert spec.n % len(tc.classes()) == 0, f"{task}: the simulated classes are not balanced"


def test_from_params_overrides_and_refuses_unknown_keys(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("demo:\n  seed: 4\n  run: arms\n  tasks:\n    arms: {n: 50}\n")
    cfg = DemoConfig.from_params(p)
    assert cfg.seed == 4 and cfg.tasks["arms"].n == 50 and cfg.run == ("arms",)
    assert cfg.tasks["arms"].preset == DemoConfig().tasks["arms"].preset  # the rest kept
    assert DemoConfig.from_params(tmp_path / "absent.yaml") == DemoConfig()
    for text, word in (("demo:\n  sede: 1\n", "sede"), ("demo:\n  tasks:\n    spiral: {n: 3}\n", "spiral"),
                       ("demo:\n  tasks:\n    arms: {epochs: 3}\n", "epochs"),
                       ("demo:\n  run: [arms, bars]\n", "bars")):
        p.write_text(text)
        with pytest.raises(ValueError, match=word):
            DemoConfig.from_params(p)
    bad = DemoConfig.from_params({"demo": {"tasks": {"arms": {"overrides": {"max_epoch": 3}}}}})
    with pytest.raises(ValueError, match="max_epoch"):
        bad.check(("arms",))


def test_command_line_options_replace_what_they_name():
    cfg = DemoConfig().with_options(preset="tiny", release_n=12, seed=7)
    assert {s.preset for s in cfg.tasks.values()} == {"tiny"} and all(not s.overrides for s in cfg.tasks.values())
    assert (cfg.release_n, cfg.seed) == (12, 7)
    assert [s.n for s in cfg.tasks.values()] == [s.n for s in DemoConfig().tasks.values()]
    assert DemoConfig().with_options() == DemoConfig()


_REJECTED = {"model_name": "galmorph-chirality", "decision": "rejected", "candidate_version": "1",
             "champion_after": None,
             "reasons": ["quality floor: macro-F1 0.1667 does not beat the majority-class predictor"]}


def test_no_champion_alias_is_none_not_an_error():
    from mlflow.exceptions import MlflowException

    class Client:
        def __init__(self, version=None):
            self.version = version

        def get_model_version_by_alias(self, name, alias):
            if self.version is None:
                raise MlflowException(f"Registered model alias {alias} not found.")
            return type("V", (), {"version": self.version})()

    assert _champion(Client(), "chirality", _REJECTED) is None
    assert _champion(Client("3"), "chirality", {**_REJECTED, "champion_after": "3"}) == "3"
    with pytest.raises(RuntimeError, match="registry says none"):
        _champion(Client(), "chirality", {**_REJECTED, "champion_after": "2"})


def test_cli_reports_a_rejected_candidate_with_exit_3(monkeypatch, tmp_path):
    import galmorph.ops.demo as demo
    from galmorph.cli.base import main

    def rejected(*a, **k):
        raise DemoRejected({"chirality": _REJECTED}, tmp_path / "summary.json")

    monkeypatch.setattr(demo, "run_demo", rejected)
    res = CliRunner().invoke(main, ["demo", "--out", str(tmp_path)])
    assert res.exit_code == EXIT_REJECTED == 3, res.output
    assert "galmorph-chirality v1 was rejected by the promotion policy" in res.output
    assert "quality floor: macro-F1 0.1667" in res.output and "Traceback" not in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)


def test_cli_other_failures_exit_1_with_the_message(monkeypatch, tmp_path):
    import galmorph.ops.demo as demo
    from mlflow.exceptions import MlflowException

    from galmorph.cli.base import main

    def boom(*a, **k):
        raise MlflowException("RESOURCE_DOES_NOT_EXIST: Registered model alias champion not found.")

    monkeypatch.setattr(demo, "run_demo", boom)
    res = CliRunner().invoke(main, ["demo", "--out", str(tmp_path)])
    assert res.exit_code == 1 and "demo failed" in res.output and "alias champion not found" in res.output
    assert isinstance(res.exception, SystemExit)
    bad = CliRunner().invoke(main, ["demo", "--real", "--preset", "tiny"])
    assert bad.exit_code != 0 and "simulated demo only" in bad.output


def _fake_platform(monkeypatch, tmp_path, decisions: dict[str, dict]):
    """run_demo's pipelines, stack, simulator and registry replaced by fakes that record what they were
    given: the training pipeline's promotion record is ``decisions[task]``, the registry agrees with it."""
    import json

    import mlflow
    from mlflow.exceptions import MlflowException

    import galmorph.ops.run as run_mod
    import galmorph.ops.stack as stack_mod
    import galmorph.simulate as sim_mod

    calls: list[tuple[str, dict]] = []

    def simulate_dataset(out_dir, n, **kw):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        calls.append(("simulate", {"n": n, **kw}))
        return {"dir": Path(out_dir)}

    def run_local(name, params, pipeline_root, **kw):
        calls.append((name, params))
        run_dir = Path(pipeline_root) / f"{name}-{len(calls)}"
        if name == "training":
            (run_dir / "promote").mkdir(parents=True)
            (run_dir / "promote" / "record").write_text(json.dumps(decisions[params["task"]]))
        else:
            (run_dir / "merge" / "catalogue").mkdir(parents=True)
            (run_dir / "merge" / "catalogue" / "summary.json").write_text(json.dumps({"n_scored": 40,
                                                                                      "n_quarantined": 0}))
            (run_dir / "drift" / "summary").mkdir(parents=True)
            (run_dir / "drift" / "summary" / "verdict.txt").write_text("no_drift\n")
            pub = Path(params["publish_dir"]) / params["release"]
            pub.mkdir(parents=True)
            (pub / "PUBLISHED").write_text("verdict=no_drift\n")
        return {"run_dir": str(run_dir)}

    class Client:
        def get_model_version_by_alias(self, name, alias):
            v = decisions[name.removeprefix("galmorph-")].get("champion_after")
            if v is None:
                raise MlflowException(f"Registered model alias {alias} not found.")
            return type("V", (), {"version": v})()

    monkeypatch.setattr(sim_mod, "simulate_dataset", simulate_dataset)
    monkeypatch.setattr(run_mod, "run_local", run_local)
    monkeypatch.setattr(stack_mod, "stack_up", lambda s, which: [{"service": w, "url": "http://x"} for w in which])
    monkeypatch.setattr(mlflow, "MlflowClient", Client)
    return calls


def _decision(task, champion, decision="first-champion", reasons=()):
    return {"model_name": f"galmorph-{task}", "decision": decision, "candidate_version": "1",
            "champion_after": champion, "reasons": list(reasons),
            "candidate_metrics": {"f1_macro": 0.9, "baseline_f1_macro": 0.2}}


def test_run_demo_trains_the_configured_tasks_then_rescores(monkeypatch, tmp_path):
    import json

    from galmorph.ops.demo import run_demo
    from galmorph.settings import Settings

    settings = Settings(state_dir=tmp_path / "state")
    calls = _fake_platform(monkeypatch, tmp_path, {t: _decision(t, "1") for t in DEMO_TASKS})
    lines: list[str] = []
    res = run_demo(settings, echo=lines.append)
    cfg = DemoConfig()
    trained = [p["task"] for name, p in calls if name == "training"]
    assert trained == list(cfg.run)
    for name, p in calls:
        if name == "training":
            spec = cfg.tasks[p["task"]]
            assert p["preset"] == spec.preset and json.loads(p["overrides_json"]) == spec.overrides
            assert p["test_fraction"] == cfg.test_fraction
    sims = [p for name, p in calls if name == "simulate"]
    assert [s["n"] for s in sims] == [cfg.tasks[t].n for t in cfg.run] + [cfg.release_n]
    assert all(s["z_range"] == (0.01, 0.03) for s in sims)
    assert [name for name, _ in calls][-1] == "rescoring"
    assert Path(res["outputs"]) == (tmp_path / "state" / "demo").resolve()
    summary = json.loads((tmp_path / "state" / "demo" / "summary.json").read_text())
    assert summary["publish"] == "published" and summary["drift"] == "no_drift"
    assert summary["champions"] == {t: "1" for t in cfg.run}
    assert any(line.startswith("champions:") for line in lines)


def test_run_demo_reports_every_task_left_without_a_champion(monkeypatch, tmp_path):
    import json

    from galmorph.ops.demo import run_demo
    from galmorph.settings import Settings

    floor = "quality floor: macro-F1 0.1667 does not beat the majority-class predictor"
    decisions = {t: _decision(t, None, "rejected", [floor]) for t in DEMO_TASKS}
    decisions["arms"] = _decision("arms", "1")
    calls = _fake_platform(monkeypatch, tmp_path, decisions)
    with pytest.raises(DemoRejected) as err:
        run_demo(Settings(state_dir=tmp_path / "state"), tasks=("chirality", "arms", "lopsided"), echo=lambda m: None)
    assert set(err.value.decisions) == {"chirality", "lopsided"}  # every task was trained, arms has a champion
    assert "galmorph-lopsided v1 was rejected" in str(err.value) and floor in str(err.value)
    assert [p["task"] for name, p in calls if name == "training"] == ["chirality", "arms", "lopsided"]
    assert "rescoring" not in [name for name, _ in calls]
    summary = json.loads((tmp_path / "state" / "demo" / "summary.json").read_text())
    assert summary["rejected"] == ["chirality", "lopsided"]
