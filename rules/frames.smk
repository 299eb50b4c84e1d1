# Every video frame decoded once at the policy's image size, for the native trainer to read at
# random (`posttrain frames`, README "Training input"). Re-made only when the dataset is re-converted
# (its meta/info.json and episodes.jsonl are rewritten) or the image size (train.preset) changes.


rule frames:
    input:
        f"{META}/info.json",
        f"{META}/episodes.jsonl",
    output:
        directory(f"{RESULTS}/{{ds}}/frames"),
    log:
        "logs/frames/{ds}.log",
    benchmark:
        "benchmarks/frames/{ds}.tsv"
    conda:
        "../envs/convert.yaml"
    threads: 8
    params:
        dataset=dataset_dir,
        image_size=policy_image_size(),
        code=code_version("frames"),
    shell:
        "posttrain frames {params.dataset:q} --image-size {params.image_size} --output {output:q} "
        "--workers {threads} > {log:q} 2>&1"
