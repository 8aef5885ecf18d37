# Stage bayes: Bayesian meta-analysis of each study-level dataset: the exact posterior by quadrature
# over tau (prior sensitivity, model averaging), MCMC with nutpie for the random-effects,
# meta-regression and three-level models, and the posterior figure.  The sampling rule passes the
# config seed; the package derives the dataset's seed as derive_seed(seed, "bayes/<dataset>") and
# from it one seed per model.


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
        averaging=report(
            "results/studies/{dataset}/tables/bayes_model_averaging.csv",
            caption="../report/posterior_model_averaging.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "Bayesian model averaging"},
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
