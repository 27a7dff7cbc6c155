"""Models: timm/escnn backbones, heads, the chirality-equivariant wrapper, MLflow I/O."""
