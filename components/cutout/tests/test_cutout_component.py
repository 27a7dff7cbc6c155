"""The cutout component writes a self-contained dataset folder (image URIs relative to it)."""

import shutil

from kfp.dsl import Dataset

from galmorph.imaging.io import load_image
from galmorph.catalogue.manifest import manifest_metadata, read_manifest
from galmorph.steps.artifacts import open_dataset
from galmorph_components.cutout.component import cutout


def test_cutout_dataset_is_relocatable(sim_chirality, tmp_path):
    out = Dataset(name="c", uri=str(tmp_path / "cutouts"), metadata={})
    q = Dataset(name="q", uri=str(tmp_path / "q"), metadata={})
    res = cutout.python_func(manifest=Dataset(name="m", uri=str(sim_chirality["manifest"]), metadata={}),
                             cutouts=out, quarantine=q, size_px=32)
    assert res.rows_out == 48 and res.rows_quarantined == 0
    assert manifest_metadata(tmp_path / "cutouts" / "manifest.parquet")["relative_images"] is True
    # move the folder (as KFP does between pods): the images still resolve
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "cutouts", moved)
    df = read_manifest(open_dataset(moved))
    assert all(str(u).startswith(str(moved)) for u in df["image_uri"])
    assert load_image(df["image_uri"].iloc[0]).shape[:2] == (32, 32)
