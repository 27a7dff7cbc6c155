"""Models: the arch registry (:mod:`galmorph.models.archs`: named archs, escnn G-ResNets, any timm name),
timm/escnn backbones, heads, the chirality-equivariant wrapper, the LightningModule and
MLflow I/O (:mod:`galmorph.models.io`, shared contract)."""
