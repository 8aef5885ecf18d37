import sys

sys.stderr = open(snakemake.log[0], "w", buffering=1)

from alliancemeta.report.provenance import write_provenance

write_provenance(snakemake.input.inputs, snakemake.output.provenance, snakemake.params.config)
