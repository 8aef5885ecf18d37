"""Everything a reader of the results needs besides the tables (no statistics here).

- :mod:`.numbers`     APA number formatting (r without a leading zero, p-values, intervals)
- :mod:`.apa`         APA tables in Markdown and LaTeX from the contract tables
- :mod:`.summary`     the written methods-and-results section of a dataset, from its tables
- :mod:`.checklist`   PRISMA 2020 / MARS reporting checklist
- :mod:`.simulation`  the simulation study's design and results tables
- :mod:`.provenance`  versions, config, input checksums and the git state of a run
- :mod:`.verify`      rerun into a temporary folder and list the files that differ
"""
