# alliancemeta: meta-analysis of the therapeutic alliance-outcome association.
# This file is the table of contents; helpers and validation live in workflow/rules/common.smk.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


# The report opens on this page, written by rule summary: every dataset's headline findings.
report: LANDING


include: "workflow/rules/ingest.smk"
include: "workflow/rules/meta.smk"
include: "workflow/rules/bias.smk"
include: "workflow/rules/influence.smk"
include: "workflow/rules/bayes.smk"
include: "workflow/rules/sessions.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/simulate.smk"
include: "workflow/rules/multiverse.smk"


rule all:
    default_target: True
    input:
        all_targets(),
