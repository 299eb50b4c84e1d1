# Extra copies of the dataset for other readers, each off by default (config `export:`).
# LeRobot v3.0 (`export.lerobot_v3: true`): what lerobot >= 0.4 reads (it refuses v2.1), with GR00T's
# modality.json and stats (q01/q99) kept beside lerobot's own meta; made from the verified dataset.


rule export_lerobot_v3:
    input:
        stats=rules.stats.output.stats,
        verified=rules.verify.output.report,
    output:
        # the whole directory: Snakemake then leaves it to `posttrain export`, which replaces it atomically
        directory(f"{RESULTS}/{{ds}}/lerobot_v3"),
    log:
        "logs/export_lerobot_v3/{ds}.log",
    benchmark:
        "benchmarks/export_lerobot_v3/{ds}.tsv"
    conda:
        "../envs/convert.yaml"
    params:
        dataset=dataset_dir,
        code=code_version("export"),
    shell:
        "posttrain export --format lerobot-v3 {params.dataset:q} --output {output:q} > {log:q} 2>&1"
