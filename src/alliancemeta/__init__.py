"""alliancemeta: meta-analysis of the therapeutic alliance-outcome association.

The package holds all statistics; the Snakemake workflow only calls it.  Modules:

- :mod:`alliancemeta.core.effects`  effect sizes (r <-> Fisher z, sampling variances, conversions)
- :mod:`alliancemeta.core.inputs`       reading and validating input tables with line-numbered messages
- :mod:`alliancemeta.studies.random_effects`     equal- and random-effects models, tau^2 estimators, tests, intervals
- :mod:`alliancemeta.studies.regression` moderator analyses (meta-regression, subgroups)
- :mod:`alliancemeta.studies.multilevel` three-level model, CR2 cluster-robust inference, aggregation
- :mod:`alliancemeta.studies.bias`, :mod:`alliancemeta.studies.influence` publication bias, influence, leave-one-out
- :mod:`alliancemeta.studies.bayes`     Bayesian meta-analysis (quadrature and PyMC)
- :mod:`alliancemeta.pipeline.sessions`  session-level analyses (``sessions_data``, ``sessions_models``,
  ``sessions_bayes``, ``sessions_descriptive``, ``sessions_sites``)
- :mod:`alliancemeta.core.tables`   atomic CSV writers
- :mod:`alliancemeta.plots.forest`    publication figures (stage figures in ``plots_bias``, ``plots_bayes``,
  ``plots_sessions``)
- :mod:`alliancemeta.studies.synthetic`, :mod:`alliancemeta.sessions.synthetic` seeded generators of the bundled
  SYNTHETIC datasets
"""

__version__ = "0.1.0"
