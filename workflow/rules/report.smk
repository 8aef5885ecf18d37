# Stage report: the provenance record of the run (package versions, the complete config and seed,
# SHA-256 of every input).


rule provenance:
    input:
        inputs=all_inputs(),
    output:
        provenance="results/provenance.json",
    log:
        "logs/report/provenance.log",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        config=SETTINGS.config,
    script:
        "../scripts/provenance.py"
