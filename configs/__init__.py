"""Configs shipped with esegeta_monai, installed as ``esegeta_monai.configs``.

``explain.json`` adds an explain step to any MONAI bundle (``esegeta bundle-config`` prints
its path); ``swin_unetr_compat.json`` lets the model zoo's SwinUNETR bundle build on
MONAI ≥ 1.5; the others are example run configs for ``esegeta explain --config``.
"""
