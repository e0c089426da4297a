"""Quantus (0.6.0) as a test reference for the metric catalogue.

:func:`require_quantus` imports it or skips the test — and fails instead where
``ESEGETA_REQUIRE_QUANTUS=1`` (CI: ``.ci/run``, which installs it with ``ESEGETA_QUANTUS=1``).
Quantus 0.6.0 calls ``np.trapz``, which numpy 2.4 removed; rather than pin numpy below 2.4 for
the whole test environment, the alias ``np.trapz = np.trapezoid`` (the same function under its
new name) is set for these tests only when numpy lacks it.

Quantus takes numpy arrays, a model it wraps (a ``torch.nn.Module``), ``x_batch`` ``(B, C, H, W)``,
``y_batch`` (class indices), ``a_batch`` (maps, ``(B, 1, H, W)`` or ``(B, C, H, W)``) and, for
localisation, ``s_batch`` (binary masks). Its metrics return one value per image (or a curve).

Example (in a test)::

    quantus = require_quantus()
    metric = quantus.Sparseness(disable_warnings=True)
    values = metric(model=net, x_batch=x, y_batch=y, a_batch=a, device="cpu")
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest


def require_quantus():
    """The ``quantus`` module, or a skip (a failure with ``ESEGETA_REQUIRE_QUANTUS=1``) saying why."""
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid  # Quantus 0.6.0 calls np.trapz, removed in numpy 2.4: the same function
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import quantus
    except Exception as error:  # absent, or an import error of one of its requirements
        reason = (f"quantus does not import ({type(error).__name__}: {error}); install it with "
                  "ESEGETA_QUANTUS=1 bash scripts/install.sh (pip install --no-deps quantus==0.6.0 and the quantus extra)")
        if os.environ.get("ESEGETA_REQUIRE_QUANTUS") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return quantus
