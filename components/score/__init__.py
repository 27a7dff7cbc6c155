"""The `score` KFP component: `galmorph_components.score.component.score`."""
