"""The data catalogue: ingest, validation, cutouts, cross-match, SkyServer query, DVC and the manifest."""
