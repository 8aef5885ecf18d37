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

:func:`publication_bias_table` assembles SPEC §5 ``publication_bias.csv``.

Modules (each imports only those above it; this package re-exports their names):

- :mod:`~alliancemeta.studies.bias.common`  input checks and the fewest effect sizes, :data:`MIN_K`
- :mod:`~alliancemeta.studies.bias.regression_tests`  Egger's test, PET, PEESE, PET-PEESE
- :mod:`~alliancemeta.studies.bias.rank`  the rank correlation test
- :mod:`~alliancemeta.studies.bias.trim_and_fill`  trim and fill
- :mod:`~alliancemeta.studies.bias.selection`  the step-function selection model (3PSM)
- :mod:`~alliancemeta.studies.bias.failsafe`  the fail-safe N
- :mod:`~alliancemeta.studies.bias.tables`  the ``publication_bias.csv`` table and its pipeline writer
"""

from __future__ import annotations

from alliancemeta.studies.bias.common import MIN_K
from alliancemeta.studies.bias.failsafe import FailSafeN, fsn_rosenthal
from alliancemeta.studies.bias.rank import KENDALL_EXACT_MAX_N, RankTest, ranktest
from alliancemeta.studies.bias.rank import _kendall_lower_tail as _kendall_lower_tail
from alliancemeta.studies.bias.regression_tests import (
    PET_PEESE_ALPHA,
    PetPeese,
    RegTest,
    WLSRegression,
    peese,
    pet,
    pet_peese,
    regtest,
)
from alliancemeta.studies.bias.selection import (
    DELTA_MAX,
    DELTA_MIN,
    SELMODEL_GTOL,
    SELMODEL_MAX_NEWTON,
    SelectionModel,
    selmodel_stepfun,
)
from alliancemeta.studies.bias.selection import _ml_loglik as _ml_loglik
from alliancemeta.studies.bias.selection import _StepLikelihood as _StepLikelihood
from alliancemeta.studies.bias.tables import (
    METHODS,
    PUBLICATION_BIAS_COLUMNS,
    publication_bias_table,
    write_publication_bias,
)
from alliancemeta.studies.bias.trim_and_fill import TRIMFILL_MAX_ITER, TrimFill, trimfill

# raised by the methods above; re-exported so that callers can catch ``bias.ConvergenceError``
from alliancemeta.studies.random_effects import ConvergenceError as ConvergenceError

# the private names re-exported above (``name as name``) are used by the unit tests; they are not public API
__all__ = [
    "DELTA_MAX",
    "DELTA_MIN",
    "KENDALL_EXACT_MAX_N",
    "METHODS",
    "MIN_K",
    "PET_PEESE_ALPHA",
    "PUBLICATION_BIAS_COLUMNS",
    "SELMODEL_GTOL",
    "SELMODEL_MAX_NEWTON",
    "TRIMFILL_MAX_ITER",
    "FailSafeN",
    "PetPeese",
    "RankTest",
    "RegTest",
    "SelectionModel",
    "TrimFill",
    "WLSRegression",
    "fsn_rosenthal",
    "peese",
    "pet",
    "pet_peese",
    "publication_bias_table",
    "ranktest",
    "regtest",
    "selmodel_stepfun",
    "trimfill",
    "write_publication_bias",
]
