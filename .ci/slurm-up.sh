#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine (as root): munge, slurmctld, slurmd.
#
#   bash .ci/slurm-up.sh [STATE_DIR]       (default /var/tmp/mgrq-slurm)
#
# Writes STATE_DIR/slurm.conf (every client needs SLURM_CONF=STATE_DIR/slurm.conf) and waits
# until the node is idle. No accounting daemon: job states seen by sacct are UNKNOWN, and the
# mgrq runner falls back to squeue and its own run records. Stop with `scontrol shutdown`.
set -euo pipefail

STATE=$(realpath -m "${1:-/var/tmp/mgrq-slurm}")
H=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
mkdir -p "$STATE/state" "$STATE/spool" "$STATE/log"

cat > "$STATE/slurm.conf" <<CONF
ClusterName=ci
SlurmctldHost=$H
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# Short grace between SIGTERM and SIGKILL (requeue/cancel; submitit jobs ignore SIGTERM, so a
# requeued cell is killed 1 s later instead of finishing) and fast scheduling: a test cluster.
KillWait=1
SchedulerParameters=sched_interval=2
NodeName=$H CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$STATE/slurm.conf

if ! pgrep -x munged >/dev/null; then
    mkdir -p /run/munge && chown munge:munge /run/munge
    [ -s /etc/munge/munge.key ] || /usr/sbin/mungekey --create --force
    runuser -u munge -- /usr/sbin/munged
fi
if scontrol ping 2>/dev/null | grep -q UP; then
    scontrol shutdown >/dev/null 2>&1 || true
    sleep 2
fi
slurmctld
slurmd
for _ in $(seq 1 60); do
    if sinfo -h -o '%t' 2>/dev/null | grep -qx idle; then
        echo "slurm: node $H idle ($CPUS CPUs, $MEM_MB MiB); export SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.5
done
echo "slurm: node did not become idle; see $STATE/log" >&2
sinfo >&2 || true
tail -20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
exit 1
