# Publication bias, influence and sensitivity of the headline model (first estimator and test in the
# config): small-study tests and adjustments, leave-one-out and influence diagnostics, cumulative
# meta-analysis (by year when the dataset has one, else in input order, as the table says) and the
# figures of the stage.

BIAS_SETTINGS = {
    "method": headline_method(),
    "test": headline_test(),
    "level": config["meta"]["level"],
}


rule publication_bias:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        table="results/studies/{dataset}/tables/publication_bias.csv",
    log:
        "logs/bias/publication_bias_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        settings=BIAS_SETTINGS,
    script:
        "../scripts/publication_bias.py"


rule influence_diagnostics:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        influence="results/studies/{dataset}/tables/influence.csv",
        cumulative="results/studies/{dataset}/tables/cumulative.csv",
        baujat="results/studies/{dataset}/tables/baujat.csv",
    log:
        "logs/bias/influence_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        settings=BIAS_SETTINGS,
    script:
        "../scripts/influence.py"


rule bias_figures:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        funnel_pdf="results/studies/{dataset}/figures/funnel.pdf",
        funnel_png=report(
            "results/studies/{dataset}/figures/funnel.png",
            caption="../report/funnel.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "contour-enhanced funnel plot"},
        ),
        leave1out_pdf="results/studies/{dataset}/figures/leave1out.pdf",
        leave1out_png=report(
            "results/studies/{dataset}/figures/leave1out.png",
            caption="../report/leave1out.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "leave-one-out forest plot"},
        ),
        cumulative_pdf="results/studies/{dataset}/figures/cumulative.pdf",
        cumulative_png=report(
            "results/studies/{dataset}/figures/cumulative.png",
            caption="../report/cumulative.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "cumulative forest plot"},
        ),
        baujat_pdf="results/studies/{dataset}/figures/baujat.pdf",
        baujat_png=report(
            "results/studies/{dataset}/figures/baujat.png",
            caption="../report/baujat.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "Baujat plot"},
        ),
        influence_pdf="results/studies/{dataset}/figures/influence.pdf",
        influence_png=report(
            "results/studies/{dataset}/figures/influence.png",
            caption="../report/influence.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "influence diagnostics"},
        ),
    log:
        "logs/bias/figures_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        settings=BIAS_SETTINGS,
        dataset="{dataset}",
    script:
        "../scripts/bias_figures.py"


for _table in ["publication_bias", "influence", "cumulative", "baujat"]:
    register_study_output(f"tables/{_table}.csv")
for _figure in ["funnel", "leave1out", "cumulative", "baujat", "influence"]:
    register_study_output(f"figures/{_figure}.pdf")
    register_study_output(f"figures/{_figure}.png")
