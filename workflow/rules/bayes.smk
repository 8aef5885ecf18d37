# Stage bayes: Bayesian meta-analysis of each study-level dataset: the exact posterior by quadrature
# over tau (prior sensitivity), model averaging with the RoBMA-PSMA ensemble (effect x heterogeneity x
# publication bias), MCMC with nutpie for the random-effects, meta-regression and three-level models, and
# the posterior figure.  The sampling rules pass the config seed; the package derives the dataset's seeds as
# derive_seed(seed, "bayes/<dataset>") and derive_seed(seed, "robma/<dataset>").
from alliancemeta.studies.bayes.robma import RobmaSettings

try:
    RobmaSettings.from_bayes(
        SETTINGS.bayes
    )  # weight functions and sensitivity priors parse before any job
except ValueError as err:
    _stop(f"config/config.yaml: {err}")


rule bayes_exact:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        sensitivity=report(
            "results/studies/{dataset}/tables/prior_sensitivity.csv",
            caption="../report/prior_sensitivity.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "Bayesian prior sensitivity"},
        ),
    log:
        "logs/bayes/exact_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        bayes=SETTINGS.bayes,
        about=about_study,
    script:
        "../scripts/bayes_exact.py"


rule robma:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        averaging=report(
            "results/studies/{dataset}/tables/bayes_model_averaging.csv",
            caption="../report/posterior_model_averaging.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={
                "dataset": "{dataset}",
                "table": "Bayesian model averaging (RoBMA-PSMA)",
            },
        ),
        pdf="results/studies/{dataset}/figures/robma.pdf",
        png=report(
            "results/studies/{dataset}/figures/robma.png",
            caption="../report/robma.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "RoBMA-PSMA model averaging"},
        ),
    log:
        "logs/bayes/robma_{dataset}.log",
    benchmark:
        "benchmarks/out/robma_{dataset}.tsv"
    conda:
        "../envs/alliancemeta.yaml"
    threads: 2
    params:
        code=CODE,
        bayes=SETTINGS.bayes,
        seed=SETTINGS.seed,
        study=study,
        about=about_study,
    script:
        "../scripts/robma.py"


# make robma-sensitivity (not part of make run: one ensemble per alternative prior set)
rule robma_sensitivity:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        table="results/studies/{dataset}/tables/prior_sensitivity_robma.csv",
    log:
        "logs/bayes/robma_sensitivity_{dataset}.log",
    benchmark:
        "benchmarks/out/robma_sensitivity_{dataset}.tsv"
    conda:
        "../envs/alliancemeta.yaml"
    threads: 2
    params:
        code=CODE,
        bayes=SETTINGS.bayes,
        seed=SETTINGS.seed,
        study=study,
    script:
        "../scripts/robma_sensitivity.py"


rule robma_sensitivity_all:
    input:
        expand(rules.robma_sensitivity.output.table, dataset=STUDY_DATASETS),


own_target("robma_sensitivity", "robma_sensitivity")
own_target("robma_sensitivity_all", "robma_sensitivity")


rule bayes:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        table=report(
            "results/studies/{dataset}/tables/bayes.csv",
            caption="../report/posterior_table.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "Bayesian meta-analysis"},
        ),
        comparison=report(
            "results/studies/{dataset}/tables/model_comparison.csv",
            caption="../report/posterior_comparison.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={
                "dataset": "{dataset}",
                "table": "Bayesian model comparison (LOO)",
            },
        ),
        posterior="results/studies/{dataset}/posterior.nc",
    log:
        "logs/bayes/bayes_{dataset}.log",
    benchmark:
        "benchmarks/out/bayes_{dataset}.tsv"
    conda:
        "../envs/alliancemeta.yaml"
    threads: 2
    params:
        code=CODE,
        bayes=SETTINGS.bayes,
        seed=SETTINGS.seed,
        study=study,
        about=about_study,
    script:
        "../scripts/bayes.py"


rule bayes_posterior_figure:
    input:
        studies="data/processed/studies/{dataset}.csv",
        posterior="results/studies/{dataset}/posterior.nc",
    output:
        pdf="results/studies/{dataset}/figures/posterior.pdf",
        png=report(
            "results/studies/{dataset}/figures/posterior.png",
            caption="../report/posterior.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "Bayesian posterior"},
        ),
    log:
        "logs/bayes/posterior_figure_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        bayes=SETTINGS.bayes,
        study=study,
        about=about_study,
    script:
        "../scripts/bayes_posterior_figure.py"
