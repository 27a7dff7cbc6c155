"""Generate each component's README.md from its KFP component spec (inputs, outputs, image) plus an example."""

from __future__ import annotations

import inspect
from pathlib import Path

from galmorph.ops import COMPONENTS

EXAMPLES: dict[str, str] = {
    "ingest": 'ing = ingest(source="sim:/data/sim/chirality", task="chirality")',
    "validate": 'val = validate(manifest=ing.outputs["manifest"], z_min=0.01, z_max=0.1)\n'
                'with dsl.If(val.outputs["success"] == True):\n    ...',
    "cutout": 'cut = cutout(manifest=val.outputs["passed"], size_px=64)',
    "a1": 'meas = a1(manifest=val.outputs["passed"])',
    "winding": 'wind = winding(manifest=smp.outputs["queue"], min_confidence=2.0)',
    "split": 'sp = split(dataset=cut.outputs["cutouts"], test_fraction=0.25, seed=0)',
    "train": 'tr = train(task="chirality", dataset=sp.outputs["train"], preset="tiny")\n'
             'tr.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(1)',
    "evaluate": 'ev = evaluate(model_uri=tr.outputs["model_uri"], dataset=sp.outputs["test"])',
    "promote": 'pr = promote(task="chirality", version=tr.outputs["registered_version"], dataset=sp.outputs["test"])',
    "shard": 'plan = shard(dataset=cut.outputs["cutouts"], model_uri=model.output, shard_size=10000, n_workers=8)',
    "resolve_model": 'model = resolve_model(task="chirality", model_alias="champion")',
    "score": 'with dsl.ParallelFor(plan.output) as work:\n'
             '    sc = score(dataset=cut.outputs["cutouts"], work=work)',
    "merge": 'mg = merge(scores=dsl.Collected(sc.outputs["scores"]), release="dr10")',
    "drift": 'dr = drift(catalogue=mg.outputs["catalogue"], dataset=cut.outputs["cutouts"],\n'
             '           model_uri=model.output, release="dr10")',
    "publish": 'publish(catalogue=mg.outputs["catalogue"], verdict=dr.outputs["verdict"], release="dr10")',
    "label_sample": 'smp = label_sample(manifest=ing.outputs["manifest"], per_bin=250, task="lopsided")',
    "label_queue": 'label_queue(queue=meas.outputs["measured"])',
    "label_export": 'label_export(task="lopsided", policy="majority")',
}

#: The library call of each component's body (always ``galmorph.steps.<name>``) and what it wraps.
LIBRARY: dict[str, str] = {
    "ingest": "galmorph.steps.ingest -> galmorph.steps.artifacts.ingest_source -> galmorph.catalogue.ingest.ingest",
    "validate": "galmorph.steps.validate -> galmorph.catalogue.validation.validate_manifest",
    "cutout": "galmorph.steps.cutout -> galmorph.catalogue.cutout.make_cutouts",
    "a1": "galmorph.steps.a1 -> galmorph.catalogue.a1.measure_a1_manifest",
    "winding": "galmorph.steps.winding -> galmorph.catalogue.winding.write_winding_manifest",
    "split": "galmorph.steps.split -> galmorph.steps.artifacts.holdout_split",
    "train": "galmorph.steps.train -> galmorph.training.train (workers > 1: galmorph.training.trainjob.run_trainjob)",
    "evaluate": "galmorph.steps.evaluate -> galmorph.evaluation.core.evaluate",
    "promote": "galmorph.steps.promote -> galmorph.promotion.registry.promote",
    "shard": "galmorph.steps.shard -> galmorph.scoring.batch.plan_work",
    "resolve_model": "galmorph.steps.resolve_model -> galmorph.promotion.registry.pinned_model_uri",
    "score": "galmorph.steps.score -> galmorph.scoring.run.run_scoring -> galmorph.scoring.batch.score_manifest",
    "merge": "galmorph.steps.merge -> galmorph.scoring.run.merge_and_log -> galmorph.scoring.batch.merge_scores",
    "drift": "galmorph.steps.drift -> drift_for_release -> galmorph.drift.run_drift",
    "publish": "galmorph.steps.publish -> galmorph.steps.artifacts.publish_release",
    "label_sample": "galmorph.steps.label_sample -> galmorph.labelling.queue.sample_queue",
    "label_queue": "galmorph.steps.label_queue -> galmorph.labelling.store.LabelStore.register_queue",
    "label_export": "galmorph.steps.label_export -> galmorph.labelling.export.export_labels",
}


def _type_name(spec) -> str:
    t = getattr(spec, "type", None) or "?"
    return str(t).replace("system.", "")


def component_readme(name: str) -> str:
    from galmorph import container_images as images
    from galmorph.ops.loader import load_component

    comp = load_component(name)
    cs = comp.component_spec
    image = cs.implementation.container.image
    doc = inspect.getdoc(comp.python_func) or ""
    kind = "gpu" if image == images.GPU_IMAGE else "cpu"
    lines = [f"# component `{name}`", "", doc, "", f"Library call: `{LIBRARY[name]}`.", "",
             f"Image: `{image}` (built from `{images.DOCKERFILES[kind]}` by `make images`); "
             "runs unchanged with kfp's local `SubprocessRunner(use_venv=False)`.", "", "## Inputs", "",
             "| name | type | default |", "|---|---|---|"]
    for k, v in (cs.inputs or {}).items():
        default = getattr(v, "default", None)
        opt = getattr(v, "optional", False)
        lines.append(f"| `{k}` | {_type_name(v)} | {repr(default) if opt else 'required'} |")
    lines += ["", "## Outputs", "", "| name | type |", "|---|---|"]
    for k, v in (cs.outputs or {}).items():
        lines.append(f"| `{k}` | {_type_name(v)} |")
    lines += ["", "## Example", "", "```python", f"from galmorph_components.{name}.component import {name}", "",
              EXAMPLES[name], "```", "",
              _tests_line(name), ""]
    return "\n".join(lines)


def _tests_line(name: str) -> str:
    import galmorph_components

    if (Path(galmorph_components.__file__).parent / name / "tests").is_dir():
        return f"Tests: `components/{name}/tests/` (call `{name}.python_func` directly with real artifacts)."
    return (f"Tests: run inside its pipeline by kfp's local runner (`tests/test_pipelines_local.py`); "
            f"no tests folder of its own yet.")


def write_component_readmes(names=COMPONENTS) -> list[Path]:
    """Write ``components/<name>/README.md`` (the ``galmorph_components`` package folder) for ``names``."""
    import galmorph_components

    out = []
    for n in names:
        p = Path(galmorph_components.__file__).parent / n / "README.md"
        p.write_text(component_readme(n))
        out.append(p)
    return out
