"""The `validate` KFP component: `galmorph_components.validate.component.validate`."""
