# Stage influence: how much single effect sizes and whole studies move the headline result:
# leave-one-out and influence diagnostics, cumulative meta-analysis (by year when the dataset has one,
# else in input order, as the table says), Baujat data, the three-level model's leave-one-study-out
# diagnostics (when study_id groups effects) and the figures of all of them.


rule influence:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        influence=report(
            "results/studies/{dataset}/tables/influence.csv",
            caption="../report/influence_table.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "influence diagnostics"},
        ),
        cumulative=report(
            "results/studies/{dataset}/tables/cumulative.csv",
            caption="../report/cumulative_table.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "cumulative meta-analysis"},
        ),
        baujat=report(
            "results/studies/{dataset}/tables/baujat.csv",
            caption="../report/baujat_table.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "Baujat coordinates"},
        ),
    log:
        "logs/influence/influence_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        meta=SETTINGS.meta,
        about=about_study,
    script:
        "../scripts/influence.py"


rule influence_figures:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
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
        "logs/influence/figures_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        study=study,
        meta=SETTINGS.meta,
        about=about_study,
    script:
        "../scripts/influence_figures.py"


rule influence_multilevel:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        table=report(
            "results/studies/{dataset}/tables/influence_multilevel.csv",
            caption="../report/influence_multilevel_table.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={
                "dataset": "{dataset}",
                "table": "three-level leave-one-study-out influence",
            },
        ),
        pdf="results/studies/{dataset}/figures/influence_multilevel.pdf",
        png=report(
            "results/studies/{dataset}/figures/influence_multilevel.png",
            caption="../report/influence_multilevel.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={
                "dataset": "{dataset}",
                "figure": "three-level leave-one-study-out influence",
            },
        ),
    log:
        "logs/influence/influence_multilevel_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        study=study,
        meta=SETTINGS.meta,
        about=about_study,
    script:
        "../scripts/influence_multilevel.py"


only_when("influence_multilevel", has_study_id)


rule gosh:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        table=report(
            "results/studies/{dataset}/tables/gosh_summary.csv",
            caption="../report/gosh_table.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "GOSH summary"},
        ),
        pdf="results/studies/{dataset}/figures/gosh.pdf",
        png=report(
            "results/studies/{dataset}/figures/gosh.png",
            caption="../report/gosh.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "GOSH plot"},
        ),
    log:
        "logs/influence/gosh_{dataset}.log",
    benchmark:
        "benchmarks/out/gosh_{dataset}.tsv"
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        study=study,
        meta=SETTINGS.meta,
        seed=SETTINGS.seed,
        about=about_study,
    script:
        "../scripts/gosh.py"
