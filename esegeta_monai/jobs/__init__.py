"""The job model: a job is one image, one method with its options and one target.

- :mod:`~esegeta_monai.jobs.fingerprint`: content digests and the job key;
- :mod:`~esegeta_monai.jobs.naming`: unique, stable output names;
- :mod:`~esegeta_monai.jobs.record`: the one record type;
- :mod:`~esegeta_monai.jobs.journal`: the append-only journal and the manifest view of it;
- :mod:`~esegeta_monai.jobs.resume`: which jobs a rerun skips;
- :mod:`~esegeta_monai.jobs.atomic`: the one atomic-write helper;
- :mod:`~esegeta_monai.jobs.plan`: jobs from inputs × methods × targets;
- :mod:`~esegeta_monai.jobs.workers` and :mod:`~esegeta_monai.jobs.distributed`: parallel
  execution in worker processes and across torchrun ranks;
- :mod:`~esegeta_monai.jobs.progress`: the cohort's progress bar and summary;
- :mod:`~esegeta_monai.jobs.console`: the console of a run (log lines, third-party notices).
"""
