#!/usr/bin/env bash
# A single-node Slurm cluster on this machine, for tests/test_slurm.py and CI (root, Debian/Ubuntu).
# Installs slurmctld/slurmd/munge if missing, writes /etc/slurm/slurm.conf (node = this hostname,
# partition `debug`, 8 fake GPUs, no accounting), starts munged, slurmctld and slurmd, waits for
# the node to be idle. Idempotent: exits 0 at once when the cluster already answers.
# Stop with scripts/stop_slurm.sh (kills the daemons by their PID files).
# Fake GPUs: device nodes made with mknod; Slurm hands them out (--gpus, CUDA_VISIBLE_DEVICES) but
# nothing runs on them: this tests request plumbing, not CUDA.
set -euo pipefail

node="$(hostname -s)"
run=/run/posttrain-slurm
log=/var/log/slurm

if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
    echo "slurm: already running" >&2
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "error: start_slurm.sh needs root (to install packages and start slurmctld/slurmd)" >&2
    exit 3
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
        || ! command -v sbatch >/dev/null; then
    command -v apt-get >/dev/null || { echo "error: slurm is not installed and apt-get is missing" >&2; exit 3; }
    echo "slurm: installing slurmctld slurmd slurm-client munge" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$log" "$run" /run/munge /dev/fakegpu
for i in 0 1 2 3 4 5 6 7; do
    [ -e /dev/fakegpu/nvidia$i ] || mknod /dev/fakegpu/nvidia$i c 195 $i
done

cat > /etc/slurm/slurm.conf <<CONF
ClusterName=posttrain-test
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$run/slurmctld.pid
SlurmdPidFile=$run/slurmd.pid
SlurmctldLogFile=$log/slurmctld.log
SlurmdLogFile=$log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# this VM has fewer cores than the node claims: trust the configuration, don't drain the node
SlurmdParameters=config_overrides
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
ReturnToService=2
MinJobAge=600
NodeName=$node NodeAddr=127.0.0.1 CPUs=16 RealMemory=32000 Gres=gpu:8 State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
cat > /etc/slurm/gres.conf <<CONF
AutoDetect=off
Name=gpu File=/dev/fakegpu/nvidia[0-7]
CONF

if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    chmod 400 /etc/munge/munge.key
fi
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
if ! pgrep -u munge -x munged >/dev/null 2>&1; then
    su -s /bin/sh munge -c "munged --force" 2>/dev/null || munged --force
fi
[ -f "$run/slurmctld.pid" ] && kill -0 "$(cat "$run/slurmctld.pid")" 2>/dev/null || slurmctld -c
[ -f "$run/slurmd.pid" ] && kill -0 "$(cat "$run/slurmd.pid")" 2>/dev/null || slurmd -c

for _ in $(seq 60); do
    state="$(sinfo -h -o %T 2>/dev/null || true)"
    if [ "$state" = idle ]; then
        echo "slurm: node $node idle" >&2
        exit 0
    fi
    sleep 0.5
done
echo "error: slurm node $node not idle after 30 s (state: ${state:-none}); see $log/slurmctld.log and $log/slurmd.log" >&2
exit 4
