"""Figures: one style module and one module per figure family (no statistics here).

- :mod:`.style`      fonts, sizes, colour-blind-safe palette, SYNTHETIC marking, byte-reproducible saving
- :mod:`.forest`     forest plot
- :mod:`.bias`       contour-enhanced funnel plot
- :mod:`.influence`  leave-one-out, cumulative, Baujat, influence panel, three-level study deletions
- :mod:`.bayes`      posterior densities with priors
- :mod:`.sessions`   trajectories, alliance coefficients, session-model posteriors
- :mod:`.simulation` coverage and bias of the interval methods in the simulation study
"""
