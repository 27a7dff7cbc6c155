"""The `label_sample` KFP component: `galmorph_components.label_sample.component.label_sample`."""
