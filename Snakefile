# Isaac Lab Mimic HDF5 -> LeRobot v2.1 -> stats + verification -> post-training -> eval -> report.
# Every rule is a thin shell around one `posttrain <stage>` command; see README "What re-runs when".

from snakemake.utils import min_version

min_version("9.19")


# No `configfile:` directive: rules/common.smk layers config/config.yaml, the hardware preset
# config/hw/<hardware>.yaml, the user's --configfile files and --config, in that order.


report: "rules/captions/workflow.rst"


include: "rules/common.smk"  # config validation, paths, params helpers, final targets
include: "rules/hub.smk"  # dataset.source.kind: hub (download), optional uploads
include: "rules/data.smk"  # synth, convert_shard, convert_gather
include: "rules/dataset.smk"  # stats, verify
include: "rules/export.smk"  # optional copies of the dataset (config export:), e.g. LeRobot v3.0
include: "rules/frames.smk"  # frames (every video frame decoded once, the native trainer's input)
include: "rules/train.smk"  # train
include: "rules/eval.smk"  # eval
include: "rules/report.smk"  # report pages


rule all:
    default_target: True
    input:
        final_outputs,
    localrule: True


# After a successful run, say whether the trained policy beats the baselines (README "Reading the
# evaluation verdict"): losing is information, not a failure, but it should not go unseen.
onsuccess:
    print_verdict()
