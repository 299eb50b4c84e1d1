# Dataset statistics (GR00T's meta/stats.json) and verification against the source HDF5.


rule stats:
    input:
        f"{META}/info.json",
        f"{META}/episodes.jsonl",
    output:
        stats=ensure(f"{META}/stats.json", non_empty=True),
        episodes=f"{META}/episodes_stats.jsonl",
    log:
        "logs/stats/{ds}.log",
    benchmark:
        "benchmarks/stats/{ds}.tsv"
    conda:
        "../envs/convert.yaml"
    threads: 2
    params:
        dataset=dataset_dir,
        code=code_version("stats"),
    shell:
        "posttrain stats {params.dataset:q} --workers {threads} > {log:q} 2>&1"


rule verify:
    input:
        # after stats: both read the dataset directory, stats writes into it
        stats=rules.stats.output.stats,
        hdf5=all_raw_hdf5_inputs if RAW_SOURCE else [],
    output:
        report=f"{RESULTS}/{{ds}}/verify/report.json",
    log:
        "logs/verify/{ds}.log",
    benchmark:
        "benchmarks/verify/{ds}.tsv"
    conda:
        "../envs/convert.yaml"
    params:
        source_content=all_source_fingerprints,
        dataset=dataset_dir,
        outdir=verify_dir,
        # a pre-converted Hub dataset has no source HDF5: only the internal checks run
        source=verify_source_args if RAW_SOURCE else "",
        args=stage_flags("verify"),
        code=code_version("verify"),
    shell:
        "posttrain verify {params.dataset:q} {params.source} --output {params.outdir:q} {params.args} " "> {log:q} 2>&1"
