# Isaac Lab Mimic HDF5 -> LeRobot v2.1 -> stats + verification -> post-training -> eval -> report.
# Every rule is a thin shell around one `posttrain <stage>` command; see README "What re-runs when".

from snakemake.utils import min_version

min_version("9.19")


configfile: "config/config.yaml"


report: "rules/captions/workflow.rst"


include: "rules/common.smk"  # config validation, paths, params helpers, final targets
include: "rules/hub.smk"  # dataset.source.kind: hub (download), optional uploads
include: "rules/data.smk"  # synth, convert_shard, convert_gather
include: "rules/dataset.smk"  # stats, verify
include: "rules/train.smk"  # train
include: "rules/eval.smk"  # eval
include: "rules/report.smk"  # report pages


rule all:
    default_target: True
    input:
        final_outputs,
