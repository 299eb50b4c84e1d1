# Dataset statistics (GR00T's meta/stats.json) and verification against the source HDF5.


rule stats:
    input:
        f"{RESULTS}/{{ds}}/lerobot/meta/info.json",
        f"{RESULTS}/{{ds}}/lerobot/meta/episodes.jsonl",
    output:
        stats=ensure(f"{RESULTS}/{{ds}}/lerobot/meta/stats.json", non_empty=True),
        episodes=f"{RESULTS}/{{ds}}/lerobot/meta/episodes_stats.jsonl",
    params:
        dataset=dataset_dir,
        code=code_version("stats"),
    threads: 2
    log:
        "logs/stats/{ds}.log",
    benchmark:
        "benchmarks/stats/{ds}.tsv"
    conda:
        "../envs/convert.yaml"
    shell:
        "posttrain stats {params.dataset:q} --workers {threads} > {log:q} 2>&1"


rule verify:
    input:
        # after stats: both read the dataset directory, stats writes into it
        stats=f"{RESULTS}/{{ds}}/lerobot/meta/stats.json",
        hdf5=raw_hdf5_input if RAW_SOURCE else [],
    output:
        report=f"{RESULTS}/{{ds}}/verify/report.json",
    params:
        source_content=source_fingerprint,
        dataset=dataset_dir,
        outdir=lambda wc: f"{RESULTS}/{wc.ds}/verify",
        # a pre-converted Hub dataset has no source HDF5: only the internal checks run
        source=lambda wc, input: f"--source {shlex.quote(input.hdf5)}" if RAW_SOURCE else "",
        cfg=stage_config("verify"),
        args=verify_args(),
        code=code_version("verify"),
    log:
        "logs/verify/{ds}.log",
    benchmark:
        "benchmarks/verify/{ds}.tsv"
    conda:
        "../envs/convert.yaml"
    shell:
        "posttrain verify {params.dataset:q} {params.source} --output {params.outdir:q} {params.args} "
        "> {log:q} 2>&1"
