"""The one resolver of run settings: flag > GALMORPH_* > MLFLOW_TRACKING_URI > .env > default, and the
commands (train, score, drift, evaluate), the component runtime and `galmorph settings` following it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from galmorph.settings import REPO_ROOT, _default_data_root, resolve_settings

FLAG, GALMORPH, MLFLOW, DOTENV = "http://flag:1", "http://galmorph-env:2", "http://mlflow-env:3", "http://dotenv:4"
CHECKED: list[str] = []  # URIs the commands checked for a reachable server


@pytest.fixture()
def clean_env(tmp_path, monkeypatch):
    """No GALMORPH_* / MLFLOW_TRACKING_URI in the environment, the working directory (.env) in tmp_path,
    no server behind the test URIs (the reachability check only records what it was asked), and
    mlflow's process-wide tracking URI put back afterwards."""
    import galmorph.tracking

    monkeypatch.setattr(galmorph.tracking, "ensure_reachable", lambda uri, timeout=None: CHECKED.append(uri))
    saved = galmorph.tracking.mlflow_uri_state()  # mlflow's tracking and registry URIs, and their variables
    for k in list(os.environ):
        if k.startswith("GALMORPH_") or k == "MLFLOW_TRACKING_URI":
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    galmorph.tracking.restore_mlflow_uri_state(saved)


def _dotenv(folder: Path, **values: str) -> None:
    (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in values.items()))


# ------------------------------------------------------------------------------------------------
# the order, case by case
# ------------------------------------------------------------------------------------------------
def test_tracking_uri_order_each_level_beats_the_ones_below(clean_env, monkeypatch):
    # default: the local stack's server
    assert resolve_settings().mlflow_tracking_uri == "http://127.0.0.1:5055"
    _dotenv(clean_env, GALMORPH_MLFLOW_TRACKING_URI=DOTENV)
    assert resolve_settings().mlflow_tracking_uri == DOTENV  # .env beats the default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", MLFLOW)
    assert resolve_settings().mlflow_tracking_uri == MLFLOW  # MLFLOW_TRACKING_URI beats .env
    monkeypatch.setenv("GALMORPH_MLFLOW_TRACKING_URI", GALMORPH)
    assert resolve_settings().mlflow_tracking_uri == GALMORPH  # GALMORPH_ beats MLFLOW_TRACKING_URI
    assert resolve_settings(tracking_uri=FLAG).mlflow_tracking_uri == FLAG  # the flag beats everything
    # "" (a component's unset parameter) and None mean "not given"
    assert resolve_settings(tracking_uri="").mlflow_tracking_uri == GALMORPH
    assert resolve_settings(tracking_uri=None).mlflow_tracking_uri == GALMORPH


@pytest.mark.parametrize("layers, expected", [
    ((), "http://127.0.0.1:5055"),
    (("dotenv",), DOTENV),
    (("mlflow",), MLFLOW),
    (("galmorph",), GALMORPH),
    (("flag",), FLAG),
    (("dotenv", "mlflow"), MLFLOW),
    (("dotenv", "galmorph"), GALMORPH),
    (("mlflow", "galmorph"), GALMORPH),
    (("flag", "galmorph", "mlflow", "dotenv"), FLAG),
    (("flag", "dotenv"), FLAG),
])
def test_tracking_uri_order_any_combination(clean_env, monkeypatch, layers, expected):
    if "dotenv" in layers:
        _dotenv(clean_env, GALMORPH_MLFLOW_TRACKING_URI=DOTENV)
    if "mlflow" in layers:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", MLFLOW)
    if "galmorph" in layers:
        monkeypatch.setenv("GALMORPH_MLFLOW_TRACKING_URI", GALMORPH)
    flag = FLAG if "flag" in layers else None
    assert resolve_settings(tracking_uri=flag).mlflow_tracking_uri == expected


def test_default_tracking_uri_follows_host_and_port(clean_env, monkeypatch):
    monkeypatch.setenv("GALMORPH_MLFLOW_PORT", "5999")
    assert resolve_settings().mlflow_tracking_uri == "http://127.0.0.1:5999"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", MLFLOW)  # a given URI wins over the derived one
    assert resolve_settings().mlflow_tracking_uri == MLFLOW


@pytest.mark.parametrize("field, flag_name, var", [
    ("data_root", "data_root", "GALMORPH_DATA_ROOT"),
    ("state_dir", "state_dir", "GALMORPH_STATE_DIR"),
    ("audit_log", "audit_log", "GALMORPH_AUDIT_LOG"),
])
def test_path_settings_order(clean_env, monkeypatch, field, flag_name, var):
    dotenv, env, flag = clean_env / "from-dotenv", clean_env / "from-env", clean_env / "from-flag"
    defaults = {"data_root": _default_data_root(), "state_dir": (REPO_ROOT / ".galmorph").resolve(),
                "audit_log": (REPO_ROOT / ".galmorph" / "registry" / "audit.jsonl").resolve()}
    assert getattr(resolve_settings(), field) == defaults[field]
    _dotenv(clean_env, **{var: str(dotenv)})
    assert getattr(resolve_settings(), field) == dotenv  # .env beats the default
    monkeypatch.setenv("MLFLOW_TRACKING_URI", MLFLOW)  # only the tracking URI reads MLflow's variable
    assert getattr(resolve_settings(), field) == dotenv
    monkeypatch.setenv(var, str(env))
    assert getattr(resolve_settings(), field) == env  # GALMORPH_ beats .env
    assert getattr(resolve_settings(**{flag_name: flag}), field) == flag  # the flag beats GALMORPH_


def test_audit_log_defaults_under_the_resolved_state_dir(clean_env, monkeypatch):
    monkeypatch.setenv("GALMORPH_STATE_DIR", str(clean_env / "env-state"))
    s = resolve_settings(state_dir=clean_env / "flag-state")
    assert s.state_dir == clean_env / "flag-state"
    assert s.audit_log == clean_env / "flag-state" / "registry" / "audit.jsonl"
    assert s.label_db_url == f"sqlite:///{clean_env / 'flag-state' / 'labels' / 'labels.db'}"


def test_resolver_reads_the_environment_now_not_a_cached_copy(clean_env, monkeypatch):
    monkeypatch.setenv("GALMORPH_DATA_ROOT", str(clean_env / "a"))
    assert resolve_settings().data_root == clean_env / "a"
    monkeypatch.setenv("GALMORPH_DATA_ROOT", str(clean_env / "b"))
    assert resolve_settings().data_root == clean_env / "b"


# ------------------------------------------------------------------------------------------------
# callers: `galmorph settings`, the component runtime, the commands
# ------------------------------------------------------------------------------------------------
def _cli(args, env=None):
    from galmorph.cli import main

    return CliRunner().invoke(main, args, env=env)


def test_settings_command_prints_the_resolved_values(clean_env, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", MLFLOW)
    monkeypatch.setenv("GALMORPH_DATA_ROOT", str(clean_env / "env-root"))
    r = _cli(["settings"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["mlflow_tracking_uri"] == MLFLOW and d["data_root"] == str(clean_env / "env-root")
    r = _cli(["settings", "--tracking-uri", FLAG, "--data-root", str(clean_env / "flag-root"),
              "--state-dir", str(clean_env / "st")])
    d = json.loads(r.output)
    assert d["mlflow_tracking_uri"] == FLAG and d["data_root"] == str(clean_env / "flag-root")
    assert d["audit_log"] == str(clean_env / "st" / "registry" / "audit.jsonl")


def test_settings_help_documents_the_order(clean_env):
    out = " ".join(_cli(["settings", "--help"]).output.split())
    order = ["command-line flag", "GALMORPH_<NAME>", "MLFLOW_TRACKING_URI", ".env", "default"]
    pos = [out.index(k) for k in order]
    assert pos == sorted(pos), out


def test_component_runtime_setup_follows_the_order(clean_env, monkeypatch):
    import mlflow

    from galmorph.steps.runtime import setup

    monkeypatch.setenv("MLFLOW_TRACKING_URI", MLFLOW)
    # a registry exported by something else (an earlier set_registry_uri, the user's shell): the steps'
    # registry is their tracking server, or `models:/NAME/1` resolves in the other registry (as the demo's
    # evaluate once did under pytest, then fetched artifacts that its own server did not have)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:///elsewhere.db")
    monkeypatch.setenv("GALMORPH_DATA_ROOT", str(clean_env / "env-root"))
    assert setup("", "") == (MLFLOW, clean_env / "env-root")
    assert mlflow.get_tracking_uri() == MLFLOW
    assert mlflow.get_registry_uri() == MLFLOW and os.environ["MLFLOW_REGISTRY_URI"] == MLFLOW
    # the commands (and the demo, which starts pipelines) point both at their settings' server too
    from galmorph.cli.options import use_tracking_uri
    from galmorph.settings import resolve_settings

    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "sqlite:///elsewhere.db")
    assert use_tracking_uri(resolve_settings(tracking_uri=FLAG)) == FLAG
    assert mlflow.get_registry_uri() == FLAG and os.environ["MLFLOW_REGISTRY_URI"] == FLAG
    monkeypatch.setenv("GALMORPH_MLFLOW_TRACKING_URI", GALMORPH)
    assert setup("", "")[0] == GALMORPH  # GALMORPH_ beats MLFLOW_TRACKING_URI here too (it used not to)
    assert setup(FLAG, str(clean_env / "arg-root")) == (FLAG, clean_env / "arg-root")
    assert os.environ["MLFLOW_TRACKING_URI"] == FLAG  # inherited by the component's child processes


class _Called(Exception):
    """Raised by a stand-in library call once it has recorded its arguments."""


def _recorder(monkeypatch, module, name, seen: dict):
    import mlflow

    def fake(*args, **kwargs):
        seen.update(kwargs, active_tracking_uri=mlflow.get_tracking_uri())
        raise _Called

    monkeypatch.setattr(module, name, fake)


def test_train_follows_the_environment(clean_env, monkeypatch):
    import galmorph.training.runner as runner

    man = clean_env / "m.parquet"
    man.write_bytes(b"")
    seen: dict = {}
    _recorder(monkeypatch, runner, "train", seen)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", MLFLOW)  # used to be ignored by `galmorph train`
    monkeypatch.setenv("GALMORPH_DATA_ROOT", str(clean_env / "env-root"))
    r = _cli(["train", "--task", "chirality", "--manifest", str(man)])
    assert isinstance(r.exception, _Called), r.output
    assert seen["tracking_uri"] == MLFLOW and seen["data_root"] == clean_env / "env-root"
    assert CHECKED[-1] == MLFLOW  # the server checked is the one resolved
    r = _cli(["train", "--task", "chirality", "--manifest", str(man), "--tracking-uri", FLAG,
              "--data-root", str(clean_env / "flag-root")])
    assert isinstance(r.exception, _Called), r.output
    assert seen["tracking_uri"] == FLAG and seen["data_root"] == clean_env / "flag-root"


def test_score_follows_the_environment(clean_env, monkeypatch):
    import galmorph.scoring.batch as scoring

    man = clean_env / "m.parquet"
    man.write_bytes(b"")
    seen: dict = {}
    _recorder(monkeypatch, scoring, "score_manifest", seen)
    import galmorph.scoring.run as run  # scoring now loads the model first (its recorded defaults): not here
    monkeypatch.setattr(run, "_model", lambda job, device: job.model)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", MLFLOW)  # used to be ignored by `galmorph score`
    monkeypatch.setenv("GALMORPH_DATA_ROOT", str(clean_env / "env-root"))
    args = ["score", "--model", "chirality", "--manifest", str(man), "--out", str(clean_env / "out")]
    r = _cli(args)
    assert isinstance(r.exception, _Called), r.output
    assert seen["active_tracking_uri"] == MLFLOW and seen["data_root"] == clean_env / "env-root"
    r = _cli([*args, "--tracking-uri", FLAG, "--data-root", str(clean_env / "flag-root"), "--shards", "0-2,5"])
    assert isinstance(r.exception, _Called), r.output
    assert seen["active_tracking_uri"] == FLAG and seen["data_root"] == clean_env / "flag-root"
    assert seen["shards"] == [0, 1, 2, 5]


def test_drift_follows_the_environment(clean_env, monkeypatch):
    import galmorph.drift as drift

    seen: dict = {}
    _recorder(monkeypatch, drift, "run_drift", seen)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", MLFLOW)  # used to be skipped when MLFLOW_TRACKING_URI was set
    monkeypatch.setenv("GALMORPH_MLFLOW_TRACKING_URI", GALMORPH)
    monkeypatch.setenv("GALMORPH_DATA_ROOT", str(clean_env / "env-root"))
    args = ["drift", "--reference", "r.parquet", "--current", "c.parquet", "--no-workspace",
            "--mlflow-run-id", "abc", "--out", str(clean_env / "o")]
    r = _cli(args)
    assert isinstance(r.exception, _Called), r.output
    assert seen["active_tracking_uri"] == GALMORPH and seen["data_root"] == clean_env / "env-root"
    r = _cli([*args, "--data-root", str(clean_env / "flag-root"), "--tracking-uri", FLAG])  # drift had no flags
    assert isinstance(r.exception, _Called), r.output
    assert seen["active_tracking_uri"] == FLAG and seen["data_root"] == clean_env / "flag-root"


def test_evaluate_resolves_a_task_name_and_follows_the_environment(clean_env, monkeypatch):
    import galmorph.evaluation as evaluation

    man = clean_env / "m.parquet"
    man.write_bytes(b"")
    seen: dict = {}

    def fake(uri, manifest, out_dir, **kw):
        import mlflow

        seen.update(kw, uri=uri, active_tracking_uri=mlflow.get_tracking_uri())
        raise _Called

    monkeypatch.setattr(evaluation, "evaluate", fake)
    monkeypatch.setenv("GALMORPH_MLFLOW_TRACKING_URI", GALMORPH)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", MLFLOW)
    r = _cli(["evaluate", "--model", "arms", "--manifest", str(man), "--out", str(clean_env / "o")])
    assert isinstance(r.exception, _Called), r.output
    assert seen["uri"] == "models:/galmorph-arms@champion" and seen["active_tracking_uri"] == GALMORPH
