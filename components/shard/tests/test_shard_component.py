"""The shard component: contiguous shard ranges covering the release, one per worker."""

from kfp.dsl import Dataset

from galmorph.pipelines.loader import load_component
from galmorph.scoring import parse_shard_range

shard = load_component("shard")


def test_shard_plan_covers_every_shard(sim_chirality):
    res = shard.python_func(dataset=Dataset(name="d", uri=str(sim_chirality["manifest"]), metadata={}),
                            task="chirality", model_uri="runs:/abc/model", shard_size=5, n_workers=3)
    assert res.n_rows == 48 and res.n_shards == 10 and len(res.work) == 3
    covered = [s for w in res.work for s in parse_shard_range(w)]
    assert covered == list(range(10))
    assert res.model_uri == "runs:/abc/model"
