#!/usr/bin/env bash
# A real single-node Slurm cluster on this machine (Debian's slurm 22.05 and munge), for the Slurm executor's
# tests (tests/test_slurm.py) and for trying `run.executor: slurm` (docs/scale.md). Run as root.
#
#   scripts/slurm-up.sh         install what is missing, configure, start, wait until a batch job runs (idempotent)
#   scripts/slurm-up.sh --stop  stop the daemons this script started
#
# The cluster: one node named after `hostname -s` with this machine's CPUs and memory (as `slurmd -C` sees them),
# daemons running as root, no cgroups (ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, no cgroup.conf),
# no accounting database (so no sacct: the executor asks squeue), a generated munge key.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by arbot scripts/slurm-up.sh"  # a slurm.conf without this line is someone else's: never touched
RUN=/run/arbot-slurm                         # pid files of the daemons started here
LOGS=/var/log/slurm
WAIT_SECONDS=60

fail() { echo "slurm-up: $*" >&2; exit 2; }  # a wrong invocation: nothing was started, no logs to show

die() {
    echo "slurm-up: $*" >&2
    for log in "$LOGS/slurmctld.log" "$LOGS/slurmd.log"; do
        [ -s "$log" ] && { echo "--- last lines of $log" >&2; tail -n 15 "$log" >&2; }
    done
    exit 1
}

alive() { [ -s "$RUN/$1.pid" ] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

stop() {
    local name
    for name in slurmd slurmctld munged; do
        if alive "$name"; then
            kill "$(cat "$RUN/$name.pid")"
            for _ in $(seq 50); do alive "$name" || break; sleep 0.1; done
            echo "slurm-up: stopped $name"
        fi
        rm -f "$RUN/$name.pid"
    done
}

[ "$(id -u)" = 0 ] || fail "must run as root (it installs packages, writes /etc/slurm and starts daemons): sudo $0 $*"
case "${1:-}" in
    --stop) stop; exit 0 ;;
    "") ;;
    *) fail "unknown argument '$1'; usage: $0 [--stop]" ;;
esac

install() {
    local missing=() cmd
    for cmd in slurmctld slurmd sbatch munged; do command -v "$cmd" >/dev/null || missing+=("$cmd"); done
    [ ${#missing[@]} = 0 ] && return
    command -v apt-get >/dev/null || die "${missing[*]} missing and no apt-get to install them: install Slurm and munge with your package manager"
    echo "slurm-up: installing slurmctld slurmd slurm-client munge (missing: ${missing[*]})"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null) \
        || die "apt-get could not install slurmctld slurmd slurm-client munge (see its output above)"
}

munge_key() {
    local key=/etc/munge/munge.key
    [ -s "$key" ] && return
    echo "slurm-up: generating $key"
    mkdir -p /etc/munge
    dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
    chown munge:munge "$key"
    chmod 0400 "$key"
}

# The whole configuration; only this machine's node line varies.
config() {
    local node hw
    node=$(hostname -s)
    hw=$(slurmd -C | grep '^NodeName=' | cut -d' ' -f2-) || die "slurmd -C cannot describe this machine"
    cat <<EOF
$MARK; it rewrites this file when this machine's node changes
ClusterName=arbot
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
}

# Writes slurm.conf; CHANGED=1 when it differs from the one the running daemons read.
CHANGED=0
write_config() {
    local new
    new=$(config)
    if [ -e "$CONF" ] && ! grep -qxF "$MARK; it rewrites this file when this machine's node changes" "$CONF"; then
        die "$CONF exists and was not written by this script: this machine has a Slurm configuration of its own. Use that cluster (docs/scale.md), or move the file away and run again"
    fi
    [ -e "$CONF" ] && [ "$(cat "$CONF")" = "$new" ] && return
    mkdir -p "$(dirname "$CONF")"
    printf '%s\n' "$new" >"$CONF"
    CHANGED=1
}

start() {
    mkdir -p "$RUN" "$LOGS" /var/spool/slurmctld /var/spool/slurmd
    if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        mkdir -p /run/munge && chown munge:munge /run/munge
        runuser -u munge -- munged || die "munged did not start"
        pgrep -u munge -n -x munged >"$RUN/munged.pid"
        munge -n | unmunge >/dev/null || die "munged runs but a credential does not decode (munge -n | unmunge)"
    fi
    alive slurmctld || slurmctld || die "slurmctld did not start"
    for _ in $(seq "$WAIT_SECONDS"); do scontrol ping >/dev/null 2>&1 && break; sleep 1; done
    scontrol ping >/dev/null 2>&1 || die "slurmctld started but does not answer scontrol ping within ${WAIT_SECONDS}s"
    alive slurmd || slurmd || die "slurmd did not start"
}

wait_idle() {
    local node state
    node=$(hostname -s)
    for _ in $(seq "$WAIT_SECONDS"); do
        state=$(sinfo -h -n "$node" -o %T 2>/dev/null || true)
        case "$state" in
            idle|mixed|allocated|completing) return ;;
            down*|drain*) scontrol update nodename="$node" state=resume 2>/dev/null || true ;;
        esac
        sleep 1
    done
    die "node $node is '${state:-not listed}' in sinfo after ${WAIT_SECONDS}s, not idle (scontrol show node $node says why)"
}

# Jobs other than `except` that hold the node now (running, or ending): they show batch jobs start.
others_running() {
    { squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null || true; } | { grep -vxF "${1:-}" || true; } | wc -l
}

# Batch jobs run: jobs already running show it (no check job queued behind them); else a trivial check job runs. A
# check job that is still pending when other jobs start running is cancelled at once: the cluster is busy, and up.
check_job() {
    local id state running
    running=$(others_running)
    if [ "$running" -gt 0 ]; then
        UP="$running job(s) running, no check job queued behind them"
        return
    fi
    id=$(sbatch --parsable --job-name=slurm-up-check --output=/dev/null --wrap=true) || die "sbatch refused a trivial batch job"
    for _ in $(seq $((WAIT_SECONDS * 5))); do
        state=$(scontrol show job "$id" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2 || true)
        case "$state" in
            COMPLETED) UP="a check job ran"; return ;;
            PENDING|CONFIGURING|RUNNING|COMPLETING|"") ;;
            *) die "a trivial batch job (sbatch --wrap=true, job $id) ended $state" ;;
        esac
        running=$(others_running "$id")
        if [ "$state" = PENDING ] && [ "$running" -gt 0 ]; then
            scancel "$id" 2>/dev/null || true
            UP="$running job(s) running, the check job (cancelled) was queued behind them"
            return
        fi
        sleep 0.2
    done
    scancel "$id" 2>/dev/null || true
    die "a trivial batch job (sbatch --wrap=true, job $id) did not complete within ${WAIT_SECONDS}s and no other" \
        "job runs (last state: ${state:-unknown}; scontrol show job $id said why)"
}

install
munge_key
write_config
[ "$CHANGED" = 1 ] && stop  # daemons that read an older configuration are started again
start
wait_idle
check_job
echo "slurm-up: Slurm is up: node $(hostname -s) $(sinfo -h -n "$(hostname -s)" -o '%T, %c CPUs, %m MB'); batch jobs run: $UP"
