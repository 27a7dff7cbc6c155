"""The A1 component on simulated lopsided galaxies: injected lopsidedness is measured larger."""

import numpy as np
from kfp.dsl import Dataset

from galmorph.catalogue.manifest import read_manifest
from galmorph_components.a1.component import a1


def test_a1_component_measures_injection(sim_lopsided, tmp_path):
    out = Dataset(name="a", uri=str(tmp_path / "a1"), metadata={})
    q = Dataset(name="q", uri=str(tmp_path / "q"), metadata={})
    res = a1.python_func(manifest=Dataset(name="m", uri=str(sim_lopsided["manifest"]), metadata={}),
                         measured=out, quarantine=q)
    df = read_manifest(out.path)
    assert res.rows_out == len(df) == 40 and res.finite_a1 > 30
    lop = df.loc[df["label"] == "lopsided", "a1"].astype(float)
    sym = df.loc[df["label"] == "symmetric", "a1"].astype(float)
    assert np.nanmedian(lop) > np.nanmedian(sym)
