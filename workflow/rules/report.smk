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
        summary=REPORT.summary,
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
        markdown=COMPARISON.markdown,
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
