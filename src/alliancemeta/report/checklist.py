"""A PRISMA 2020 / APA MARS checklist of the synthesis items: where the outputs answer each, or that they do not.

PRISMA 2020 (Page et al., 2021, *BMJ* 372, n71) and the APA Meta-Analysis Reporting Standards (MARS; Appelbaum
et al., 2018, *American Psychologist* 73, 3-25) ask a report to say how results were synthesised and what the
synthesis found.  The pipeline answers the synthesis items from its own outputs; items about the search,
screening, data extraction, risk of bias of the primary studies, registration and funding are the authors'
and are marked as not answered here, honestly, rather than left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Set
from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    """One checklist item: its PRISMA 2020 number (and MARS topic), what it asks, and where it is answered."""

    prisma: str
    mars: str
    topic: str
    where: tuple[tuple[str, str], ...]  # (required table name or "" for always, where it is answered)
    otherwise: str  # the status when none of ``where`` applies


NOT_HERE = "Not answered by the pipeline: the authors must report it."

ITEMS = (
    Item("5", "Inclusion and exclusion criteria", "Eligibility criteria for the studies", (), NOT_HERE),
    Item("6–9", "Information sources, search, selection, data collection", "Search, screening and data extraction",
         (), NOT_HERE),
    Item("10a", "Coding of studies", "Outcomes and effect sizes sought",
         (("", "Input contract (README, SPEC §4): correlations (r and n, or Fisher z and its variance); "
           "`data/raw/README.md` for each bundled file's source"),), NOT_HERE),
    Item("11", "Risk of bias / study quality", "Risk of bias of the included studies", (),
         NOT_HERE + " A quality column can be analysed as a moderator (`studies.NAME.moderators`)."),
    Item("12", "Effect size metric", "Effect measure",
         (("", "`report/summary.md`, Methods: Fisher-z transformed correlations, back-transformed to r"),), ""),
    Item("13a–13b", "Data preparation", "Which studies entered each synthesis; data preparation",
         (("", "`data/processed/studies/NAME.csv` (the validated input with yi, vi); `note` and `n_dropped` columns of "
           "`moderator_tests.csv` for rows dropped per model"),), ""),
    Item("13c", "Tables and figures", "Tabulation and display of results",
         (("", "`report/*.md` and `report/*.tex` (APA tables), `figures/forest.pdf`"),), ""),
    Item("13d", "Statistical methods: model, estimator, heterogeneity", "Synthesis model and software",
         (("random_effects", "`report/summary.md`, Methods; `tables/random_effects.csv` (every estimator and test)"),),
         ""),
    Item("13d", "Dependent effect sizes", "Handling of several effect sizes per study",
         (("multilevel", "`tables/multilevel.csv` (three-level model, CR2 robust), "
           "`tables/random_effects_aggregated.csv`"), ("che", "`tables/che.csv` (CHE working model over ρ)")),
         "No `study_id` in the data: each effect size is treated as an independent study."),
    Item("13e", "Moderator analyses", "Exploring causes of heterogeneity",
         (("moderator_tests", "`tables/moderators.csv`, `tables/moderator_tests.csv`, `tables/subgroups.csv`; "
           "`report/summary.md`, Results"), ("location_scale", "`tables/location_scale.csv` (heterogeneity by "
           "moderator)")), "No moderators configured (`studies.NAME.moderators`)."),
    Item("13f", "Sensitivity analyses", "Robustness of the synthesised results",
         (("influence", "`tables/influence.csv`, `tables/cumulative.csv`, `tables/baujat.csv` and their figures"),
          ("random_effects", "estimator × test grid in `tables/random_effects.csv`"),
          ("prior_sensitivity", "`tables/prior_sensitivity.csv` (Bayesian priors)"),
          ("multiverse", "`tables/multiverse.csv` and the specification curve"),
          ("gosh_summary", "`tables/gosh_summary.csv` and `figures/gosh.pdf`")), ""),
    Item("14", "Publication bias", "Methods to assess reporting biases",
         (("publication_bias", "`report/summary.md`, Methods"),), "Publication-bias stage not run."),
    Item("15", "Certainty of evidence", "Certainty (e.g. GRADE) of the body of evidence", (), NOT_HERE),
    Item("16–19", "Study characteristics and individual results", "Studies included and their results",
         (("", "`figures/forest.pdf` (every effect size with its CI) and the processed input table"),),
         "Study selection (flow diagram) is not answered by the pipeline."),
    Item("20a", "Results of syntheses", "Characteristics of contributing studies per synthesis",
         (("random_effects", "k and N in `report/summary.md`; k per model in every table"),), ""),
    Item("20b", "Results of syntheses", "Summary estimate with CI and heterogeneity",
         (("random_effects", "`report/summary.md`, Results (r with CI and PI, τ, I² with CI, Q, r²); "
           "`tables/random_effects.csv`"),), ""),
    Item("20c", "Results of syntheses", "Investigations of heterogeneity",
         (("moderator_tests", "`tables/moderator_tests.csv`, `tables/subgroups.csv`"),), "No moderators configured."),
    Item("20d", "Results of syntheses", "Sensitivity analyses",
         (("influence", "`tables/influence.csv`; `report/summary.md`, Results"),), ""),
    Item("21", "Publication bias", "Reporting biases: results",
         (("publication_bias", "`tables/publication_bias.csv`, `figures/funnel.pdf`"),
          ("selection_models", "`tables/selection_models.csv`"),
          ("bayes_model_averaging", "`tables/bayes_model_averaging.csv` (RoBMA-PSMA inclusion Bayes factor for bias, "
           "bias-adjusted r), `figures/robma.pdf`")), "Publication-bias stage not run."),
    Item("22", "Certainty of evidence", "Certainty of evidence: results", (), NOT_HERE),
    Item("24", "Registration and protocol", "Registration, protocol, amendments", (), NOT_HERE),
    Item("25–26", "Funding and conflicts", "Support and competing interests", (), NOT_HERE),
    Item("27", "Data, code and materials", "Availability of data, analytic code and materials",
         (("", "`results/provenance.json` (versions, config, seed, input checksums, commit); the pipeline's code and "
           "`config/config.yaml`"),), ""),
    Item("—", "Bayesian analyses (MARS)", "Priors, estimation and convergence of Bayesian models",
         (("bayes", "`tables/bayes.csv` (r̂, ESS, divergences), `tables/prior_sensitivity.csv`, "
           "`tables/bayes_model_averaging.csv`; priors in `report/summary.md`, Methods"),), "No Bayesian stage."),
)


def checklist(tables: Set[str] | Mapping[str, object], dataset_label: str) -> str:
    """The checklist of one dataset as Markdown: item, topic, where it is answered (given the tables present)."""
    present = set(tables)
    lines = [
        f"# Synthesis checklist: {dataset_label}",
        "",
        "PRISMA 2020 items (Page et al., 2021) and APA MARS topics (Appelbaum et al., 2018) on synthesis methods and "
        "results, with where this run's outputs answer them (paths under this dataset's `results/` folder). Items "
        "outside the synthesis are listed as not answered by the pipeline: they are the authors' to report.",
        "",
        "| PRISMA | MARS topic | Item | Where it is answered |",
        "|---|---|---|---|",
    ]
    for item in ITEMS:
        where = [text for table, text in item.where if table == "" or table in present]
        answer = "; ".join(where) if where else (item.otherwise or NOT_HERE)
        lines.append(f"| {item.prisma} | {item.mars} | {item.topic} | {answer} |")
    return "\n".join(lines) + "\n"
