"""The `train` KFP component: `galmorph_components.train.component.train`."""
