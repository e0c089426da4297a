"""Front-ends: the ``esegeta`` command, its run configs, the cohort runner and ``evaluate``."""
