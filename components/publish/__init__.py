"""The `publish` KFP component: `galmorph_components.publish.component.publish`."""
