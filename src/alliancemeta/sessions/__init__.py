"""Session level: alliance and outcome session by session, sessions in clients in therapists (no file I/O here).

- :mod:`.data`          reading, the sign convention, within/between/therapist decomposition (total score and
                        Bordin subscales), centred time, lags, the split alliance of couples and families, covariates
- :mod:`.lmm`           the profiled-REML linear mixed model engine (lme4 parity, lmerTest Satterthwaite df)
- :mod:`.models`        the REML session models (``within_between``, ``lagged``, ``therapist``, ``components``,
                        ``split``) on that engine
- :mod:`.bayes`         the Bayesian ``within_between``, ``components`` and ``split`` models (PyMC)
- :mod:`.descriptives`  descriptive statistics and the client-level early-alliance partial correlation
- :mod:`.ruptures`      reliable-change rupture-repair episodes, their regression-to-the-mean null and outcome
- :mod:`.sites`         two-stage pooling of per-site within-client effects
- :mod:`.synthetic`     the seeded generator of the bundled SYNTHETIC session-level dataset
"""
