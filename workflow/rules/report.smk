# Stage report: the written methods-and-results of every dataset, APA tables (Markdown and LaTeX) beside
# their CSVs, a PRISMA 2020 / MARS synthesis checklist, results/summary.md with every dataset's headline,
# the landing page of results/report.html, and, when a run succeeds, results/provenance.json.


rule apa_study_table:
    input:
        tables=apa_inputs_studies,
    output:
        md="results/studies/{dataset}/report/{table}.md",
        tex="results/studies/{dataset}/report/{table}.tex",
    log:
        "logs/report/apa_{dataset}_{table}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        study=study,
        meta=SETTINGS.meta,
    script:
        "../scripts/apa_study_table.py"


rule apa_session_table:
    input:
        tables=apa_inputs_sessions,
    output:
        md="results/sessions/{dataset}/report/{table}.md",
        tex="results/sessions/{dataset}/report/{table}.tex",
    log:
        "logs/report/apa_{dataset}_{table}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        session=session,
    script:
        "../scripts/apa_session_table.py"


rule study_report:
    input:
        studies="data/processed/studies/{dataset}.csv",
        tables=study_tables,
    output:
        summary=report(
            "results/studies/{dataset}/report/summary.md",
            caption="../report/summary.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "text": "methods and results"},
        ),
        checklist=report(
            "results/studies/{dataset}/report/checklist.md",
            caption="../report/checklist.rst",
            category="Study level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "text": "PRISMA / MARS checklist"},
        ),
        headline="results/studies/{dataset}/report/headline.md",
    log:
        "logs/report/study_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        study=study,
        meta=SETTINGS.meta,
        bayes=SETTINGS.bayes,
        about=about_study,
    script:
        "../scripts/study_report.py"


rule session_report:
    input:
        sessions="data/processed/sessions/{dataset}.csv",
        tables=session_tables,
    output:
        summary=report(
            "results/sessions/{dataset}/report/summary.md",
            caption="../report/summary.rst",
            category="Session level",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "text": "methods and results"},
        ),
        headline="results/sessions/{dataset}/report/headline.md",
    log:
        "logs/report/session_{dataset}.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        session=session,
        about=about_session,
    script:
        "../scripts/session_report.py"


rule summary:
    input:
        headlines=all_headlines(),
        front=FRONT,
    output:
        summary="results/summary.md",
        landing="results/report/landing.rst",
        metadata="results/report/metadata.yaml",
    log:
        "logs/report/summary.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        datasets=all_datasets(),
        seed=SETTINGS.seed,
    script:
        "../scripts/summary.py"


onsuccess:
    finish_run()
