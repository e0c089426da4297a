"""Attribution methods: one registry, one small adapter per method.

Example:
    >>> from esegeta_monai.methods import get_method
    >>> get_method("smoothgrad").describe()["family"]
    'gradient'
"""

from esegeta_monai.methods.base import Method, Param
from esegeta_monai.methods.registry import available_methods, get_method, method_table, register

__all__ = ["Method", "Param", "available_methods", "get_method", "method_table", "register"]
