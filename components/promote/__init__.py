"""The `promote` KFP component: `galmorph_components.promote.component.promote`."""
