# Frequentist meta-analysis: random-effects models for every configured estimator and test.


rule random_effects:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        table="results/studies/{dataset}/tables/random_effects.csv",
    log:
        "logs/meta/random_effects_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        settings=meta_params,
    script:
        "../scripts/random_effects.py"


register_study_output("tables/random_effects.csv")
