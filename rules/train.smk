# Post-training. Only DONE.json is declared: checkpoints live undeclared in the run directory, so
# a failed or killed run is never deleted by Snakemake and the rerun resumes from the newest
# complete checkpoint. GPUs and launcher are resources (set by the profile), not params.


rule train:
    input:
        stats=f"{RESULTS}/{{ds}}/lerobot/meta/stats.json",
        verified=f"{RESULTS}/{{ds}}/verify/report.json",
    output:
        f"{RESULTS}/{{ds}}/train/{{run}}/DONE.json",
    params:
        dataset=dataset_dir,
        run_dir=lambda wc: f"{RESULTS}/{wc.ds}/train/{wc.run}",
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
        # Fail before training when the node has fewer GPUs than the profile asks for. REQUIRE_GPUS
        # is a global (not a param) so that moving the checkout does not retrain.
        "python {REQUIRE_GPUS:q} {resources.gpu} 2>&1 | tee {log:q}; "
        + TRAIN_COMMAND
        + " --dataset {params.dataset:q} --output {params.run_dir:q} {params.args} >> {log:q} 2>&1"
