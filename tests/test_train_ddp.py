"""Data-parallel training (#28, Lightning DDP): two CPU processes (gloo) train the simulator's tiny chirality
model and take the same steps as one process at the same total batch; every sample is seen once per epoch
across the ranks; only rank 0 tracks (one MLflow parent run, one trial run, one model version) and the world
size is recorded; the decoded-image cache is built once by concurrent processes; an interrupted training
resumes from its last epoch into the same MLflow runs."""

from __future__ import annotations

import json
import multiprocessing
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from galmorph.datasets.datamodule import EpochOrder, ShardedBatchSampler, global_batches
from galmorph.training import train
from galmorph.training.config import ConfigError, resolve_config

#: Overrides of the tiny preset for the DDP-vs-one-process comparison. No augmentation (random rotations would
#: differ between the runs). 64 px: at 32 px the last ResNet stage is 1x1 and torch's own float32 batch norm is
#: ill-conditioned there (some gradients of a one-process run are 18 % off float64), so the reference itself
#: would be noise. SGD: Adam's first steps move every weight by +-lr whatever the size of its gradient, so
#: float rounding in a near-zero gradient becomes a whole step; SGD shows the steps as they are.
SAME_STEPS = {"image_size": 64, "optimizer": "sgd", "lr": 0.05, "rotation_deg": 0.0, "zoom": 0.0, "max_epochs": 2,
              "min_epochs": 2, "patience": 5, "progress": False, "record_samples": True, "accelerator": "cpu"}
#: Both runs start from the same weights and step through the same global batches of 16 (the one-process run
#: with ``data_order=sharded``); DDP averages the two ranks' gradients over 8 images each and batch norm
#: normalises with the statistics of all 16, so the runs take the same SGD steps. What differs is float32
#: summation order (the all-reduces), ~1e-7 relative per step (measured 2e-7 on the weights after 4 steps):
#: 1e-4 on the class probabilities leaves a wide margin and still fails for any real difference (one image
#: seen twice, a rank's own batch-norm statistics, gradients summed instead of averaged: all >= 1e-3).
PROB_TOL = 1e-4


# ---------------------------------------------------------------------------------------------------------
# the sharded sampler (no training)
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,batch,world", [(30, 16, 2), (9, 16, 2), (33, 8, 4), (17, 16, 2), (31, 6, 3), (5, 4, 4)])
def test_every_item_once_per_epoch_in_shares_of_the_global_batches(n, batch, world):
    per_rank = []
    for rank in range(world):
        s = ShardedBatchSampler(EpochOrder(n, True, seed=3), batch, rank, world)
        s.sampler.set_epoch(1)
        per_rank.append(list(s))
    assert len({len(b) for b in per_rank}) == 1, "every rank takes the same number of steps"
    assert all(len(b) > 0 for batches in per_rank for b in batches), "no rank gets an empty batch"
    drawn = [i for batches in per_rank for b in batches for i in b]
    assert sorted(drawn) == list(range(n)), "each item exactly once: no padding, no duplicate, none dropped"
    order = EpochOrder(n, True, seed=3)
    order.set_epoch(1)
    order = list(order)
    for k, (start, stop) in enumerate(global_batches(n, batch, world)):  # the ranks share out each global batch
        shares = [per_rank[r][k] for r in range(world)]
        assert sorted(i for s in shares for i in s) == sorted(order[start:stop])
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    tail = n % batch
    if tail == 0 or tail >= world:  # the same global batches as one process (always for two processes)
        assert global_batches(n, batch, world) == global_batches(n, batch, 1)
    assert global_batches(n, batch, 2) == global_batches(n, batch, 1)


def test_epochs_reshuffle_and_a_short_tail_is_merged():
    order = EpochOrder(20, True, seed=0)
    first = list(order)
    order.set_epoch(1)
    assert sorted(first) == sorted(order) and first != list(order)
    assert global_batches(33, 16, 2) == [(0, 16), (16, 33)]  # a tail of 1 joins the batch before
    assert global_batches(33, 16, 1) == [(0, 16), (16, 33)]  # (one process: no training batch of one image)
    assert global_batches(34, 16, 2) == [(0, 16), (16, 32), (32, 34)]
    assert global_batches(35, 16, 4) == [(0, 16), (16, 35)]  # a tail of 3 < 4 ranks
    with pytest.raises(ValueError, match="cannot be shared"):
        ShardedBatchSampler(EpochOrder(1, False, 0), 16, 0, 2)


def test_config_checks_the_world():
    with pytest.raises(ConfigError, match="multiple of devices x num_nodes"):
        resolve_config("chirality", "tiny", {"devices": 3})  # batch 16 is the global batch
    with pytest.raises(ConfigError, match="accelerator"):
        resolve_config("chirality", "tiny", {"accelerator": "tpu"})
    cfg = resolve_config("chirality", "tiny", {"devices": 2, "num_nodes": 2})
    assert cfg.world_size == 4


def test_a_launched_world_must_match_the_config(monkeypatch):
    from galmorph.training.ddp import process_rank

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert process_rank(resolve_config("chirality", "tiny", {"devices": 2})) == 1
    with pytest.raises(ConfigError, match="rank 1 of 2"):
        process_rank(resolve_config("chirality", "tiny"))


def test_cli_takes_the_options_the_trainjob_passes(sim_chirality):
    from click.testing import CliRunner

    from galmorph.cli import main

    args = ["train", "--task", "chirality", "--manifest", str(sim_chirality["manifest"]), "--show-config"]
    r = CliRunner().invoke(main, [*args, "--devices", "2", "--num-nodes", "1", "--accelerator", "cpu"])
    assert r.exit_code == 0, r.output
    assert "devices: 2" in r.output and "num_nodes: 1" in r.output and "accelerator: cpu" in r.output
    r = CliRunner().invoke(main, [*args, "--devices", "3"])
    assert r.exit_code != 0 and "multiple of devices x num_nodes" in r.output


# ---------------------------------------------------------------------------------------------------------
# the decoded-image cache across processes
# ---------------------------------------------------------------------------------------------------------
def _build_cache(root, uris, log_path, barrier):
    import galmorph.datasets.images as images

    real = images.load_image

    def counting(path, *a, **kw):
        with open(log_path, "a") as fh:
            fh.write(f"{path}\n")
        return real(path, *a, **kw)

    images.load_image = counting
    barrier.wait()
    cache = images.DecodedImageCache(root, uris).build()
    assert cache.complete


def test_concurrent_ranks_build_the_image_cache_once(sim_chirality, tmp_path):
    from galmorph.catalogue.manifest import resolve_image_uri
    from galmorph.datasets.images import DecodedImageCache
    from galmorph.imaging.io import load_image

    uris = pd.read_parquet(sim_chirality["manifest"])["image_uri"].astype(str).tolist()[:12]
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    log = tmp_path / "decodes.txt"
    procs = [ctx.Process(target=_build_cache, args=(tmp_path / "cache", uris, log, barrier)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert len(log.read_text().splitlines()) == len(set(uris)), "one process decoded, the other waited"
    cache = DecodedImageCache(tmp_path / "cache", uris)
    assert cache.complete and [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(".")] == \
        [cache.version]
    for u in uris[:3]:
        assert np.array_equal(cache.get(u), load_image(resolve_image_uri(u, None)))


# ---------------------------------------------------------------------------------------------------------
# two processes vs one
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def one_and_two(mlflow_server, sim_chirality, tmp_path_factory):
    tag = uuid.uuid4().hex[:8]
    runs = {}
    for world in (1, 2):
        overrides = {**SAME_STEPS, "devices": world, "data_order": "sharded"}
        exp = f"ddp-{world}-{tag}"
        res = train("chirality", "tiny", overrides, manifest=sim_chirality["manifest"], tracking_uri=mlflow_server,
                    experiment=exp, out_dir=tmp_path_factory.mktemp(f"ddp-{world}"))
        runs[world] = (res, exp)
    return runs


def _recorded(out_dir: Path, name: str, rank: int, epoch: int) -> list[list[int]]:
    lines = (out_dir / "trial-0" / "samples" / f"{name}-rank{rank}-epoch{epoch}.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def test_two_processes_take_the_steps_of_one(one_and_two, sim_chirality):
    (one, _), (two, _) = one_and_two[1], one_and_two[2]
    assert two.registered_version and two.registered_version != one.registered_version
    a, b = mlflow.pytorch.load_model(one.model_uri), mlflow.pytorch.load_model(two.model_uri)
    from galmorph.datasets.images import ManifestImageDataset

    ds = ManifestImageDataset(pd.read_parquet(sim_chirality["manifest"]), 64, 3)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.inference_mode():
        pa, pb = torch.softmax(a(x), 1), torch.softmax(b(x), 1)
    assert float((pa - pb).abs().max()) < PROB_TOL
    for k in ("test_accuracy", "test_f1_macro", "epochs", "global_step"):
        assert one.metrics[k] == two.metrics[k], k
    assert two.metrics["best_val_loss"] == pytest.approx(one.metrics["best_val_loss"], abs=1e-5)


def test_each_sample_once_per_epoch_across_ranks(one_and_two):
    (one, _), (two, _) = one_and_two[1], one_and_two[2]
    splits = pd.read_parquet(two.out_dir / "trial-0-artifacts" / "splits.parquet")
    for name in ("train", "val"):
        n = int((splits["split"] == name).sum())
        for epoch in (0, 1):
            r0, r1 = _recorded(two.out_dir, name, 0, epoch), _recorded(two.out_dir, name, 1, epoch)
            seen = [i for batches in (r0, r1) for b in batches for i in b]
            assert sorted(seen) == list(range(n)), f"{name} epoch {epoch}: each sample once, none twice, none skipped"
            assert len(r0) == len(r1) and all(abs(len(p) - len(q)) <= 1 for p, q in zip(r0, r1))
            single = _recorded(one.out_dir, name, 0, epoch)  # the one-process run's global batches
            assert [sorted(p + q) for p, q in zip(r0, r1)] == [sorted(b) for b in single]


def test_only_rank_zero_tracks_and_the_world_size_is_recorded(one_and_two):
    client = mlflow.MlflowClient()
    for world, (res, exp) in one_and_two.items():
        runs = mlflow.search_runs(experiment_names=[exp], output_format="list")
        parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        assert len(runs) == 2 and [p.info.run_id for p in parents] == [res.parent_run_id], "one parent, one trial"
        for r in runs:
            assert r.data.params["world_size"] == str(world) and r.data.tags["galmorph.world_size"] == str(world)
            assert r.data.params["devices"] == str(world) and r.info.status == "FINISHED"
        versions = [v for v in client.search_model_versions("name='galmorph-chirality'")
                    if v.run_id in {r.info.run_id for r in runs}]
        assert [v.version for v in versions] == [res.registered_version], "one model version"
        assert versions[0].tags["world_size"] == str(world) and res.spec.extra["world_size"] == world


# ---------------------------------------------------------------------------------------------------------
# resume (one process)
# ---------------------------------------------------------------------------------------------------------
def test_an_interrupted_training_resumes_from_its_last_epoch(mlflow_server, sim_chirality, tmp_path, monkeypatch):
    from galmorph.training import runner

    real = runner._epoch_logger_cls

    def killed_after_first_epoch():
        class Killed(real()):
            def on_train_epoch_start(self, trainer, pl_module):  # killed early in the second epoch
                if trainer.current_epoch == 1:
                    raise RuntimeError("worker killed")
                super().on_train_epoch_start(trainer, pl_module)

        return Killed

    exp = f"ddp-resume-{uuid.uuid4().hex[:8]}"
    kw = dict(manifest=sim_chirality["manifest"], tracking_uri=mlflow_server, experiment=exp, out_dir=tmp_path,
              register=False)
    overrides = {"progress": False, "max_epochs": 3, "min_epochs": 3, "patience": 5}
    monkeypatch.setattr(runner, "_epoch_logger_cls", killed_after_first_epoch)
    with pytest.raises(RuntimeError, match="worker killed"):
        train("chirality", "tiny", overrides, **kw)
    assert (tmp_path / "trial-0" / "checkpoints" / "resume.ckpt").is_file()
    monkeypatch.setattr(runner, "_epoch_logger_cls", real)
    res = train("chirality", "tiny", overrides, **kw)
    steps_per_epoch = 2  # 30 training images in global batches of 16
    assert res.metrics["epochs"] == 3 and res.metrics["global_step"] == 3 * steps_per_epoch
    history = pd.read_csv(mlflow.artifacts.download_artifacts(run_id=res.run_id, artifact_path="history.csv"))
    assert history["epoch"].tolist() == [1, 2], "the resumed attempt trained the two remaining epochs"
    runs = mlflow.search_runs(experiment_names=[exp], output_format="list")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}, "the same parent and trial runs"
    client = mlflow.MlflowClient()
    assert sorted(m.step for m in client.get_metric_history(res.run_id, "val_loss")) == [0, 1, 2]
    state = json.loads((tmp_path / "training-state.json").read_text())
    assert state["status"] == "complete" and state["attempts"] == 2
    from galmorph.training.resume import plan

    # a complete training is not resumed: the same call again would train afresh, into new runs
    cfg, man = resolve_config("chirality", "tiny", overrides), pd.read_parquet(sim_chirality["manifest"])
    assert not plan(cfg, man, tmp_path).resuming and plan(cfg, man, tmp_path).trials == ["fresh"]
