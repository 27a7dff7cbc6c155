"""`galmorph promote`: guarded champion/challenger promotion and rollback in the MLflow registry."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from galmorph.cli.base import echo_json, fail, main
from galmorph.cli.options import (audit_log_option, data_root_option, json_option, tracking_uri_option,
                                use_tracking_uri)


@main.command("promote")
@click.option("--task", required=True, help="Task whose registered model galmorph-<task> is promoted.")
@click.option("--version", default=None, help="Candidate version [default: the latest].")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Evaluation manifest on which candidate and champion are compared (required unless --rollback).")
@click.option("--rollback", is_flag=True, help="Restore @previous-champion as @champion instead.")
@click.option("--reason", default="", help="Free-text reason recorded with a rollback.")
@click.option("--primary-metric", default=None, help="Metric that must improve [policy default: f1_macro].")
@click.option("--delta", type=float, default=None, help="Minimum improvement of the primary metric [policy: 0].")
@click.option("--epsilon", type=float, default=None,
              help="Largest allowed drop of any redshift-bin AUC [policy: 0.05].")
@click.option("--min-bin-n", type=click.IntRange(1), default=None, help="Smallest bin compared [policy: 10].")
@click.option("--params", "params_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="YAML whose 'promotion:' section holds the policy [default: settings.params_file].")
@audit_log_option()
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the two evaluation reports go [default: <state_dir>/promotions].")
@data_root_option()
@tracking_uri_option()
@click.option("--fail-on-reject", is_flag=True, help="Exit with code 3 when the candidate is rejected.")
@json_option("Print the decision as JSON.")
def promote_cmd(task, version, manifest, rollback, reason, primary_metric, delta, epsilon, min_bin_n, params_file,
                audit_log, out_dir, data_root, tracking_uri, fail_on_reject, as_json) -> None:
    """Compare a candidate with the current @champion on the same evaluation manifest and move the
    aliases: pass -> @champion (the old one becomes @previous-champion); fail -> @challenger with the
    reasons printed. The first model becomes champion. Every decision is appended to the audit log
    and tagged on the model versions. Concurrent promotions of one registry are serialised by one lock
    (GALMORPH_LOCK_URL, else derived from the tracking URI; never from the audit log); a promotion that
    loses a race to a writer outside the lock says so and exits non-zero.
    """
    from galmorph.promotion.policy import PromotionPolicy
    from galmorph.promotion.registry import PromotionError, promote, rollback as do_rollback
    from galmorph.settings import resolve_settings

    s = resolve_settings(tracking_uri=tracking_uri, data_root=data_root, audit_log=audit_log)
    audit_log = s.audit_log
    try:
        # the policy first (a usage error, whatever the server): a file the user named (--params,
        # GALMORPH_PARAMS_FILE) must exist, the default may be absent (the default policy)
        policy = None if rollback else PromotionPolicy.from_params(
            params_file or s.params_file, missing_ok=params_file is None and "params_file" not in s.model_fields_set,
            primary_metric=primary_metric, min_improvement=delta, max_bin_auc_drop=epsilon, min_bin_n=min_bin_n)
        use_tracking_uri(s)
        if rollback:
            dec = do_rollback(task, audit_log=audit_log, reason=reason, lock_url=s.lock_url)
        else:
            if manifest is None:
                _fail("--manifest is required to promote (the evaluation set on which candidate and champion are "
                      "compared)", as_json)
            dec = promote(task, version, eval_manifest=manifest, audit_log=audit_log, policy=policy,
                          out_dir=out_dir or (s.state_dir / "promotions"), data_root=s.data_root, lock_url=s.lock_url)
    except (PromotionError, ValueError) as exc:
        _fail(str(exc), as_json)
    except OSError as exc:  # an unwritable state dir / audit log (read-only, not a folder, disk full)
        _fail(f"cannot write the promotion state (audit log {audit_log}, state dir {s.state_dir}): "
              f"{exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else ""), as_json)
    if as_json:
        echo_json(dec.to_dict())
    else:
        click.echo(dec.summary())
        click.echo(f"aliases now: champion=v{dec.champion_after} previous-champion=v{dec.previous_champion_after} "
                   f"challenger=v{dec.challenger_after}; audit log {audit_log}")
    if fail_on_reject and dec.decision == "rejected":
        sys.exit(3)


def _fail(msg: str, as_json: bool, code: int = 1) -> None:
    """``error: msg`` on stderr and exit ``code``; under ``--json`` stdout holds ``{"error": msg}`` too (one
    strict JSON document, as on success)."""
    if as_json:
        echo_json({"error": msg})
    fail(msg, code)
