"""Study level: meta-analysis of alliance–outcome correlations (no file I/O here).

- :mod:`.random_effects`  equal- and random-effects models, tau^2 estimators, Q-profile (``rma.uni``)
- :mod:`.regression`      meta-regression designs and R^2 (``rma(mods = ...)``)
- :mod:`.multilevel`      three-level REML, CR2 cluster-robust inference, aggregation, leave-one-study-out,
                          the CHE working model
- :mod:`.location_scale`  location-scale models: moderators of the mean and of log tau^2 (``rma(scale = ...)``)
- :mod:`.distribution`    the share of true effects above thresholds (normal approximation, calibrated estimates)
- :mod:`.bias`            small-study tests and adjustments, the selection model, fail-safe N
- :mod:`.influence`       leave-one-out and influence diagnostics, cumulative meta-analysis, Baujat
- :mod:`.bayes`           priors, exact quadrature, PyMC models, model averaging, posterior summaries
- :mod:`.synthetic`       the seeded generator of the bundled SYNTHETIC study-level dataset
- :mod:`.simulation`      the simulation study's data-generating process, interval methods and scoring
"""
