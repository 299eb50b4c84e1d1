# Post-training. Only DONE.json is declared: checkpoints live undeclared in the run directory, so
# a failed or killed run is never deleted by Snakemake and the rerun resumes from the newest
# complete checkpoint. GPUs and launcher are resources (set by the profile), not params.


rule train:
    input:
        stats=rules.stats.output.stats,
        verified=rules.verify.output.report,
        # the native trainer reads every frame from the decoded copy (rules/frames.smk)
        frames=rules.frames.output[0] if config["train"]["backend"] == "native" else [],
    output:
        f"{RESULTS}/{{ds}}/train/{{run}}/DONE.json",
    log:
        "logs/train/{ds}/{run}.log",
    benchmark:
        "benchmarks/train/{ds}/{run}.tsv"
    conda:
        "../envs/train.yaml"
    threads: 4
    resources:
        gpu=0,
        launcher="posttrain",
    params:
        dataset=dataset_dir,
        run_dir=run_dir,
        frames=lambda wc, input: f"--frames {shlex.quote(input.frames)}" if input.frames else "",
        args=stage_flags("train"),
        code=code_version("train"),
    shell:
        # The log keeps every attempt, each after a dated separator line, so a resumed or retried
        # run keeps its history. Snakemake deletes a declared log before each job, so the log is a
        # hard link to an undeclared .<run>.log.history that every attempt appends to (where links
        # fail, the log holds this attempt only). Then fail before training when the node has
        # fewer GPUs than the profile asks for.
        "history=logs/train/{wildcards.ds}/.{wildcards.run}.log.history; touch $history; "
        "ln -f $history {log:q} || true; "
        "echo \"=== train attempt $(date '+%Y-%m-%d %H:%M:%S %z') ===\" >> {log:q}; "
        "python -m posttrain.gpus {resources.gpu} 2>&1 | tee -a {log:q}; "
        + TRAIN_COMMAND
        + " --dataset {params.dataset:q} {params.frames} --output {params.run_dir:q} {params.args} >> {log:q} 2>&1"
