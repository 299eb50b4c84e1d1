# Demonstrations -> LeRobot v2.1 dataset: synthesize (source kind synth), convert episode shards
# in parallel (one Slurm job each), gather them into one dataset and write meta/.
# Only for raw HDF5 sources; a Hub dataset already in LeRobot format comes from rules/hub.smk.

if SOURCE["kind"] == "synth":

    rule synth:
        output:
            f"{RESULTS}/{{ds}}/raw.hdf5",
        params:
            cfg=stage_config("dataset", "source"),
            args=synth_args(),
            code=code_version("synth"),
        log:
            "logs/synth/{ds}.log",
        benchmark:
            "benchmarks/synth/{ds}.tsv"
        conda:
            "../envs/convert.yaml"
        shell:
            "posttrain synth {output:q} {params.args} > {log:q} 2>&1"


if RAW_SOURCE:

    rule convert_shard:
        input:
            raw_hdf5_input,
        output:
            temp(directory(f"{RESULTS}/{{ds}}/convert_shards/{{k}}")),
        params:
            source_content=source_fingerprint,  # content, not mtime: see raw_hdf5_input
            cfg=stage_config("convert"),
            args=convert_args(),
            num_shards=config["convert"]["shards"],
            code=code_version("convert", embodiment_files()),
        threads: 2
        log:
            "logs/convert_shard/{ds}/{k}.log",
        benchmark:
            "benchmarks/convert_shard/{ds}/{k}.tsv"
        conda:
            "../envs/convert.yaml"
        shell:
            "posttrain convert --input {input:q} --output {output:q} --shard {wildcards.k} "
            "--num-shards {params.num_shards} {params.args} --workers {threads} > {log:q} 2>&1"

    rule convert_gather:
        input:
            hdf5=raw_hdf5_input,
            shards=convert_shard_dirs,
        output:
            multiext(f"{RESULTS}/{{ds}}/lerobot/meta/", "info.json", "episodes.jsonl", "tasks.jsonl",
                     "modality.json", "source.json"),
        params:
            source_content=source_fingerprint,
            dataset=dataset_dir,
            cfg=stage_config("convert"),
            args=convert_args(),
            code=code_version("convert", embodiment_files()),
        log:
            "logs/convert_gather/{ds}.log",
        benchmark:
            "benchmarks/convert_gather/{ds}.tsv"
        conda:
            "../envs/convert.yaml"
        shell:
            "posttrain convert --input {input.hdf5:q} --output {params.dataset:q} --gather {input.shards:q} "
            "{params.args} > {log:q} 2>&1"
