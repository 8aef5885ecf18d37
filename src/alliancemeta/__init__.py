"""alliancemeta: meta-analysis of the therapeutic alliance-outcome association.

The package holds all statistics; the Snakemake workflow only calls it.  It is a map of the domain, and
imports point down only (``pipeline`` -> ``studies`` / ``sessions`` / ``plots`` / ``report`` -> ``core``):

- :mod:`alliancemeta.core`      effect sizes, reading and validating inputs, atomic table writers, the shared
  inference block, the one MCMC path, the frozen settings, seeds and errors
- :mod:`alliancemeta.studies`   study-level meta-analysis: random effects, moderators, three-level models,
  publication bias, influence, Bayesian models, the SYNTHETIC study-level generator
- :mod:`alliancemeta.sessions`  session-level models of alliance and outcome, descriptives, ruptures, sites,
  the SYNTHETIC session-level generator
- :mod:`alliancemeta.plots`     the house style and one module per figure family
- :mod:`alliancemeta.report`    provenance of a run
- :mod:`alliancemeta.pipeline`  one module per workflow rule file: read processed inputs, call the above,
  write the contract tables and figures
"""

__version__ = "0.1.0"
