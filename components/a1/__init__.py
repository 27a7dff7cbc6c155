"""The `a1` KFP component: `galmorph_components.a1.component.a1`."""
