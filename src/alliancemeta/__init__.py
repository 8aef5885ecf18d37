"""alliancemeta: meta-analysis of the therapeutic alliance-outcome association.

The package holds all statistics; the Snakemake workflow only calls it.  Modules:

- :mod:`alliancemeta.effects`  effect sizes (r <-> Fisher z, sampling variances, conversions)
- :mod:`alliancemeta.io`       reading and validating input tables with line-numbered messages
- :mod:`alliancemeta.meta`     equal- and random-effects models, tau^2 estimators, tests, intervals
- :mod:`alliancemeta.regression` moderator analyses (meta-regression, subgroups)
- :mod:`alliancemeta.multilevel` three-level model, CR2 cluster-robust inference, aggregation
- :mod:`alliancemeta.bias`, :mod:`alliancemeta.influence` publication bias, influence, leave-one-out
- :mod:`alliancemeta.bayes`     Bayesian meta-analysis (quadrature and PyMC)
- :mod:`alliancemeta.sessions`  session-level analyses (``sessions_data``, ``sessions_models``,
  ``sessions_bayes``, ``sessions_descriptive``, ``sessions_sites``)
- :mod:`alliancemeta.tables`   atomic CSV writers
- :mod:`alliancemeta.plots`    publication figures (stage figures in ``plots_bias``, ``plots_bayes``,
  ``plots_sessions``)
- :mod:`alliancemeta.synthetic`, :mod:`alliancemeta.simulate_sessions` seeded generators of the bundled
  SYNTHETIC datasets
"""

__version__ = "0.1.0"
