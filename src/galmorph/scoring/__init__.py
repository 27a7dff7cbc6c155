"""Scoring: batch scoring of manifests, inference, accelerated paths, the winding ensemble, the release path."""
