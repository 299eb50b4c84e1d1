"""Fail before training starts when this node has fewer GPUs than the job asks for.

Usage: python -m posttrain.gpus N      (N = the train rule's `resources.gpu`, set by the profile)

Not a stage: the train rule runs it first, so a GPU profile on the wrong machine fails before the
trainer (or `accelerate launch`) starts its processes.

N = 0 (the CPU default) checks nothing. Prints one line either way, so the train log records what
the job asked for and what it saw (CUDA_VISIBLE_DEVICES is set by Slurm, never by Snakemake).
POSTTRAIN_SKIP_GPU_CHECK=1 skips the torch check: only for tests of request plumbing on machines
without GPUs (tests/test_slurm.py's fake-GPU cluster).
"""

import os
import sys


def main() -> int:
    wanted = int(sys.argv[1])
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
    if wanted == 0:
        print("train: no GPUs requested (resources.gpu=0): the trainer runs on what it finds", file=sys.stderr)
        return 0
    if os.environ.get("POSTTRAIN_SKIP_GPU_CHECK") == "1":
        print(
            f"train: {wanted} GPU(s) requested, CUDA_VISIBLE_DEVICES={visible}; "
            "check skipped (POSTTRAIN_SKIP_GPU_CHECK=1)",
            file=sys.stderr,
        )
        return 0
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found < wanted:
        print(
            f"error: train asks for {wanted} GPU(s) (resources.gpu from the profile) but this node has "
            f"{found} CUDA device(s) visible to torch (CUDA_VISIBLE_DEVICES={visible}); run on a node "
            "with that many GPUs or use the profile that matches this machine (no profile: CPU)",
            file=sys.stderr,
        )
        return 2
    print(f"train: {wanted} GPU(s) requested, {found} visible (CUDA_VISIBLE_DEVICES={visible})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
