# Hugging Face Hub: download the dataset source (`dataset.source.kind: hub`), and optional uploads
# (`snakemake upload_dataset` / `snakemake upload_checkpoint`, enabled by config `hub_upload`).
# Hub rules run on the submitting host (`localrule`): cluster nodes often have no internet.
# Tokens come from HF_TOKEN or `hf auth login` (huggingface_hub reads them; never in params/logs).


if SOURCE["kind"] == "hub" and SOURCE.get("format", "hdf5") == "hdf5":

    rule hub_download_hdf5:
        output:
            f"{RESULTS}/{{ds}}/raw.hdf5",
        params:
            cfg=stage_config("dataset", "source"),
            args=hub_source_args(),
            code=code_version("hub"),
        localrule: True
        log:
            "logs/hub_download_hdf5/{ds}.log",
        benchmark:
            "benchmarks/hub_download_hdf5/{ds}.tsv"
        conda:
            "../envs/hub.yaml"
        shell:
            "posttrain hub download {params.args} --output {output:q} > {log:q} 2>&1"


if SOURCE["kind"] == "hub" and SOURCE.get("format", "hdf5") == "lerobot":

    # A pre-converted dataset: no conversion, but stats (our own meta/stats.json: the downloaded one
    # is not copied) and verification (internal checks only, no --source) still run.
    rule hub_download_lerobot:
        output:
            multiext(f"{RESULTS}/{{ds}}/lerobot/meta/", "info.json", "episodes.jsonl", "tasks.jsonl",
                     "modality.json"),
        params:
            dataset=dataset_dir,
            cfg=stage_config("dataset", "source"),
            args=hub_source_args(),
            code=code_version("hub"),
        localrule: True
        log:
            "logs/hub_download_lerobot/{ds}.log",
        benchmark:
            "benchmarks/hub_download_lerobot/{ds}.tsv"
        conda:
            "../envs/hub.yaml"
        shell:
            "posttrain hub download {params.args} --output {params.dataset:q} > {log:q} 2>&1"


if HUB_UPLOAD.get("dataset_repo"):

    rule upload_dataset:
        input:
            stats=f"{RESULTS}/{DS}/lerobot/meta/stats.json",
            verified=f"{RESULTS}/{DS}/verify/report.json",
        output:
            f"{RESULTS}/{DS}/hub/upload_dataset.log",
        params:
            dataset=f"{RESULTS}/{DS}/lerobot",
            args=upload_args("dataset_repo"),
        localrule: True
        log:
            f"logs/upload_dataset/{DS}.log",
        conda:
            "../envs/hub.yaml"
        shell:
            "posttrain hub upload {params.dataset:q} --repo-type dataset {params.args} > {output:q} 2> {log:q}"


if HUB_UPLOAD.get("checkpoint_repo"):

    rule upload_checkpoint:
        input:
            done=f"{RESULTS}/{DS}/train/{RUN}/DONE.json",
            metrics=f"{RESULTS}/{DS}/eval/{RUN}/metrics.json",
        output:
            f"{RESULTS}/{DS}/hub/upload_checkpoint_{RUN}.log",
        params:
            run_dir=f"{RESULTS}/{DS}/train/{RUN}",  # its DONE.json names the checkpoint to push
            args=upload_args("checkpoint_repo"),
        localrule: True
        log:
            f"logs/upload_checkpoint/{DS}/{RUN}.log",
        conda:
            "../envs/hub.yaml"
        shell:
            # Weights and configs only: the optimizer/scheduler/RNG state is for resuming, not sharing.
            "posttrain hub upload {params.run_dir:q} --repo-type model --exclude optimizer.bin "
            "--exclude scheduler.bin --exclude 'random_states_*.pkl' {params.args} > {output:q} 2> {log:q}"
