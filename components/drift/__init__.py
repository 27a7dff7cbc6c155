"""The `drift` KFP component: `galmorph_components.drift.component.drift`."""
