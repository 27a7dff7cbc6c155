"""Data-parallel training (#28): who this process is in a DDP world, the local launch of the ranks, and what
one process does not need but several do -- batch-norm statistics, epoch metrics and the macro-F1 over all
ranks.

Launch. :func:`galmorph.training.train` with ``devices * num_nodes > 1``

* inside a launched world (``RANK`` and ``WORLD_SIZE`` set: ``torchrun``, the nodes of a Kubeflow TrainJob,
  :mod:`galmorph.training.trainjob`), this process is one rank and trains in place; Lightning's DDP strategy
  takes the world from torchelastic's environment;
* otherwise (the CLI, a KFP step, a notebook), :func:`launch_local` runs ``devices`` ranks on this machine
  under ``torchrun --standalone`` (``python -m galmorph.training.rank SPEC`` each), waits, and returns
  the result rank 0 wrote. Not Lightning's own launcher: that one re-runs ``sys.argv`` (right for a script,
  wrong for a library call inside a KFP executor or pytest) and never restarts a failed rank; torchrun
  restarts the ranks after a failure (``max_restarts``; they resume from the last checkpoint,
  :mod:`galmorph.training.resume`) and is what the TrainJob's nodes run, so both paths are one.

Only rank 0 talks to MLflow (one parent run, one child run per trial, one model version); the other ranks
train and leave. ``batch_size`` is the global batch (``batch_size / world size`` per rank), each rank takes
its own shard of every epoch (:class:`galmorph.datasets.datamodule.ShardedBatchSampler`: no item twice,
none skipped) and, with ``sync_batchnorm``, batch norm normalises with the statistics of the global batch
(:func:`global_batch_norm`), so a DDP run takes the steps of one process at the same total batch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from galmorph.models.classifier import GalaxyClassifier
from galmorph.training.config import ConfigError, TrainConfig

log = logging.getLogger(__name__)

#: Files of a local launch in the training's working folder.
SPEC_FILE, RESULT_FILE = "ddp-launch.json", "ddp-result.json"


# ----------------------------------------------------------------------------------------------
# the world
# ----------------------------------------------------------------------------------------------
def launched_world() -> tuple[int, int] | None:
    """``(rank, world size)`` when a launcher started this process as a rank (``RANK``/``WORLD_SIZE``), else None."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    return None


def process_rank(cfg: TrainConfig) -> int:
    """This process's global rank in ``cfg``'s world (0 when it trains alone); a launched world must have the
    size ``cfg`` asks for (``devices * num_nodes``)."""
    world = launched_world()
    if world is None or (world[1] == 1 and cfg.world_size == 1):
        return 0
    if world[1] != cfg.world_size:
        raise ConfigError(f"this process is rank {world[0]} of {world[1]} (RANK/WORLD_SIZE from the launcher), but "
                          f"devices x num_nodes = {cfg.devices} x {cfg.num_nodes} = {cfg.world_size}: pass the "
                          "launcher's processes per node as --devices and its nodes as --num-nodes")
    return world[0]


def uses_gpu(cfg: TrainConfig) -> bool:
    import torch

    return cfg.accelerator in ("gpu", "cuda") or (cfg.accelerator == "auto" and torch.cuda.is_available())


def ddp_strategy(cfg: TrainConfig):
    """Lightning's DDP strategy: NCCL between GPUs, gloo between CPU processes."""
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(process_group_backend="nccl" if uses_gpu(cfg) else "gloo")


def world_size_of(trainer) -> int:
    return int(getattr(trainer, "world_size", 1) or 1) if trainer is not None else 1


def gather_objects(trainer, obj: Any) -> list[Any]:
    """``obj`` of every rank (rank order); ``[obj]`` in a one-process run."""
    if world_size_of(trainer) == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def sum_over_ranks(trainer, pl_module, value: float) -> float:
    """``value`` summed over the ranks (itself in a one-process run)."""
    if world_size_of(trainer) == 1:
        return value
    import torch

    t = torch.tensor(float(value), dtype=torch.float64 if pl_module.device.type == "cpu" else torch.float32,
                     device=pl_module.device)
    return float(trainer.strategy.reduce(t, reduce_op="sum"))


class SyncedClassifier(GalaxyClassifier):
    """:class:`~galmorph.models.classifier.GalaxyClassifier` whose logged epoch metrics (``val_loss``,
    ``val_acc``, ...) are reduced over the ranks (``sync_dist``: the sums and the image counts, so an epoch's
    mean is the mean over all its images), so that every rank's checkpoint and early-stopping decisions see
    the same numbers. Its checkpoints load as ``GalaxyClassifier``.

    The image counts are passed as floats: Lightning averages the ranks' sums and counts, dividing in place,
    and an integer count is truncated when the shards differ in size (5 and 4 images -> 4, not 4.5)."""

    def log(self, name, value, *args, **kwargs):
        kwargs["sync_dist"] = True
        if kwargs.get("batch_size") is not None:
            kwargs["batch_size"] = float(kwargs["batch_size"])
        return super().log(name, value, *args, **kwargs)


# ----------------------------------------------------------------------------------------------
# batch norm over the global batch
# ----------------------------------------------------------------------------------------------
def _sum_over_ranks_autograd(t):
    """``t`` summed over the ranks, differentiably: the backward sums the incoming gradients over the ranks
    (every rank's loss depends on every rank's share of the sum)."""
    import torch
    import torch.distributed as dist

    class _AllReduceSum(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            out = x.clone()
            dist.all_reduce(out, op=dist.ReduceOp.SUM)
            return out

        @staticmethod
        def backward(ctx, grad):
            g = grad.clone()
            dist.all_reduce(g, op=dist.ReduceOp.SUM)
            return g

    return _AllReduceSum.apply(t)


def _global_stats_batch_norm(x, running_mean, running_var, weight, bias, momentum: float, eps: float):
    """Training-mode batch norm of this rank's ``x`` with the mean and variance of the whole global batch.

    Each rank's count, mean and sum of squared deviations (two-pass, as torch computes them; ``E[x^2] -
    E[x]^2`` loses the variance when it is small against the mean) are exchanged by one differentiable
    all-reduce (rank ``r`` fills row ``r``; its backward sums the gradients over the ranks, as torch's
    SyncBatchNorm's does) and combined exactly (Chan et al.)."""
    import torch
    import torch.distributed as dist

    c = x.shape[1]
    xf = x.float()
    dims = [0, *range(2, x.dim())]
    n_local = float(x.numel() // c)
    mean_local = xf.mean(dims)
    shape = [1, c] + [1] * (x.dim() - 2)
    m2_local = ((xf - mean_local.view(shape)) ** 2).sum(dims)
    rows = torch.zeros(dist.get_world_size(), 2 * c + 1, dtype=torch.float32, device=x.device)
    mine = torch.cat([mean_local, m2_local, torch.full((1,), n_local, dtype=torch.float32, device=x.device)])
    rows = rows.index_copy(0, torch.tensor([dist.get_rank()], device=x.device), mine[None])
    rows = _sum_over_ranks_autograd(rows)
    means, m2s, ns = rows[:, :c], rows[:, c:2 * c], rows[:, 2 * c:]
    n = ns.sum()
    mean = (ns * means).sum(0) / n
    var = ((m2s + ns * (means - mean) ** 2).sum(0) / n).clamp_min(0.0)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():
            m = float(momentum)
            running_mean.mul_(1 - m).add_(mean.detach().to(running_mean.dtype), alpha=m)
            unbiased = var.detach() * (n / (n - 1)) if float(n) > 1 else var.detach()
            running_var.mul_(1 - m).add_(unbiased.to(running_var.dtype), alpha=m)
    y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if weight is not None:
        y = y * weight.float().view(shape)
    if bias is not None:
        y = y + bias.float().view(shape)
    return y.to(x.dtype)


@contextlib.contextmanager
def global_batch_norm(enabled: bool = True):
    """Within the block, every batch-norm layer in training mode (``torch.nn.functional.batch_norm``, which
    torch's, timm's and escnn's batch-norm modules all call) normalises with the statistics of the global
    batch whenever a process group of more than one rank is up; otherwise it is torch's own. The one
    mechanism for CPU (gloo; torch's SyncBatchNorm runs only on GPUs) and GPU (NCCL), and for layers that
    ``convert_sync_batchnorm`` would break (timm's BatchNormAct2d). The state-dict keys do not change."""
    import torch.distributed as dist
    import torch.nn.functional as F

    original = F.batch_norm
    if not enabled:
        yield
        return

    def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                   eps=1e-5):
        if training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return _global_stats_batch_norm(input, running_mean, running_var, weight, bias, momentum, eps)
        return original(input, running_mean, running_var, weight, bias, training, momentum, eps)

    F.batch_norm = batch_norm
    try:
        yield
    finally:
        F.batch_norm = original


# ----------------------------------------------------------------------------------------------
# the local launch
# ----------------------------------------------------------------------------------------------
def launch_local(cfg: TrainConfig, task: str, preset: str, overrides: dict[str, Any] | None, manifest,
                 experiment: str | None, register: bool, data_root, out_dir) -> dict[str, Any]:
    """Train ``cfg``'s ``devices`` ranks on this machine under ``torchrun --standalone`` (each runs
    ``python -m galmorph.training.rank SPEC``) and return what rank 0 wrote (the ranks' output goes to this
    process's stderr)."""
    import mlflow
    import pandas as pd

    if cfg.num_nodes > 1:
        raise ConfigError(f"num_nodes={cfg.num_nodes}: training on several nodes needs a launcher on every node "
                          "(torchrun, or a Kubeflow TrainJob: galmorph trainjob / the train step's workers)")
    work = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix=f"galmorph-train-{task}-"))
    work.mkdir(parents=True, exist_ok=True)
    if isinstance(manifest, pd.DataFrame):
        manifest.to_parquet(work / "ddp-manifest.parquet", index=False)
        manifest = work / "ddp-manifest.parquet"
    spec = {"task": task, "preset": preset, "overrides": overrides or {}, "manifest": str(manifest),
            "tracking_uri": mlflow.get_tracking_uri(), "experiment": experiment, "register": register,
            "data_root": str(data_root) if data_root else None, "out_dir": str(work)}
    (work / SPEC_FILE).write_text(json.dumps(spec, indent=2, default=str))
    (work / RESULT_FILE).unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={cfg.devices}",
           f"--max-restarts={cfg.max_restarts}", "-m", "galmorph.training.rank", str(work / SPEC_FILE)]
    env = {**os.environ, "MLFLOW_REGISTRY_URI": mlflow.get_registry_uri() or spec["tracking_uri"]}
    log.info("data-parallel training: %d ranks under torchrun (%s)", cfg.devices, " ".join(cmd[1:]))
    rc = subprocess.call(cmd, env=env, stdout=_stderr_fd(), cwd=os.getcwd())
    if rc != 0 or not (work / RESULT_FILE).is_file():
        raise RuntimeError(f"data-parallel training of {task}/{preset} on {cfg.devices} processes failed "
                           f"(torchrun exit status {rc}; the ranks' output is above)")
    return json.loads((work / RESULT_FILE).read_text())


def _stderr_fd():
    try:
        return sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a captured stream without a file descriptor
        return None
