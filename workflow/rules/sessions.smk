# Stage sessions: session-level analyses of each session dataset: REML mixed models (within_between,
# lagged, therapist, components, split; Satterthwaite df) with Bayesian within_between, components and
# split models, descriptives, reliable-change rupture-repair episodes and their outcome, early alliance
# vs outcome change, two-stage pooling over sites, and the session figures.  Coefficients follow SPEC §4:
# positive = a stronger alliance goes with a better outcome.


rule sessions_models:
    input:
        sessions="data/processed/sessions/{dataset}.csv",
    output:
        mixed_models=report(
            "results/sessions/{dataset}/tables/mixed_models.csv",
            caption="../report/sessions_mixed_models.rst",
            category="Session level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "mixed models"},
        ),
        variance_components=report(
            "results/sessions/{dataset}/tables/variance_components.csv",
            caption="../report/sessions_variance_components.rst",
            category="Session level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "variance components"},
        ),
        diagnostics=report(
            "results/sessions/{dataset}/tables/bayes_diagnostics.csv",
            caption="../report/sessions_bayes_diagnostics.rst",
            category="Session level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "sampler diagnostics"},
        ),
        posterior="results/sessions/{dataset}/posterior.nc",
    log:
        "logs/sessions/models_{dataset}.log",
    benchmark:
        "benchmarks/out/sessions_models_{dataset}.tsv"
    conda:
        "../envs/alliancemeta.yaml"
    threads: 2
    params:
        code=CODE,
        session=session,
        seed=SETTINGS.seed,
        about=about_session,
    script:
        "../scripts/sessions_models.py"


rule sessions_descriptives:
    input:
        sessions="data/processed/sessions/{dataset}.csv",
    output:
        descriptives=report(
            "results/sessions/{dataset}/tables/descriptives.csv",
            caption="../report/sessions_descriptives.rst",
            category="Session level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "descriptives"},
        ),
        ruptures=report(
            "results/sessions/{dataset}/tables/ruptures.csv",
            caption="../report/sessions_ruptures.rst",
            category="Session level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "rupture-repair episodes"},
        ),
        client_level=report(
            "results/sessions/{dataset}/tables/client_level.csv",
            caption="../report/sessions_client_level.rst",
            category="Session level",
            subcategory="{dataset}",
            labels={
                "dataset": "{dataset}",
                "table": "early alliance and outcome change",
            },
        ),
        rupture_outcome=report(
            "results/sessions/{dataset}/tables/rupture_outcome.csv",
            caption="../report/sessions_rupture_outcome.rst",
            category="Session level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "ruptures and outcome change"},
        ),
    log:
        "logs/sessions/descriptives_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        session=session,
        seed=SETTINGS.seed,
        about=about_session,
    script:
        "../scripts/sessions_descriptives.py"


rule sessions_site_effects:
    input:
        sessions="data/processed/sessions/{dataset}.csv",
    output:
        table=report(
            "results/sessions/{dataset}/tables/site_effects.csv",
            caption="../report/sessions_site_effects.rst",
            category="Session level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "two-stage site effects"},
        ),
    log:
        "logs/sessions/site_effects_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        session=session,
        meta=SETTINGS.meta,
        about=about_session,
    script:
        "../scripts/sessions_site_effects.py"


only_when("sessions_site_effects", has_site)


rule sessions_figures:
    input:
        sessions="data/processed/sessions/{dataset}.csv",
        mixed_models="results/sessions/{dataset}/tables/mixed_models.csv",
        posterior="results/sessions/{dataset}/posterior.nc",
    output:
        trajectories_pdf="results/sessions/{dataset}/figures/trajectories.pdf",
        trajectories_png=report(
            "results/sessions/{dataset}/figures/trajectories.png",
            caption="../report/sessions_trajectories.rst",
            category="Session level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "trajectories"},
        ),
        coefficients_pdf="results/sessions/{dataset}/figures/coefficients.pdf",
        coefficients_png=report(
            "results/sessions/{dataset}/figures/coefficients.png",
            caption="../report/sessions_coefficients.rst",
            category="Session level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "within/between coefficients"},
        ),
        posterior_pdf="results/sessions/{dataset}/figures/posterior.pdf",
        posterior_png=report(
            "results/sessions/{dataset}/figures/posterior.png",
            caption="../report/sessions_posterior.rst",
            category="Session level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "Bayesian posterior"},
        ),
    log:
        "logs/sessions/figures_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        session=session,
        about=about_session,
    script:
        "../scripts/sessions_figures.py"
