r"""Leave-one-out, influence diagnostics, cumulative meta-analysis and Baujat data.

The quantities are those of ``metafor``'s ``leave1out``, ``influence``, ``cumul`` and ``baujat``
for ``rma.uni`` models (Viechtbauer & Cheung 2010, *Res Synth Methods* 1, 112-125; Baujat et al.
2002, *Stat Med* 21, 2641-2652), but the k deletions are computed together in O(k) work per sweep
instead of k refits from scratch.

Modules (each imports only those above it; import names from the module that defines them):

- :mod:`~alliancemeta.studies.influence.deletions`  the vectorised leave-one-out engine,
  :func:`deletion_fits` (its module docstring describes the algorithm)
- :mod:`~alliancemeta.studies.influence.diagnostics`  :func:`leave1out`, :func:`influence`,
  :func:`hat_values`, :func:`baujat`
- :mod:`~alliancemeta.studies.influence.cumulative`  :func:`cumul`
"""
