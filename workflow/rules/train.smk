# Training: a local rule that submits through submitit (local processes or Slurm) and waits.
# Re-running it resumes from the last checkpoint, or re-attaches to a job that still runs.


rule mlflow_group:
    # Several experiments: one MLflow parent run for all of them, made before any trains.
    output:
        group=mlflow_group_path(CFG),
    log:
        LOGS / "mlflow_group.log",
    conda:
        CONDA_ENV
    params:
        config=CONFIG_FILE,
    shell:
        "python -m pipeline mlflow-group --config {params.config} --out {output.group} > {log} 2>&1"


rule train:
    input:
        group_input,
        verified=DATA.verified,
        indexes=[DATA.shard_index(split) for split in SPLITS],
    output:
        final=RUN.final,
        done=RUN.train_done,
        model=RUN.model_weights,
        model_card=RUN.model_card,
    log:
        LOGS / "train" / "{experiment}.log",
    # Never re-run on failure: a cancelled job is a decision, a NaN would recur, and requeues
    # after preemption are handled inside the job by submitit.
    retries: 0
    conda:
        CONDA_ENV
    resources:
        # profiles/default allows one at a time: local training uses every core.
        train_slots=1,
    params:
        config=experiment_config,
        fingerprint=experiment_fingerprint,
    shell:
        "python -m pipeline train --config {params.config} > {log} 2>&1"
