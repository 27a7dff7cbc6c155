"""The `cutout` KFP component: `galmorph_components.cutout.component.cutout`."""
