"""The split component: stratified, disjoint, seeded hold-out; both parts self-contained."""

from kfp.dsl import Dataset

from galmorph.catalogue.manifest import read_manifest
from galmorph.steps.artifacts import open_dataset
from galmorph_components.split.component import split


def test_split_stratified_disjoint(sim_chirality, tmp_path):
    outs = {k: Dataset(name=k, uri=str(tmp_path / k), metadata={}) for k in ("train", "test")}
    res = split.python_func(dataset=Dataset(name="d", uri=str(sim_chirality["manifest"]), metadata={}),
                            test_fraction=0.25, seed=3, **outs)
    tr, te = (read_manifest(open_dataset(outs[k].path)) for k in ("train", "test"))
    assert res.n_train + res.n_test == 48 and len(tr) == res.n_train and len(te) == res.n_test
    assert not set(tr["object_id"]) & set(te["object_id"])
    assert te["label"].value_counts().to_dict() == {"CW": 4, "ACW": 4, "other": 4}
    assert all((tmp_path / "test").resolve() in __import__("pathlib").Path(u).resolve().parents
               for u in te["image_uri"])
