"""KFP component: stratified, seeded hold-out split of a labelled dataset into train and test datasets."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from galmorph.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def split(dataset: Input[Dataset], train: Output[Dataset], test: Output[Dataset], test_fraction: float = 0.25,
          seed: int = 0) -> NamedTuple("SplitOutputs", [("n_train", int), ("n_test", int)]):
    """galmorph.pipelines.artifacts.holdout_split; both outputs are self-contained dataset folders."""
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from galmorph.pipelines.artifacts import holdout_split
    from galmorph.pipelines.runtime import open_dataset, setup, subset_dataset

    setup()
    tmp = Path(tempfile.mkdtemp(prefix="split-"))
    opened = open_dataset(dataset.path, work_dir=tmp / "all")
    counts = holdout_split(opened, tmp / "train.parquet", tmp / "test.parquet", test_fraction, seed)
    subset_dataset(opened, train.path, manifest_path=tmp / "train.parquet")
    subset_dataset(opened, test.path, manifest_path=tmp / "test.parquet")
    train.metadata.update({"rows": counts["train"]})
    test.metadata.update({"rows": counts["test"]})
    return namedtuple("SplitOutputs", ["n_train", "n_test"])(counts["train"], counts["test"])
