"""Session level: alliance and outcome session by session, sessions in clients in therapists (no file I/O here).

- :mod:`.data`          reading, the sign convention, within/between/therapist decomposition, lags
- :mod:`.models`        REML mixed models (``within_between``, ``lagged``, ``therapist``)
- :mod:`.bayes`         the Bayesian within/between model (PyMC)
- :mod:`.descriptives`  descriptive statistics and the early-alliance client-level correlation
- :mod:`.ruptures`      rupture–repair episodes
- :mod:`.sites`         two-stage pooling of per-site within-client effects
- :mod:`.synthetic`     the seeded generator of the bundled SYNTHETIC session-level dataset
"""
