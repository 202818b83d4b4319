# Evaluation artifacts read back from MLflow, per experiment and across experiments.


rule report:
    input:
        done=RUN.train_done,
    output:
        metrics=report(
            REPORT.metrics_csv,
            caption="../report/metrics.rst",
            category="Experiments",
            subcategory="{experiment}",
        ),
        curves=report(
            REPORT.curves,
            caption="../report/curves.rst",
            category="Experiments",
            subcategory="{experiment}",
        ),
        summary=report(
            REPORT.summary,
            caption="../report/run_summary.rst",
            category="Experiments",
            subcategory="{experiment}",
        ),
        markdown=REPORT.markdown,
    log:
        LOGS / "report" / "{experiment}.log",
    conda:
        CONDA_ENV
    params:
        config=experiment_config,
    shell:
        "python -m pipeline report --config {params.config} > {log} 2>&1"


rule compare:
    input:
        summaries=per_experiment(REPORT.summary),
    output:
        markdown=report(
            COMPARISON.markdown, caption="../report/comparison_table.rst", category="Comparison"
        ),
        plot=report(COMPARISON.plot, caption="../report/summary.rst", category="Comparison"),
    log:
        LOGS / "compare.log",
    conda:
        CONDA_ENV
    params:
        config=CONFIG_FILE,
    shell:
        "python -m pipeline compare --config {params.config} --summaries {input.summaries} "
        "> {log} 2>&1"


rule reproduce:
    default_target: False
    # Every experiment of the config (a sweep: one per method and grid point), then the
    # comparison: `snakemake reproduce --configfile config/experiments/reproduce-imagenette.yaml`
    input:
        final_targets(),


rule evaluate_run:
    input:
        final=RUN.final,
    output:
        evaluation=EVALUATION,
    log:
        LOGS / "evaluate" / "{experiment}.log",
    conda:
        CONDA_ENV
    params:
        config=experiment_config,
    shell:
        "python -m pipeline evaluate --config {params.config} > {log} 2>&1"


rule evaluate:
    default_target: False
    # On request (`snakemake evaluate`): each experiment's final weights, single-crop top-1 and
    # top-5 on the val shards at the config's resolution, into its report folder and MLflow run.
    # Other checkpoints or resolutions: `python -m pipeline evaluate --checkpoint ... --set ...`.
    input:
        per_experiment(EVALUATION),
