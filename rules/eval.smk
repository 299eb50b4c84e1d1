# Open-loop evaluation of the final checkpoint (DONE.json names it) on the held-out episodes
# recorded in its split.json; with eval.all_checkpoints also every kept checkpoint.


rule eval:
    input:
        done=f"{RESULTS}/{{ds}}/train/{{run}}/DONE.json",
        stats=f"{RESULTS}/{{ds}}/lerobot/meta/stats.json",
    output:
        metrics=f"{RESULTS}/{{ds}}/eval/{{run}}/metrics.json",
        horizon=report(
            f"{RESULTS}/{{ds}}/eval/{{run}}/horizon_error.png",
            caption="captions/eval_horizon.rst",
            category="4. Evaluation",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "error vs horizon"},
        ),
        trajectories=report(
            f"{RESULTS}/{{ds}}/eval/{{run}}/trajectories.png",
            caption="captions/eval_trajectories.rst",
            category="4. Evaluation",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "trajectories"},
        ),
    params:
        run_dir=lambda wc: f"{RESULTS}/{wc.ds}/train/{wc.run}",
        dataset=dataset_dir,
        outdir=lambda wc: f"{RESULTS}/{wc.ds}/eval/{wc.run}",
        cfg=stage_config("eval"),
        args=eval_args(),
        code=code_version("eval"),
    threads: 2
    resources:
        gpu=0,
    log:
        "logs/eval/{ds}/{run}.log",
    benchmark:
        "benchmarks/eval/{ds}/{run}.tsv"
    conda:
        "../envs/train.yaml"
    shell:
        # The run directory resolves to DONE.json's final checkpoint.
        "posttrain eval {params.run_dir:q} {params.dataset:q} --output {params.outdir:q} {params.args} "
        "> {log:q} 2>&1"
