"""The `ingest` KFP component: `galmorph_components.ingest.component.ingest`."""
