# Demonstrations -> LeRobot v2.1 dataset: synthesize (source kind synth), convert episode shards
# in parallel (one Slurm job each), gather them into one dataset and write meta/.
# Only for raw HDF5 sources; a Hub dataset already in LeRobot format comes from rules/hub.smk.
#
# Several sources (dataset.sources): synth and the shards run per source ({source} wildcard, files under
# results/<ds>/sources/<source>/), then one gather numbers the episodes across sources and gives each
# source its task. A source's jobs see only its own settings, and its task only reaches the gather: an
# edit of one source re-runs that source's jobs, an edit of an instruction the gather only.

if any(spec["kind"] == "synth" for spec in DATA_SOURCES.values()):

    rule synth:
        output:
            source_path("raw.hdf5"),
        log:
            source_log("logs/synth") + ".log",
        benchmark:
            source_log("benchmarks/synth") + ".tsv"
        wildcard_constraints:
            source=source_names("synth"),
        conda:
            "../envs/convert.yaml"
        params:
            args=lambda wc: source_synth_args(source_name(wc)),
            code=code_version("synth"),
        shell:
            "posttrain synth {output:q} {params.args} > {log:q} 2>&1"


if RAW_SOURCE:

    # One source's shards are temp(): the gather hardlinks their files. Several sources' shards are kept
    # (hardlinked too, so they cost little disk): the gather after an edit of one source reads the others'.
    rule convert_shard:
        input:
            raw_hdf5_input,
        output:
            directory(source_path("convert_shards/{k}"))
            if MULTI_SOURCE
            else temp(directory(source_path("convert_shards/{k}"))),
        log:
            source_log("logs/convert_shard", "{k}") + ".log",
        benchmark:
            source_log("benchmarks/convert_shard", "{k}") + ".tsv"
        wildcard_constraints:
            source=source_names(),
        conda:
            "../envs/convert.yaml"
        threads: 2
        params:
            source_content=source_fingerprint,  # content, not mtime: see raw_hdf5_input
            args=lambda wc: source_convert_args(source_name(wc)),
            num_shards=config["convert"]["shards"],
            code=code_version("convert", embodiment_files()),
        shell:
            "posttrain convert --input {input:q} --output {output:q} --shard {wildcards.k} "
            "--num-shards {params.num_shards} {params.args} --workers {threads} > {log:q} 2>&1"


if RAW_SOURCE and not MULTI_SOURCE:

    rule convert_gather:
        input:
            hdf5=raw_hdf5_input,
            shards=convert_shard_dirs,
        output:
            multiext(f"{META}/", "info.json", "episodes.jsonl", "tasks.jsonl", "modality.json", "source.json"),
        log:
            "logs/convert_gather/{ds}.log",
        benchmark:
            "benchmarks/convert_gather/{ds}.tsv"
        conda:
            "../envs/convert.yaml"
        params:
            source_content=source_fingerprint,
            dataset=dataset_dir,
            args=stage_flags("convert"),
            code=code_version("convert", embodiment_files()),
        shell:
            "posttrain convert --input {input.hdf5:q} --output {params.dataset:q} --gather {input.shards:q} "
            "{params.args} > {log:q} 2>&1"


if MULTI_SOURCE:

    # The shards record their source and plan: the gather reads no HDF5 and re-encodes nothing (it links
    # the videos and rewrites the small parquet files with their new episode and task numbers).
    rule convert_gather:
        input:
            shards=convert_shard_dirs,
        output:
            multiext(f"{META}/", "info.json", "episodes.jsonl", "tasks.jsonl", "modality.json", "source.json"),
        log:
            "logs/convert_gather/{ds}.log",
        benchmark:
            "benchmarks/convert_gather/{ds}.tsv"
        conda:
            "../envs/convert.yaml"
        params:
            dataset=dataset_dir,
            tasks=convert_gather_args(),
            code=code_version("convert", embodiment_files()),
        shell:
            "posttrain convert --output {params.dataset:q} --gather {input.shards:q} {params.tasks} > {log:q} 2>&1"
