"""The `merge` KFP component: `galmorph_components.merge.component.merge`."""
