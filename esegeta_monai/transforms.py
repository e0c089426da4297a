"""Kept so that configs written for v0.1 (``_target_: esegeta_monai.transforms...``) still work: the
module lives in :mod:`esegeta_monai.monai.transforms`."""

from esegeta_monai.monai.transforms import *  # noqa: F401,F403
from esegeta_monai.monai.transforms import __all__  # noqa: F401
