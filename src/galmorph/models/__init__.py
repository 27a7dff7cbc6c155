"""Models: timm/escnn backbones, heads, the chirality-equivariant wrapper, the LightningModule and
MLflow I/O (:mod:`galmorph.models.io`, shared contract)."""
