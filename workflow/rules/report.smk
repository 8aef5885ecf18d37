# Provenance of a run: package versions, config, seed and SHA-256 of every input.


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
        config=config,
    script:
        "../scripts/provenance.py"
