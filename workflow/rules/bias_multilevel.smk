# Influence diagnostics of the three-level model (effects nested in studies), for datasets whose rows
# share a study_id: each study is left out in turn and the model refitted (Cook's distance, DFBETAS,
# studentized deleted residuals, leave-one-study-out estimates; metafor's rma.mv diagnostics with
# cluster = study). The three-level model has the tests z and t: the headline knha maps to t.

INFLUENCE_MULTILEVEL_SETTINGS = {
    "test": "z" if headline_test() == "z" else "t",
    "level": config["meta"]["level"],
}


rule influence_multilevel:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        table="results/studies/{dataset}/tables/influence_multilevel.csv",
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
        "logs/bias/influence_multilevel_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        settings=INFLUENCE_MULTILEVEL_SETTINGS,
        dataset="{dataset}",
    script:
        "../scripts/influence_multilevel.py"


register_study_output("tables/influence_multilevel.csv", when=has_study_id)
register_study_output("figures/influence_multilevel.pdf", when=has_study_id)
register_study_output("figures/influence_multilevel.png", when=has_study_id)
