"""The `resolve_model` KFP component: `galmorph_components.resolve_model.component.resolve_model`."""
