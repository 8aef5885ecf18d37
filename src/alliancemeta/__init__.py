"""alliancemeta: meta-analysis of the therapeutic alliance-outcome association.

The package holds all statistics; the Snakemake workflow only calls it.  Modules:

- :mod:`alliancemeta.effects`  effect sizes (r <-> Fisher z, sampling variances, conversions)
- :mod:`alliancemeta.io`       reading and validating input tables with line-numbered messages
- :mod:`alliancemeta.meta`     equal- and random-effects models, tau^2 estimators, tests, intervals
- :mod:`alliancemeta.tables`   atomic CSV writers
- :mod:`alliancemeta.plots`    publication figures
- :mod:`alliancemeta.synthetic` seeded generators of the bundled SYNTHETIC datasets
"""

__version__ = "0.1.0"
