"""Datasets and data modules over manifests."""
