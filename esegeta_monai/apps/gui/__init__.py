"""``esegeta gui``: a local web application to pick a bundle, scans and methods, run, and view the maps.

:func:`create_app` builds the application (page, static files, JSON API behind a token);
:func:`serve` runs it with uvicorn and opens the browser. See :mod:`esegeta_monai.apps.gui.api`
for the API and :mod:`esegeta_monai.apps.gui.server` for the security model.

Example:
    >>> from esegeta_monai.apps.gui import serve
    >>> serve(roots=["bundles"], out="esegeta_gui_out", open_browser=False)  # doctest: +SKIP
    0
"""

from esegeta_monai.apps.gui.server import create_app, serve

__all__ = ["create_app", "serve"]
