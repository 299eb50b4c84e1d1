# Post-training. Only DONE.json is declared: checkpoints live undeclared in the run directory, so
# a failed or killed run is never deleted by Snakemake and the rerun resumes from the newest
# complete checkpoint. GPUs and launcher are resources (set by the profile), not params.


rule train:
    input:
        stats=f"{RESULTS}/{{ds}}/lerobot/meta/stats.json",
        verified=f"{RESULTS}/{{ds}}/verify/report.json",
        # the native trainer reads every frame from the decoded copy (rules/frames.smk)
        frames=f"{RESULTS}/{{ds}}/frames" if config["train"]["backend"] == "native" else [],
    output:
        f"{RESULTS}/{{ds}}/train/{{run}}/DONE.json",
    params:
        dataset=dataset_dir,
        run_dir=lambda wc: f"{RESULTS}/{wc.ds}/train/{wc.run}",
        frames=lambda wc, input: f"--frames {shlex.quote(input.frames)}" if input.frames else "",
        cfg=train_config(),
        args=train_args(),
        code=code_version("train"),
    threads: 4
    resources:
        gpu=0,
        launcher="posttrain",
    log:
        "logs/train/{ds}/{run}.log",
    benchmark:
        "benchmarks/train/{ds}/{run}.tsv"
    conda:
        "../envs/train.yaml"
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
