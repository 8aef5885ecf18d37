r"""Leave-one-out, influence diagnostics, cumulative meta-analysis and Baujat data.

The quantities are those of ``metafor``'s ``leave1out``, ``influence``, ``cumul`` and ``baujat``
for ``rma.uni`` models (Viechtbauer & Cheung 2010, *Res Synth Methods* 1, 112-125; Baujat et al.
2002, *Stat Med* 21, 2641-2652), but the k deletions are computed together in O(k) work per sweep
instead of k refits from scratch.

Modules (each imports only those above it; this package re-exports their names):

- :mod:`~alliancemeta.studies.influence.deletions`  the vectorised leave-one-out engine,
  :func:`deletion_fits` (its module docstring describes the algorithm)
- :mod:`~alliancemeta.studies.influence.diagnostics`  :func:`leave1out`, :func:`influence`,
  :func:`hat_values`, :func:`baujat`
- :mod:`~alliancemeta.studies.influence.cumulative`  :func:`cumul`
- :mod:`~alliancemeta.studies.influence.tables`  the pipeline's ``influence.csv``, ``cumulative.csv`` and
  Baujat tables, :func:`write_influence`
"""

from __future__ import annotations

from alliancemeta.studies.influence.cumulative import Cumulative, cumul
from alliancemeta.studies.influence.deletions import (
    MAX_POWER,
    PAIRWISE_BLOCK,
    ROOT_MAX_ITER,
    ROOT_RTOL,
    ROOT_XTOL,
    SERIES_MAX_RATIO,
    SERIES_MAX_TERMS,
    SERIES_TOL,
    DeletionFits,
    deletion_fits,
)
from alliancemeta.studies.influence.deletions import _DeletionSums as _DeletionSums
from alliancemeta.studies.influence.deletions import _features as _features
from alliancemeta.studies.influence.deletions import _terms_needed as _terms_needed
from alliancemeta.studies.influence.diagnostics import (
    Baujat,
    Influence,
    LeaveOneOut,
    RefitSeries,
    baujat,
    hat_values,
    influence,
    leave1out,
)
from alliancemeta.studies.influence.tables import (
    BAUJAT_COLUMNS,
    CUMULATIVE_COLUMNS,
    INFLUENCE_COLUMNS,
    baujat_table,
    cumulative_table,
    influence_table,
    read_studies_table,
    write_influence,
    year_of,
)

# the private names re-exported above (``name as name``) are used by the unit tests; they are not public API
__all__ = [
    "BAUJAT_COLUMNS",
    "CUMULATIVE_COLUMNS",
    "INFLUENCE_COLUMNS",
    "MAX_POWER",
    "PAIRWISE_BLOCK",
    "ROOT_MAX_ITER",
    "ROOT_RTOL",
    "ROOT_XTOL",
    "SERIES_MAX_RATIO",
    "SERIES_MAX_TERMS",
    "SERIES_TOL",
    "Baujat",
    "Cumulative",
    "DeletionFits",
    "Influence",
    "LeaveOneOut",
    "RefitSeries",
    "baujat",
    "baujat_table",
    "cumul",
    "cumulative_table",
    "deletion_fits",
    "hat_values",
    "influence",
    "influence_table",
    "leave1out",
    "read_studies_table",
    "write_influence",
    "year_of",
]
