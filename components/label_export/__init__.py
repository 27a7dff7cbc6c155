"""The `label_export` KFP component: `galmorph_components.label_export.component.label_export`."""
