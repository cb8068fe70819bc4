#!/usr/bin/env bash
# A one-node Slurm cluster on localhost, for the tests marked `slurm` (CI runs it as root).
#
#   scripts/slurm-localhost.sh install   # Debian's slurm-wlm and munge (about 20 s)
#   eval "$(scripts/slurm-localhost.sh start)"   # starts munged, slurmctld, slurmd; exports SLURM_CONF
#   scripts/slurm-localhost.sh stop      # stops the three daemons by their PIDs
#
# Everything lives in $POSENC_SLURM_DIR (default /tmp/posenc-slurm): slurm.conf, the state
# and spool folders, logs and PID files. Accounting stays off; RealMemory is set because
# submitit passes --mem, which Slurm rejects on a node without it.
set -euo pipefail
DIR=${POSENC_SLURM_DIR:-/tmp/posenc-slurm}
CONF=$DIR/slurm.conf

install() {
    export DEBIAN_FRONTEND=noninteractive
    command -v sbatch >/dev/null && command -v munged >/dev/null && return
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

write_conf() {
    local host cpus mem
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/munge"
    cat >"$CONF" <<CONF
ClusterName=posenc
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
}

start() {
    write_conf
    # munge: a key if the package left none, then the daemon (as root, hence --force)
    [ -s /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chmod 400 /etc/munge/munge.key; }
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    if ! munge -n >/dev/null 2>&1 </dev/null; then
        /usr/sbin/munged --force --pid-file="$DIR/munged.pid" --socket=/run/munge/munge.socket.2
    fi
    SLURM_CONF=$CONF /usr/sbin/slurmctld -f "$CONF"
    SLURM_CONF=$CONF /usr/sbin/slurmd -f "$CONF"
    for _ in $(seq 50); do  # until the node answers
        if SLURM_CONF=$CONF sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
            echo "export SLURM_CONF=$CONF"
            return
        fi
        sleep 0.2
    done
    echo "slurm did not come up; see $DIR/log" >&2
    SLURM_CONF=$CONF sinfo >&2 || true
    exit 1
}

stop() {
    local name pidfile
    for name in slurmd slurmctld munged; do
        pidfile=$DIR/$name.pid
        if [ -s "$pidfile" ]; then
            kill "$(cat "$pidfile")" 2>/dev/null || true
            rm -f "$pidfile"
        fi
    done
}

case "${1:-}" in
install) install ;;
start) start ;;
stop) stop ;;
*) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
