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


rule moderators:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        coefficients="results/studies/{dataset}/tables/moderators.csv",
        tests="results/studies/{dataset}/tables/moderator_tests.csv",
        subgroups="results/studies/{dataset}/tables/subgroups.csv",
    log:
        "logs/meta/moderators_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        settings=moderator_params,
    script:
        "../scripts/moderators.py"


register_study_output("tables/moderators.csv", when=has_moderators)
register_study_output("tables/moderator_tests.csv", when=has_moderators)
register_study_output("tables/subgroups.csv", when=has_moderators)


rule multilevel:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        table="results/studies/{dataset}/tables/multilevel.csv",
    log:
        "logs/meta/multilevel_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        level=config["meta"]["level"],
    script:
        "../scripts/multilevel.py"


register_study_output("tables/multilevel.csv", when=has_study_id)


rule aggregated:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        table="results/studies/{dataset}/tables/random_effects_aggregated.csv",
    log:
        "logs/meta/aggregated_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        settings=aggregate_params,
    script:
        "../scripts/aggregated.py"


register_study_output("tables/random_effects_aggregated.csv", when=has_study_id)
