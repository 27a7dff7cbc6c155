"""The `shard` KFP component: `galmorph_components.shard.component.shard`."""
