r"""Small-study effects and publication bias: the tests and adjustments of metafor and PET-PEESE.

Every function follows one ``metafor`` routine (3.8-1) so that numbers compare one to one with R:

- :func:`regtest`  Egger's regression test, ``regtest(res, model="rma", predictor="sei")``
  (Egger et al. 1997, *BMJ* 315, 629-634; Sterne & Egger 2005), with the limit estimate
- :func:`ranktest`  Begg & Mazumdar's (1994, *Biometrics* 50, 1088-1101) rank correlation test
- :func:`trimfill`  Duval & Tweedie's (2000, *Biometrics* 56, 455-463; *JASA* 95, 89-98) trim and fill
- :func:`pet`, :func:`peese`, :func:`pet_peese`  Stanley & Doucouliagos (2014, *Res Synth Methods*
  5, 60-78), weighted least squares as ``lm(yi ~ sei, weights = 1/vi)``
- :func:`selmodel_stepfun`  the step-function selection model (Vevea & Hedges 1995,
  *Psychometrika* 60, 419-435; three-parameter model of Iyengar & Greenhouse 1988 / McShane et al.
  2016), ``selmodel(res, type="stepfun", steps=0.025)``, fitted by maximum likelihood here
- :func:`fsn_rosenthal`  Rosenthal's (1979, *Psychol Bull* 86, 638-641) fail-safe N

``publication_bias.csv`` is assembled by :mod:`alliancemeta.pipeline.bias`.

Modules (each imports only those above it; import names from the module that defines them):

- :mod:`~alliancemeta.studies.bias.common`  input checks and the fewest effect sizes, :data:`MIN_K`
- :mod:`~alliancemeta.studies.bias.regression_tests`  Egger's test, PET, PEESE, PET-PEESE
- :mod:`~alliancemeta.studies.bias.rank`  the rank correlation test
- :mod:`~alliancemeta.studies.bias.trim_and_fill`  trim and fill
- :mod:`~alliancemeta.studies.bias.selection`  the step-function selection model (3PSM)
- :mod:`~alliancemeta.studies.bias.failsafe`  the fail-safe N
"""
