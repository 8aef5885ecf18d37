# Figures of the study-level models (stage-specific figures live with their stage's rules).


rule forest:
    input:
        studies="data/processed/studies/{dataset}.csv",
        random_effects="results/studies/{dataset}/tables/random_effects.csv",
    output:
        pdf="results/studies/{dataset}/figures/forest.pdf",
        png=report(
            "results/studies/{dataset}/figures/forest.png",
            caption="../report/forest.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "forest plot"},
        ),
    log:
        "logs/figures/forest_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    script:
        "../scripts/forest.py"


register_study_output("figures/forest.pdf")
register_study_output("figures/forest.png")
