# Pages for `snakemake --report report.html`: dataset summary + stats, verification, a playable
# episode, training curves and evaluation metrics (the eval plots are report items of rules/eval.smk).


rule report_dataset:
    input:
        stats=f"{RESULTS}/{{ds}}/lerobot/meta/stats.json",
        info=f"{RESULTS}/{{ds}}/lerobot/meta/info.json",
    output:
        report(f"{RESULTS}/{{ds}}/report/dataset.html", caption="captions/dataset.rst",
               category="1. Dataset", labels={"page": "summary and stats"}),
    params:
        dataset=dataset_dir,
        code=code_version("report"),
    log:
        "logs/report_dataset/{ds}.log",
    benchmark:
        "benchmarks/report_dataset/{ds}.tsv"
    conda:
        "../envs/train.yaml"
    shell:
        "posttrain report dataset {params.dataset:q} --output {output:q} > {log:q} 2>&1"


rule report_video:
    input:
        info=f"{RESULTS}/{{ds}}/lerobot/meta/info.json",
        episodes=f"{RESULTS}/{{ds}}/lerobot/meta/episodes.jsonl",
    output:
        report(f"{RESULTS}/{{ds}}/report/episode_video.html", caption="captions/episode_video.rst",
               category="1. Dataset", labels={"page": "episode video"}),
    params:
        dataset=dataset_dir,
        episode=config.get("report", {}).get("video_episode", 0),
        code=code_version("report"),
    log:
        "logs/report_video/{ds}.log",
    benchmark:
        "benchmarks/report_video/{ds}.tsv"
    conda:
        "../envs/train.yaml"
    shell:
        "posttrain report video {params.dataset:q} --episode {params.episode} --output {output:q} > {log:q} 2>&1"


rule report_verify:
    input:
        f"{RESULTS}/{{ds}}/verify/report.json",
    output:
        report(f"{RESULTS}/{{ds}}/report/verify.html", caption="captions/verify.rst",
               category="2. Verification", labels={"page": "checks and previews"}),
    params:
        verify_dir=lambda wc: f"{RESULTS}/{wc.ds}/verify",
        code=code_version("report"),
    log:
        "logs/report_verify/{ds}.log",
    benchmark:
        "benchmarks/report_verify/{ds}.tsv"
    conda:
        "../envs/train.yaml"
    shell:
        "posttrain report verify {params.verify_dir:q} --output {output:q} > {log:q} 2>&1"


rule report_training:
    input:
        f"{RESULTS}/{{ds}}/train/{{run}}/DONE.json",
    output:
        report(f"{RESULTS}/{{ds}}/report/{{run}}/training_curves.png", caption="captions/training_curves.rst",
               category="3. Training", subcategory="{run}", labels={"run": "{run}", "figure": "curves"}),
    params:
        run_dir=lambda wc: f"{RESULTS}/{wc.ds}/train/{wc.run}",
        code=code_version("report"),
    log:
        "logs/report_training/{ds}/{run}.log",
    benchmark:
        "benchmarks/report_training/{ds}/{run}.tsv"
    conda:
        "../envs/train.yaml"
    shell:
        "posttrain report training {params.run_dir:q} --output {output:q} > {log:q} 2>&1"


rule report_metrics:
    input:
        f"{RESULTS}/{{ds}}/eval/{{run}}/metrics.json",
    output:
        report(f"{RESULTS}/{{ds}}/report/{{run}}/eval_metrics.html", caption="captions/eval_metrics.rst",
               category="4. Evaluation", subcategory="{run}", labels={"run": "{run}", "figure": "metrics"}),
    params:
        code=code_version("report"),
    log:
        "logs/report_metrics/{ds}/{run}.log",
    benchmark:
        "benchmarks/report_metrics/{ds}/{run}.tsv"
    conda:
        "../envs/train.yaml"
    shell:
        "posttrain report metrics {input:q} --output {output:q} > {log:q} 2>&1"
