# Pages for `snakemake --report report.html`: dataset summary + stats, verification, a playable
# episode, training curves and evaluation metrics (the eval plots are report items of rules/eval.smk).


rule report_dataset:
    input:
        stats=rules.stats.output.stats,
        info=f"{META}/info.json",
    output:
        report(
            f"{RESULTS}/{{ds}}/report/dataset.html",
            caption="captions/dataset.rst",
            category="1. Dataset",
            labels={"page": "summary and stats"},
        ),
    log:
        "logs/report_dataset/{ds}.log",
    benchmark:
        "benchmarks/report_dataset/{ds}.tsv"
    conda:
        "../envs/train.yaml"
    params:
        dataset=dataset_dir,
        code=code_version("report"),
    shell:
        "posttrain report dataset {params.dataset:q} --output {output:q} > {log:q} 2>&1"


rule report_video:
    input:
        info=f"{META}/info.json",
        episodes=f"{META}/episodes.jsonl",
    output:
        report(
            f"{RESULTS}/{{ds}}/report/episode_video.html",
            caption="captions/episode_video.rst",
            category="1. Dataset",
            labels={"page": "episode video"},
        ),
    log:
        "logs/report_video/{ds}.log",
    benchmark:
        "benchmarks/report_video/{ds}.tsv"
    conda:
        "../envs/train.yaml"
    params:
        dataset=dataset_dir,
        episode=config.get("report", {}).get("video_episode", 0),
        code=code_version("report"),
    shell:
        "posttrain report video {params.dataset:q} --episode {params.episode} --output {output:q} > {log:q} 2>&1"


rule report_verify:
    input:
        rules.verify.output.report,
    output:
        report(
            f"{RESULTS}/{{ds}}/report/verify.html",
            caption="captions/verify.rst",
            category="2. Verification",
            labels={"page": "checks and previews"},
        ),
    log:
        "logs/report_verify/{ds}.log",
    benchmark:
        "benchmarks/report_verify/{ds}.tsv"
    conda:
        "../envs/train.yaml"
    params:
        verify_dir=verify_dir,
        code=code_version("report"),
    shell:
        "posttrain report verify {params.verify_dir:q} --output {output:q} > {log:q} 2>&1"


rule report_training:
    input:
        rules.train.output[0],
    output:
        report(
            f"{RESULTS}/{{ds}}/report/{{run}}/training_curves.png",
            caption="captions/training_curves.rst",
            category="3. Training",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "curves"},
        ),
    log:
        "logs/report_training/{ds}/{run}.log",
    benchmark:
        "benchmarks/report_training/{ds}/{run}.tsv"
    conda:
        "../envs/train.yaml"
    params:
        run_dir=run_dir,
        code=code_version("report"),
    shell:
        "posttrain report training {params.run_dir:q} --output {output:q} > {log:q} 2>&1"


rule report_metrics:
    input:
        rules.eval.output.metrics,
    output:
        report(
            f"{RESULTS}/{{ds}}/report/{{run}}/eval_metrics.html",
            caption="captions/eval_metrics.rst",
            category="4. Evaluation",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "metrics"},
        ),
    log:
        "logs/report_metrics/{ds}/{run}.log",
    benchmark:
        "benchmarks/report_metrics/{ds}/{run}.tsv"
    conda:
        "../envs/train.yaml"
    params:
        code=code_version("report"),
    shell:
        "posttrain report metrics {input:q} --output {output:q} > {log:q} 2>&1"
