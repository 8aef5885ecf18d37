# Stage meta: pooled effects for every configured estimator and test, moderators, the three-level
# model and the aggregate-then-pool alternative when effects are nested in studies, and the forest plot.


rule random_effects:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        table=report(
            "results/studies/{dataset}/tables/random_effects.csv",
            caption="../report/random_effects.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "random-effects models"},
        ),
    log:
        "logs/meta/random_effects_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        meta=SETTINGS.meta,
        about=about_study,
    script:
        "../scripts/random_effects.py"


rule moderators:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        coefficients=report(
            "results/studies/{dataset}/tables/moderators.csv",
            caption="../report/moderators.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "meta-regression coefficients"},
        ),
        tests=report(
            "results/studies/{dataset}/tables/moderator_tests.csv",
            caption="../report/moderator_tests.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "moderator tests"},
        ),
        subgroups=report(
            "results/studies/{dataset}/tables/subgroups.csv",
            caption="../report/subgroups.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "subgroup analyses"},
        ),
    log:
        "logs/meta/moderators_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        study=study,
        meta=SETTINGS.meta,
        about=about_study,
    script:
        "../scripts/moderators.py"


only_when("moderators", has_moderators)


rule multilevel:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        table=report(
            "results/studies/{dataset}/tables/multilevel.csv",
            caption="../report/multilevel.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "three-level model"},
        ),
    log:
        "logs/meta/multilevel_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        meta=SETTINGS.meta,
        about=about_study,
    script:
        "../scripts/multilevel.py"


only_when("multilevel", has_study_id)


rule aggregated:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        table=report(
            "results/studies/{dataset}/tables/random_effects_aggregated.csv",
            caption="../report/aggregated.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "aggregated within studies"},
        ),
    log:
        "logs/meta/aggregated_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        meta=SETTINGS.meta,
        about=about_study,
    script:
        "../scripts/aggregated.py"


only_when("aggregated", has_study_id)


rule che:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        table=report(
            "results/studies/{dataset}/tables/che.csv",
            caption="../report/che.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "CHE working model"},
        ),
    log:
        "logs/meta/che_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        meta=SETTINGS.meta,
        about=about_study,
    script:
        "../scripts/che.py"


only_when("che", has_study_id)


rule location_scale:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        coefficients=report(
            "results/studies/{dataset}/tables/location_scale.csv",
            caption="../report/location_scale.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "location-scale models"},
        ),
        tests=report(
            "results/studies/{dataset}/tables/location_scale_tests.csv",
            caption="../report/location_scale_tests.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "location-scale tests"},
        ),
    log:
        "logs/meta/location_scale_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        study=study,
        meta=SETTINGS.meta,
        about=about_study,
    script:
        "../scripts/location_scale.py"


only_when("location_scale", has_scale_moderators)


rule distribution:
    input:
        studies="data/processed/studies/{dataset}.csv",
    output:
        table=report(
            "results/studies/{dataset}/tables/distribution.csv",
            caption="../report/distribution.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "distribution of true effects"},
        ),
    log:
        "logs/meta/distribution_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        study=study,
        meta=SETTINGS.meta,
        seed=SETTINGS.seed,
        about=about_study,
    script:
        "../scripts/distribution.py"


rule forest:
    input:
        studies="data/processed/studies/{dataset}.csv",
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
        "logs/meta/forest_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        study=study,
        meta=SETTINGS.meta,
        about=about_study,
    script:
        "../scripts/forest.py"
