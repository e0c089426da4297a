"""``python -m esegeta_monai`` is the ``esegeta`` command."""

import sys

from esegeta_monai.apps.cli import main

sys.exit(main())
