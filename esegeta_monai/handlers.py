"""Kept so that configs written for v0.1 (``_target_: esegeta_monai.handlers...``) still work: the
module lives in :mod:`esegeta_monai.monai.handlers`."""

from esegeta_monai.monai.handlers import *  # noqa: F401,F403
from esegeta_monai.monai.handlers import __all__  # noqa: F401
