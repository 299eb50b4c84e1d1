# Hugging Face Hub: download the dataset source (`dataset.source.kind: hub`), and optional uploads
# (`snakemake upload_dataset` / `snakemake upload_checkpoint`, enabled by config `hub_upload`).
# Hub rules run on the submitting host (`localrule`): cluster nodes often have no internet.
# Tokens come from HF_TOKEN or `hf auth login` (huggingface_hub reads them; never in params/logs).


# (one per hub source of dataset.sources: results/<ds>/sources/<source>/raw.hdf5)
if any(spec["kind"] == "hub" and spec.get("format", "hdf5") == "hdf5" for spec in DATA_SOURCES.values()):

    rule hub_download_hdf5:
        output:
            source_path("raw.hdf5"),
        log:
            source_log("logs/hub_download_hdf5") + ".log",
        benchmark:
            source_log("benchmarks/hub_download_hdf5") + ".tsv"
        wildcard_constraints:
            source=source_names("hub"),
        localrule: True
        conda:
            "../envs/hub.yaml"
        params:
            args=lambda wc: hub_source_args(source_name(wc)),
            code=code_version("hub"),
        shell:
            "posttrain hub download {params.args} --output {output:q} > {log:q} 2>&1"


if not MULTI_SOURCE and SOURCE["kind"] == "hub" and SOURCE.get("format", "hdf5") == "lerobot":

    # A pre-converted dataset: no conversion, but stats (our own meta/stats.json: the downloaded one
    # is not copied) and verification (internal checks only, no --source) still run.
    rule hub_download_lerobot:
        output:
            multiext(f"{META}/", "info.json", "episodes.jsonl", "tasks.jsonl", "modality.json"),
        log:
            "logs/hub_download_lerobot/{ds}.log",
        benchmark:
            "benchmarks/hub_download_lerobot/{ds}.tsv"
        localrule: True
        conda:
            "../envs/hub.yaml"
        params:
            dataset=dataset_dir,
            args=hub_source_args(),
            code=code_version("hub"),
        shell:
            "posttrain hub download {params.args} --output {params.dataset:q} > {log:q} 2>&1"


if HUB_UPLOAD.get("dataset_repo"):

    rule upload_dataset:
        input:
            stats=f"{RESULTS}/{DS}/lerobot/meta/stats.json",
            verified=f"{RESULTS}/{DS}/verify/report.json",
        output:
            f"{RESULTS}/{DS}/hub/upload_dataset.log",
        log:
            f"logs/upload_dataset/{DS}.log",
        localrule: True
        conda:
            "../envs/hub.yaml"
        params:
            dataset=f"{RESULTS}/{DS}/lerobot",
            args=upload_args("dataset_repo"),
        shell:
            "posttrain hub upload {params.dataset:q} --repo-type dataset {params.args} > {output:q} 2> {log:q}"


if HUB_UPLOAD.get("checkpoint_repo"):

    rule upload_checkpoint:
        input:
            done=f"{RESULTS}/{DS}/train/{RUN}/DONE.json",
            metrics=f"{RESULTS}/{DS}/eval/{RUN}/metrics.json",
        output:
            f"{RESULTS}/{DS}/hub/upload_checkpoint_{RUN}.log",
        log:
            f"logs/upload_checkpoint/{DS}/{RUN}.log",
        localrule: True
        conda:
            "../envs/hub.yaml"
        params:
            run_dir=f"{RESULTS}/{DS}/train/{RUN}",  # its DONE.json names the checkpoint to push
            args=upload_args("checkpoint_repo"),
        shell:
            # Weights and configs only: the optimizer/scheduler/RNG state is for resuming, not sharing.
            "posttrain hub upload {params.run_dir:q} --repo-type model --exclude optimizer.bin "
            "--exclude scheduler.bin --exclude 'random_states_*.pkl' {params.args} > {output:q} 2> {log:q}"
