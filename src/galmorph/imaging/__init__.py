"""Image I/O and measurements on arrays (A1 lopsidedness, drift image features)."""
