"""The `split` KFP component: `galmorph_components.split.component.split`."""
