# Stage bias: small-study tests and adjustments of the headline model (first estimator and test in
# the config) and the contour-enhanced funnel plot.


rule publication_bias:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        table=report(
            "results/studies/{dataset}/tables/publication_bias.csv",
            caption="../report/publication_bias.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "publication bias"},
        ),
    log:
        "logs/bias/publication_bias_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        meta=SETTINGS.meta,
        about=about_study,
    script:
        "../scripts/publication_bias.py"


rule funnel:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        pdf="results/studies/{dataset}/figures/funnel.pdf",
        png=report(
            "results/studies/{dataset}/figures/funnel.png",
            caption="../report/funnel.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "contour-enhanced funnel plot"},
        ),
    log:
        "logs/bias/funnel_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        study=study,
        meta=SETTINGS.meta,
        about=about_study,
    script:
        "../scripts/funnel.py"


rule selection_models:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        table=report(
            "results/studies/{dataset}/tables/selection_models.csv",
            caption="../report/selection_models.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "selection models"},
        ),
    log:
        "logs/bias/selection_models_{dataset}.log",
    benchmark:
        "benchmarks/out/selection_models_{dataset}.tsv"
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        study=study,
        meta=SETTINGS.meta,
        seed=SETTINGS.seed,
        about=about_study,
    script:
        "../scripts/selection_models.py"
