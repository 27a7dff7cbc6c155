"""The `label_queue` KFP component: `galmorph_components.label_queue.component.label_queue`."""
