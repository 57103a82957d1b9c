"""advcl_lite: understand and reproduce AdvCL (Fan et al., NeurIPS 2021).

The library behind the notebooks: frequency views, an encoder with named
BatchNorm routes, adversarial contrastive pretraining (SimCLR / ACL / AdvCL),
cluster pseudo-labels, and robustness-transfer evaluation.
"""
from .presets import PRESETS, Preset, get_preset  # noqa: F401
from .runtime import __version__, resolve_device, seed_everything  # noqa: F401
