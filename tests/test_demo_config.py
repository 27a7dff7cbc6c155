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
