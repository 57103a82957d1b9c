"""advcl_lite: understand and reproduce AdvCL (Fan et al., NeurIPS 2021).

The library behind the notebooks: frequency views, an encoder with named
BatchNorm routes, adversarial contrastive pretraining (SimCLR / ACL / AdvCL),
cluster pseudo-labels, and robustness-transfer evaluation.
"""
__version__ = "0.1.0"

from .device import resolve_device, seed_everything  # noqa: E402,F401
from .presets import Preset, get_preset, PRESETS  # noqa: E402,F401
