"""galmorph."""
