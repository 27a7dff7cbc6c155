"""Shared by the speed benchmarks: the machine record (load average at the start, ``quiet``) and the
eager fp32 forward ceiling of an architecture measured in the same run."""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from pathlib import Path

QUIET_LOAD = 0.5  # a run is a result only when the 1-min load average at its start is below this


def machine() -> dict:
    """Record at the start of a benchmark: CPUs, platform, torch, load average; ``quiet`` when the
    1-min load average is below :data:`QUIET_LOAD` (only quiet runs are quoted as results)."""
    load = os.getloadavg()
    out = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
           "load_avg_at_start": [round(x, 2) for x in load], "quiet": load[0] < QUIET_LOAD,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    try:
        import torch

        out.update(torch=torch.__version__, torch_threads=torch.get_num_threads(),
                   cuda=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)
    except ImportError:  # pragma: no cover
        pass
    return out


def galmorph_exe() -> list[str]:
    """The installed `galmorph` console script beside this interpreter (what a user runs)."""
    exe = Path(sys.executable).parent / "galmorph"
    return [str(exe)] if exe.exists() else [shutil.which("galmorph") or "galmorph"]


def training_logging() -> None:
    """INFO logs for a training benchmark, with Lightning's, MLflow's and the HTTP/DB clients' chatter at WARNING."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("lightning", "lightning.pytorch", "mlflow", "urllib3", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def quiet_line(m: dict) -> str:
    la = m["load_avg_at_start"][0]
    return (f"Quiet run (load average {la:.2f} at the start)" if m["quiet"] else
            f"**UNDER LOAD -- not a result** (load average {la:.2f} at the start; results need < {QUIET_LOAD})")


def forward_ceiling(module, image_size: int, batch: int, seconds: float = 3.0, in_chans: int = 3,
                    channels_last: bool = False, backward: bool = False) -> float:
    """Images/s of the bare forward (or forward+backward) pass on random input, eager, fp32."""
    import torch

    x = torch.rand(batch, in_chans, image_size, image_size)
    m = module
    if channels_last:
        m = m.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if backward:
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=1e-3)
        y = torch.zeros(batch, dtype=torch.long)

        def step():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    else:
        try:
            m.eval()
        except NotImplementedError:  # a torch.export GraphModule (as loaded from MLflow) is already in eval
            pass

        def step():
            with torch.inference_mode():
                torch.softmax(m(x), dim=1)
    step()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 2:
        step()
        n += 1
    return batch * n / (time.perf_counter() - t0)
