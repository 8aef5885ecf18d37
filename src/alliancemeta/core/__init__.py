"""Foundations shared by every level: nothing here knows about studies, sessions or output tables.

- :mod:`.effects`    correlations and Fisher z, sampling variances, conversions (metafor ``escalc``)
- :mod:`.inputs`     reading and validating input CSVs with file, line, column, value and expectation
- :mod:`.tables`     atomic, byte-reproducible CSV writers
- :mod:`.inference`  critical values, p-values and Wald tests for z, t and Knapp–Hartung inference
- :mod:`.mcmc`       the one MCMC path: nutpie sampling, diagnostics, one retry, then a clear stop
- :mod:`.settings`   the frozen settings of every stage, from the config validated against the schema
- :mod:`.seeds`      one derived seed per random step
- :mod:`.errors`     the package's error classes (each message says what failed and what to try)
"""
