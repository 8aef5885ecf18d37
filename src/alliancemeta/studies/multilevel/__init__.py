r"""Three-level meta-analysis (effects nested in studies) with cluster-robust CR2 inference.

The model is metafor's ``rma.mv(yi, vi, mods, random = ~ 1 | study/effect)``:

.. math::

    y_{ij} = x_{ij}'\beta + u_j + w_{ij} + \varepsilon_{ij}, \quad
    u_j \sim N(0, \sigma^2_{study}),\; w_{ij} \sim N(0, \sigma^2_{within}),\;
    \varepsilon_{ij} \sim N(0, v_{ij})

for effect i of study j (Konstantopoulos 2011, *Res Synth Methods* 2, 61-76; Cheung 2014,
*Psychol Methods* 19, 211-229).  The marginal covariance is block diagonal by study with blocks
:math:`V_j = D_j + \sigma^2_{study} 11'`, :math:`D_j = \operatorname{diag}(v_{ij} + \sigma^2_{within})`,
so with :math:`a = 1/\operatorname{diag}(D_j)`, :math:`S_j = \sum_i a_{ij}` and
:math:`\gamma_j = \sigma^2_{study} / (1 + \sigma^2_{study} S_j)` (Sherman-Morrison)

.. math::

    V_j^{-1} = \operatorname{diag}(a) - \gamma_j a a', \qquad
    \log|V_j| = \sum_i \log(v_{ij} + \sigma^2_{within}) + \log(1 + \sigma^2_{study} S_j).

Every quantity of the REML fit (likelihood, score, expected and observed information) reduces to
sums over effects and over studies, so a fit costs O(k p^2) per iteration and no k x k matrix is
formed.  The variance components are estimated by projected Newton steps on the restricted
log-likelihood (Fisher scoring when the observed information is not positive definite), which
finds boundary estimates at exactly 0.  Cluster-robust inference follows the CR2 bias-reduced
linearisation with Satterthwaite degrees of freedom (Bell & McCaffrey 2002, *Surv Methodol* 28,
169-181; Tipton 2015, *Psychol Methods* 20, 375-393; Pustejovsky & Tipton 2018, *J Bus Econ Stat*
36, 672-683), as ``metafor::robust(fit, cluster, clubSandwich = TRUE)`` computes it.

Modules (each imports only those above it; import names from the module that defines them):

- :mod:`~alliancemeta.studies.multilevel.clusters`  rows grouped by cluster (:class:`Clusters`)
- :mod:`~alliancemeta.studies.multilevel.model`  the O(k) restricted likelihood, its optimiser and :func:`three_level`
- :mod:`~alliancemeta.studies.multilevel.robust`  CR2 cluster-robust inference (:func:`robust_cr2`)
- :mod:`~alliancemeta.studies.multilevel.aggregate`  aggregation of dependent effects within studies
- :mod:`~alliancemeta.studies.multilevel.influence`  leave-one-study-out diagnostics of the three-level model
"""
