#!/usr/bin/env bash
# Stop the test cluster started by scripts/start_slurm.sh (by PID file; munged is left running).
set -uo pipefail
run=/run/posttrain-slurm
for daemon in slurmd slurmctld; do
    if [ -f "$run/$daemon.pid" ]; then
        kill "$(cat "$run/$daemon.pid")" 2>/dev/null && echo "slurm: stopped $daemon" >&2
    fi
done
exit 0
