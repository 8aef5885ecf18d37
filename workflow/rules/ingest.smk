# Stage ingest: validated inputs with Fisher-z effect sizes, written to data/processed/.


rule ingest_studies:
    input:
        raw=raw_studies,
    output:
        studies="data/processed/studies/{dataset}.csv",
    log:
        "logs/ingest/studies_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        study=study,
    script:
        "../scripts/ingest_studies.py"


rule ingest_sessions:
    input:
        raw=raw_sessions,
    output:
        sessions="data/processed/sessions/{dataset}.csv",
    log:
        "logs/ingest/sessions_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        session=session,
    script:
        "../scripts/ingest_sessions.py"
