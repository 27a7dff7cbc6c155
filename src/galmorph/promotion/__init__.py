"""Promotion: the registry policy, locks, audit and lineage."""
