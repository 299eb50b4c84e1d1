# Open-loop evaluation of the final checkpoint (DONE.json names it) on the held-out episodes
# recorded in its split.json; with eval.all_checkpoints also every kept checkpoint.


rule eval:
    input:
        done=rules.train.output[0],
        stats=rules.stats.output.stats,
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
    log:
        "logs/eval/{ds}/{run}.log",
    benchmark:
        "benchmarks/eval/{ds}/{run}.tsv"
    conda:
        "../envs/train.yaml"
    threads: 2
    resources:
        gpu=0,
    params:
        run_dir=run_dir,
        dataset=dataset_dir,
        outdir=eval_dir,
        args=stage_flags("eval"),
        code=code_version("eval"),
    shell:
        # The run directory resolves to DONE.json's final checkpoint.
        "posttrain eval {params.run_dir:q} {params.dataset:q} --output {params.outdir:q} {params.args} "
        "> {log:q} 2>&1"
