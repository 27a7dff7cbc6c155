"""KFP component: stratified, seeded hold-out split of a labelled dataset into train and test datasets."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from galmorph.container_images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def split(dataset: Input[Dataset], train: Output[Dataset], test: Output[Dataset], test_fraction: float = 0.25,
          seed: int = 0) -> NamedTuple("SplitOutputs", [("n_train", int), ("n_test", int)]):
    """galmorph.steps.artifacts.holdout_split; both outputs are self-contained dataset folders."""
    from galmorph import steps

    return steps.split(dataset.path, train.path, test.path, test_fraction=test_fraction, seed=seed,
                       train_metadata=train.metadata, test_metadata=test.metadata)
