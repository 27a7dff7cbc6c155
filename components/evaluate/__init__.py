"""The `evaluate` KFP component: `galmorph_components.evaluate.component.evaluate`."""
