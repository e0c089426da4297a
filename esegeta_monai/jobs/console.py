"""The console of a run: our log lines, and third-party deprecation notices kept out of it.

MONAI, torch and others print ``FutureWarning``/``DeprecationWarning`` notices at every run (e.g.
``Orientationd … labels``): harmless for the user and in the way of our own messages. The command
and its worker processes route them to the debug log (``-v`` shows them); every other warning is
shown as Python shows it.

Example:
    >>> import logging, warnings
    >>> from esegeta_monai.jobs.console import configure_console
    >>> configure_console(logging.WARNING)
    >>> warnings.warn("old keyword", FutureWarning)   # to the debug log, not the console
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["configure_console", "QUIET_CATEGORIES"]

#: warning categories that go to the debug log instead of the console
QUIET_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
_shown = warnings.showwarning


def _show(message, category, filename, lineno, file=None, line=None) -> None:
    if issubclass(category, QUIET_CATEGORIES):
        logging.getLogger("esegeta_monai.warnings").debug("%s:%s: %s: %s", filename, lineno, category.__name__, message)
        return
    _shown(message, category, filename, lineno, file, line)


def configure_console(level: int, prefix: str = "") -> None:
    """Log lines at ``level`` and above on stderr (``prefix`` before each, e.g. a worker's name);
    deprecation notices of any package to the debug log."""
    logging.basicConfig(level=level, format=f"%(levelname)s {prefix}%(name)s: %(message)s")
    logging.getLogger("esegeta_monai").setLevel(level)
    warnings.showwarning = _show
