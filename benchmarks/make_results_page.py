"""Generate docs/results.md from the committed results files in benchmarks/results/.

    uv run python benchmarks/make_results_page.py           # write docs/results.md (make results-page)
    uv run python benchmarks/make_results_page.py --check   # exit 1 when docs/results.md is stale

Every results file ``benchmarks/results/<name>.md`` (written by its benchmark script beside
``<name>.json``) becomes one section of the page, under a line naming the file and the command that
made it. Nothing else goes on the page: every number on it is a number of a committed results file.
A results file without an entry in :data:`SECTIONS` is an error (say which command made it), and so is
an entry without its file. ``results/quick/`` (smoke-test sizes) is never read.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
PAGE = REPO / "docs" / "results.md"

#: (area, results file stem, section title, make target or "", the command that made it, a note or ""), in
#: page order.
SECTIONS: tuple[tuple[str, str, str, str, str, str], ...] = (
    ("Data", "data", "Ingest, validation and cutout throughput", "bench-data",
     "uv run python benchmarks/bench_data.py", ""),
    ("Labelling aid: A1", "a1", "A1 speed against a per-annulus curve_fit baseline", "bench-a1",
     "uv run python benchmarks/bench_a1.py", ""),
    ("Labelling aid: A1", "a1_injection", "A1 injection recovery against S/N", "bench-a1_injection",
     "uv run python benchmarks/a1_injection.py", ""),
    ("Winding measurement", "winding", "Winding measurement on the public GZ1 CW/ACW galaxies (no training)",
     "bench-winding", "uv run python benchmarks/winding.py", ""),
    ("Training", "train", "Training loop against its forward + backward ceiling", "bench-train",
     "uv run python benchmarks/bench_train.py", ""),
    ("Training", "reference", "The `reference` presets through `galmorph train` and `galmorph score`, held-out real "
     "galaxies", "", "uv run python benchmarks/reference.py --tasks chirality --weights pretrained",
     "every figure is `galmorph score`'s output with its defaults; resumed runs (`--resume`) are listed in the file"),
    ("Training", "reference_earlier_route", "The `reference` presets against random weights, by the earlier route",
     "", "uv run python benchmarks/reference.py (before #26.4)",
     "the reference benchmark as it was before #26 made it run `galmorph train` and `galmorph score`: trained "
     "in-process with a 20 % internal test split nobody read, its \"catalogue prior\" row moved to the prior by the "
     "benchmark; kept for its random-weights and arms rows, which have not been rerun through the product"),
    ("Training", "reference_val_loss_preset",
     "The previous chirality `reference` preset (early stopping on the validation loss)", "",
     "uv run python benchmarks/reference.py",
     "with the chirality preset as it was before commit bb775f7, which made it stop on the validation macro-F1; "
     + "measured by the benchmark's earlier route (training in-process with a 20 % internal test split, probabilities "
     "moved to the catalogue prior by the benchmark), before #26 made it run `galmorph train` and `galmorph score`"),
    ("Training", "reference_n_other_1000", "Variant: 1000 \"other\" galaxies in the chirality training part", "",
     "uv run python benchmarks/reference.py --tasks chirality --weights pretrained --n-other 1000 --split-order 2 "
     "--out DIR", "a variant writes to its own folder; its reference.md/json were committed under this name; "
     "measured by the benchmark's earlier route (see above)"),
    ("Training", "reference_crop030", "Variant: chirality crop 0.30 instead of 0.40", "",
     "uv run python benchmarks/reference.py --tasks chirality --weights pretrained --split-order 2 "
     "--set crop_fraction=0.30 --out DIR",
     "a variant writes to its own folder; its reference.md/json were committed under this name; measured by the "
     "benchmark's earlier route (see above)"),
    ("Training", "ddp", "Data-parallel training: DDP against one process (CPU correctness run)", "bench-ddp",
     "uv run python benchmarks/bench_ddp.py", "2 CPU cores: the DDP processes share them; not a speed result"),
    ("Training", "learning_curve", "Chirality learning curve", "bench-learning_curve",
     "uv run python benchmarks/learning_curve.py", "its points are in `benchmarks/results/learning_curve/`; "
     "measured by the reference benchmark's earlier route (see above)"),
    ("Training", "ensemble_weight", "Weight of the winding measurement in the network + winding ensemble", "",
     "uv run python benchmarks/ensemble_weight.py", ""),
    ("Training", "arms_probe", "Arms: linear probe on frozen encoder features", "bench-arms_probe",
     "uv run python benchmarks/arms_probe.py", ""),
    ("Evaluation", "physical", "Lopsided × Hart: stellar masses", "bench-physical",
     "uv run python benchmarks/physical_lopsided.py", ""),
    ("Scoring", "scoring", "Batch scoring against the eager forward ceiling", "bench-scoring",
     "uv run python benchmarks/bench_scoring.py", ""),
    ("Scoring", "scoring_trained", "Batch scoring of a trained model", "",
     "uv run python benchmarks/bench_scoring.py --trained-model URI --tracking-uri URI", ""),
    ("Scoring", "release", "A release end to end (ingest, validate, score, merge)", "bench-release",
     "uv run python benchmarks/bench_release.py", ""),
    ("Scoring", "rescoring", "The rescoring pipeline itself (kfp local runner, defaults)", "bench-rescoring",
     "uv run python benchmarks/bench_rescoring.py", ""),
    ("Scoring", "rescoring_reference", "The rescoring pipeline with the chirality reference model as champion", "",
     "uv run python benchmarks/bench_rescoring.py --model reference --no-fp32", ""),
    ("Scoring", "rescoring_memory", "The rescoring pipeline's memory from 20 000 to 200 000 rows", "",
     "uv run python benchmarks/bench_rescoring.py --memory 20000,200000",
     "memory, not speed: the wall times in it are not speed results"),
    ("Containers", "containers", "Container images: build times, sizes, component start", "bench-containers",
     "uv run python benchmarks/containers.py", ""),
    ("Soak", "soak_labels", "Soak: labellers posting through the label server while exports run", "bench-soak_labels",
     "uv run python benchmarks/soak_labels.py",
     "under load the server took fewer labels than planned before sending stopped at the wall-clock limit: see the file"),
    ("Soak", "soak_scoring", "Soak: a large manifest scored through kill -9 and an MLflow server restart",
     "bench-soak_scoring", "uv run python benchmarks/soak_scoring.py", ""),
    ("Soak", "soak_promotions", "Soak: promotions racing from four processes", "",
     "uv run python benchmarks/soak_promotions.py --ops 8", "fewer operations than the default 50: see the file"),
)

HEADER = """# Results

<!-- Generated by benchmarks/make_results_page.py from benchmarks/results/: do not edit by hand.
     Regenerate with `make results-page`; tests/test_results_page.py fails when this page is stale. -->

Every number on this page comes from a committed results file in `benchmarks/results/`; each section
names its file and the command that made it. The machine: 2 CPU cores, no GPU. Each results file
records when it ran and the load average at its start: speed figures count as results only from runs
started on a quiet machine (load average below 0.5), which the files say; accuracies come from seeded
splits and seeded training, which the load does not change. `make benchmarks` reruns them all
(`make bench-<name>` one at a time; `QUICK=1` gives smoke-test sizes, written to a `quick/` folder
beside the results: they are not results and are not on this page).
"""


class ResultsPageError(RuntimeError):
    """The results folder and :data:`SECTIONS` disagree (the message names the files)."""


def _demote(md: str, levels: int = 2) -> str:
    """Markdown headings ``levels`` deeper (at most ######), outside code fences."""
    out, fenced = [], False
    for line in md.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"^(#{1,6})(\s.*)$", line)
        out.append(f"{'#' * min(6, len(m.group(1)) + levels)}{m.group(2)}" if m else line)
    return "\n".join(out).strip()


def _check_files(results: Path) -> None:
    listed = {stem for _area, stem, *_rest in SECTIONS}
    present = {p.stem for p in results.glob("*.md")}
    problems = []
    for stem in sorted(present - listed):
        problems.append(f"benchmarks/results/{stem}.md has no entry in SECTIONS of benchmarks/make_results_page.py "
                        "(add its title and the command that made it)")
    for stem in sorted(listed - present):
        problems.append(f"SECTIONS lists {stem}, but benchmarks/results/{stem}.md does not exist")
    if problems:
        raise ResultsPageError("\n".join(problems))


def render(results: Path = RESULTS) -> str:
    """The page's text, from the results files under ``results``."""
    _check_files(results)
    parts = [HEADER.strip(), "", "Contents: " + " · ".join(
        f"[{area}](#{area.lower().replace(':', '').replace(' ', '-')})"
        for area in dict.fromkeys(a for a, *_rest in SECTIONS)), ""]
    area_now = None
    for area, stem, title, target, command, note in SECTIONS:
        if area != area_now:
            parts += [f"## {area}", ""]
            area_now = area
        md = results / f"{stem}.md"
        data = results / f"{stem}.json"
        files = f"[`benchmarks/results/{stem}.md`](../benchmarks/results/{stem}.md)"
        if data.exists():
            files += f" (data: `benchmarks/results/{stem}.json`)"
        made = (f"`make {target}`, i.e. `{command}`" if target else f"`{command}`") + (f" ({note})" if note else "")
        parts += [f"### {title}", "", f"Results file: {files}. Made by {made}.", "",
                  _demote(md.read_text(encoding="utf-8"), levels=3), ""]
    return "\n".join(parts).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 when docs/results.md differs from a fresh render")
    ap.add_argument("--out", type=Path, default=PAGE, help="the page [docs/results.md]")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the results folder [benchmarks/results]")
    a = ap.parse_args(argv)
    try:
        text = render(a.results)
    except ResultsPageError as exc:
        print(f"results page: {exc}", file=sys.stderr)
        return 2
    if a.check:
        if not a.out.exists() or a.out.read_text(encoding="utf-8") != text:
            print(f"{a.out} is stale: run `make results-page`", file=sys.stderr)
            return 1
        print(f"{a.out} is up to date")
        return 0
    a.out.write_text(text, encoding="utf-8")
    print(f"wrote {a.out} ({len(SECTIONS)} results files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
