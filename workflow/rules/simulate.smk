# Stage simulate: the Monte-Carlo simulation study of the interval methods (make simulate; not part of make
# run). Rule simulation_batch runs one block of replicates of one condition, rule simulation gathers every
# batch into results/simulation/simulation.csv, simulation.md and figures/coverage.{pdf,png}. The batch rule
# passes the config seed; the package derives the condition's seed as derive_seed(seed, "simulation/<name>")
# and one independent stream per replicate from it, so results do not depend on the batch size.
from alliancemeta.pipeline.simulation import SimulationSettings

try:
    SIMULATION = SimulationSettings.from_config(config)
except ConfigError as err:
    _stop(str(err))

own_target("simulation_batch", "simulation")
own_target("simulation", "simulation")


# The gather takes seconds: on a cluster it runs in the Snakemake process itself, not as a Slurm job.
localrules:
    simulation,


rule simulation_batch:
    output:
        table="results/simulation/batches/{condition}/batch{batch}.csv",
    log:
        "logs/simulation/{condition}_batch{batch}.log",
    benchmark:
        "logs/simulation/{condition}_batch{batch}.benchmark.tsv"
    wildcard_constraints:
        condition="|".join(SIMULATION.conditions),
        batch=r"\d+",
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        condition=SIMULATION.batch_condition,
        replicates=SIMULATION.batch_replicates,
        fit=SIMULATION.fit,
        seed=SETTINGS.seed,
    script:
        "../scripts/simulation_batch.py"


rule simulation:
    input:
        batches=expand(
            rules.simulation_batch.output.table,
            condition=list(SIMULATION.conditions),
            batch=range(SIMULATION.n_batches),
        ),
    output:
        table=report(
            "results/simulation/simulation.csv",
            caption="../report/simulation.rst",
            category="Simulation study",
            labels={"table": "bias, RMSE and coverage"},
        ),
        markdown="results/simulation/simulation.md",
        pdf="results/simulation/figures/coverage.pdf",
        png=report(
            "results/simulation/figures/coverage.png",
            caption="../report/simulation_coverage.rst",
            category="Simulation study",
            labels={"figure": "coverage and bias"},
        ),
    log:
        "logs/simulation/simulation.log",
    benchmark:
        "logs/simulation/simulation.benchmark.tsv"
    conda:
        "../envs/alliancemeta.yaml"
    params:
        code=CODE,
        simulation=SIMULATION,
        about=SIMULATION.about(),
    script:
        "../scripts/simulation.py"
