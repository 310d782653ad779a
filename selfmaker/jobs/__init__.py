"""Jobs of the platform: training (:mod:`selfmaker.jobs.training`) and batch transform
(:mod:`selfmaker.jobs.transform`); each manager owns its records, threads, logs and restart rules."""
