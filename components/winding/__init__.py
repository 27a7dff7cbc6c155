"""The `winding` KFP component: `galmorph_components.winding.component.winding`."""
