"""The shard component: contiguous shard ranges covering the release, one per worker."""

from kfp.dsl import Dataset

from galmorph.scoring.batch import parse_work_item
from galmorph_components.resolve_model.component import resolve_model
from galmorph_components.shard.component import shard


def test_shard_plan_covers_every_shard(sim_chirality):
    work = shard.python_func(dataset=Dataset(name="d", uri=str(sim_chirality["manifest"]), metadata={}),
                             model_uri="models:/galmorph-chirality/3", shard_size=5, n_workers=3)
    items = [parse_work_item(w) for w in work]
    assert len(items) == 3 and {i["model_uri"] for i in items} == {"models:/galmorph-chirality/3"}
    assert [s for i in items for s in i["shards"]] == list(range(10))  # 48 rows / 5 = 10 shards


def test_resolve_model_leaves_pinned_uris():
    assert resolve_model.python_func(task="chirality", model_uri="runs:/abc/model") == "runs:/abc/model"
