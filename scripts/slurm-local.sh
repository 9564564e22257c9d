# shellcheck shell=bash
# Start a real single-node Slurm on this machine, for the tests (CPU only, test use only).
#
# Meant to be SOURCED (scripts/test.sh does `. scripts/slurm-local.sh || true`); it can also be run
# directly (`sudo bash scripts/slurm-local.sh`). It never exits or fails the calling shell and exports
#   AIIDA_DEEPH_SLURM=1                  Slurm is up, its node is idle and a job ran through sbatch/srun
#   AIIDA_DEEPH_SLURM=0 + AIIDA_DEEPH_SLURM_REASON='why not'
#
# What it does (root only; Debian/Ubuntu with apt-get):
#   - installs slurm-wlm and munge when missing (noninteractive, time-boxed),
#   - writes /etc/slurm/slurm.conf: one node named `hostname -s` with this machine's CPUs and memory,
#     no cgroups (proctrack/linuxproc, task/none), no accounting, SlurmUser=root, state in /var/spool,
#   - creates the munge key if missing and starts munged, slurmctld and slurmd as plain daemons (no systemd),
#   - waits for the node to be idle, then runs `srun -N1 true` and `sbatch --wait --wrap true`.
# Idempotent: when Slurm already answers and its node is usable, it only exports AIIDA_DEEPH_SLURM=1.
# A caller that exports AIIDA_DEEPH_SLURM=0 beforehand disables it (the Slurm tests then skip).
# Knobs: AIIDA_DEEPH_SLURM_APT_TIMEOUT (s, default 900), AIIDA_DEEPH_SLURM_WAIT (s, default 60).
# Logs: /var/log/slurm/slurmctld.log, /var/log/slurm/slurmd.log.

_aiida_deeph_slurm_log() { printf 'slurm-local: %s\n' "$*" >&2; }

_aiida_deeph_slurm_fail() {
    export AIIDA_DEEPH_SLURM=0
    export AIIDA_DEEPH_SLURM_REASON="$*"
    _aiida_deeph_slurm_log "not available: $*"
    return 1
}

# Node states in which jobs can run (sinfo %t short names, possibly with a *~#%$@ suffix).
_aiida_deeph_slurm_healthy() {
    command -v sinfo >/dev/null 2>&1 || return 1
    local states
    states="$(timeout 10 sinfo -h -N -o '%t' 2>/dev/null)" || return 1
    printf '%s\n' "$states" | grep -Eq '^(idle|mix|alloc|comp)$'
}

_aiida_deeph_slurm_install() {
    local need="" tmo="${AIIDA_DEEPH_SLURM_APT_TIMEOUT:-900}" policy_created=0 rc=0
    command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 && command -v sbatch >/dev/null 2>&1 \
        || need="slurm-wlm"
    command -v munged >/dev/null 2>&1 || need="$need munge"
    [ -z "$need" ] && return 0
    _aiida_deeph_slurm_log "installing ${need# } with apt-get (at most ${tmo}s per step)..."
    # Keep the packages' maintainer scripts from starting daemons themselves (no systemd here).
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d 2>/dev/null && chmod +x /usr/sbin/policy-rc.d && policy_created=1
    fi
    # shellcheck disable=SC2086
    if ! DEBIAN_FRONTEND=noninteractive timeout "$tmo" apt-get update -qq >/tmp/aiida-deeph-slurm-apt.log 2>&1 \
        || ! DEBIAN_FRONTEND=noninteractive timeout "$tmo" apt-get install -y -qq --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $need \
            >>/tmp/aiida-deeph-slurm-apt.log 2>&1; then
        rc=1
    fi
    [ "$policy_created" = 1 ] && rm -f /usr/sbin/policy-rc.d
    if [ "$rc" != 0 ]; then
        tail -n 5 /tmp/aiida-deeph-slurm-apt.log >&2 2>/dev/null
        return 1
    fi
    command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 && command -v munged >/dev/null 2>&1
}

_aiida_deeph_slurm_munge() {
    local key=/etc/munge/munge.key
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge || return 1
    id munge >/dev/null 2>&1 || return 1
    if [ ! -s "$key" ]; then
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="$key" >/dev/null 2>&1 || dd if=/dev/urandom of="$key" bs=1024 count=1 2>/dev/null
        else
            dd if=/dev/urandom of="$key" bs=1024 count=1 2>/dev/null
        fi
    fi
    chown munge:munge /etc/munge "$key" /run/munge /var/lib/munge /var/log/munge 2>/dev/null
    chmod 0700 /etc/munge; chmod 0400 "$key"; chmod 0755 /run/munge
    if timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
        return 0
    fi
    rm -f /run/munge/munge.socket.2 /run/munge/munged.pid 2>/dev/null
    if command -v runuser >/dev/null 2>&1; then
        runuser -u munge -- munged >/dev/null 2>&1 || munged --force >/dev/null 2>&1
    else
        munged --force >/dev/null 2>&1
    fi
    local i
    for i in 1 2 3 4 5 6 7 8 9 10; do
        timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    return 1
}

_aiida_deeph_slurm_config() {
    local conf=/etc/slurm/slurm.conf host cpus mem layout line
    host="$(hostname -s 2>/dev/null)"
    [ -n "$host" ] || host=localhost
    # slurmd -C prints e.g. "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105"
    line="$(timeout 20 slurmd -C 2>/dev/null | grep -m1 '^NodeName=')"
    cpus="$(printf '%s' "$line" | grep -o 'CPUs=[0-9]*' | cut -d= -f2)"
    mem="$(printf '%s' "$line" | grep -o 'RealMemory=[0-9]*' | cut -d= -f2)"
    layout="$(printf '%s' "$line" | grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*')"
    [ -n "$cpus" ] || cpus="$(nproc 2>/dev/null || echo 1)"
    [ -n "$mem" ] || mem="$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo 2>/dev/null)"
    [ -n "$mem" ] || mem=1024
    mem=$(( mem * 95 / 100 ))                  # stay below what slurmd measures, or the node is drained
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm || return 1
    if [ -f "$conf" ] && ! grep -q 'written by aiida-deeph scripts/slurm-local.sh' "$conf"; then
        cp -p "$conf" "$conf.before-aiida-deeph" 2>/dev/null
    fi
    cat >"$conf.tmp" <<EOF || return 1
# written by aiida-deeph scripts/slurm-local.sh: a single-node test cluster (no cgroups, no accounting)
ClusterName=aiidadeeph
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( mem / cpus ))
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
MinJobAge=300
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} ${layout} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    mv -f "$conf.tmp" "$conf"
}

_aiida_deeph_slurm_start() {
    local i states host
    host="$(hostname -s 2>/dev/null)"
    # Stale daemons from an earlier run with another configuration: stop only those we can identify by pid file.
    for i in /run/slurmctld.pid /run/slurmd.pid; do
        if [ -s "$i" ] && kill -0 "$(cat "$i")" 2>/dev/null; then
            kill "$(cat "$i")" 2>/dev/null
        fi
    done
    sleep 1
    slurmctld -c >/dev/null 2>&1 || { _aiida_deeph_slurm_log "slurmctld did not start (see /var/log/slurm/slurmctld.log)"; return 1; }
    slurmd >/dev/null 2>&1 || { _aiida_deeph_slurm_log "slurmd did not start (see /var/log/slurm/slurmd.log)"; return 1; }
    for i in $(seq 1 $(( ${AIIDA_DEEPH_SLURM_WAIT:-60} * 2 ))); do
        states="$(timeout 5 sinfo -h -N -o '%t' 2>/dev/null)"
        case "$states" in
            idle|mix) return 0 ;;
            down*|drain*|drng*|unk*|"")
                # After a restart the node may be marked down: resume it once slurmd has registered.
                [ $(( i % 6 )) = 0 ] && timeout 5 scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 ;;
        esac
        sleep 0.5
    done
    _aiida_deeph_slurm_log "node not idle after ${AIIDA_DEEPH_SLURM_WAIT:-60}s: $(timeout 5 sinfo -h -N -o '%N %t %E' 2>&1)"
    return 1
}

_aiida_deeph_slurm_smoke() {
    local dir
    dir="$(mktemp -d 2>/dev/null || echo /tmp)"
    timeout 60 srun -N1 -n1 -t 1 true >/dev/null 2>&1 || { _aiida_deeph_slurm_log "srun -N1 true failed"; return 1; }
    (cd "$dir" && timeout 60 sbatch --wait -N1 -n1 -t 1 -o /dev/null --wrap true >/dev/null 2>&1) \
        || { _aiida_deeph_slurm_log "sbatch --wait --wrap true failed"; return 1; }
    rm -rf "$dir" 2>/dev/null
    return 0
}

_aiida_deeph_slurm_main() {
    local t0 dt
    t0="$(date +%s)"
    if [ "${AIIDA_DEEPH_SLURM:-}" = "0" ]; then
        export AIIDA_DEEPH_SLURM_REASON="${AIIDA_DEEPH_SLURM_REASON:-disabled by AIIDA_DEEPH_SLURM=0}"
        _aiida_deeph_slurm_log "not started: $AIIDA_DEEPH_SLURM_REASON"
        return 1
    fi
    if _aiida_deeph_slurm_healthy && timeout 5 munge -n 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
        export AIIDA_DEEPH_SLURM=1 AIIDA_DEEPH_SLURM_REASON="already running"
        _aiida_deeph_slurm_log "Slurm already running: $(timeout 5 sinfo -h -N -o '%N %t %c CPUs %m MB' 2>/dev/null | head -1)"
        return 0
    fi
    if [ "$(id -u 2>/dev/null)" != "0" ]; then
        _aiida_deeph_slurm_fail "not root (a local Slurm is started only as root, e.g. in CI); the Slurm tests skip"
        return 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        _aiida_deeph_slurm_fail "apt-get not found (slurm-wlm and munge are installed from Debian/Ubuntu packages)"
        return 1
    fi
    _aiida_deeph_slurm_install || { _aiida_deeph_slurm_fail "could not install slurm-wlm/munge (see /tmp/aiida-deeph-slurm-apt.log)"; return 1; }
    _aiida_deeph_slurm_munge || { _aiida_deeph_slurm_fail "munged did not start"; return 1; }
    _aiida_deeph_slurm_config || { _aiida_deeph_slurm_fail "could not write /etc/slurm/slurm.conf"; return 1; }
    _aiida_deeph_slurm_start || { _aiida_deeph_slurm_fail "slurmctld/slurmd did not come up (see /var/log/slurm/)"; return 1; }
    _aiida_deeph_slurm_smoke || { _aiida_deeph_slurm_fail "smoke job did not run (see /var/log/slurm/)"; return 1; }
    dt=$(( $(date +%s) - t0 ))
    export AIIDA_DEEPH_SLURM=1 AIIDA_DEEPH_SLURM_REASON="started by scripts/slurm-local.sh"
    _aiida_deeph_slurm_log "Slurm up in ${dt}s: $(timeout 5 sinfo -h -N -o '%N %t %c CPUs %m MB' 2>/dev/null | head -1)"
    return 0
}

# Run with errexit/nounset/pipefail off whatever the caller set, then restore the caller's options.
# ($- and `shopt -o` are read directly: a $(set +o) subshell would report errexit as off.)
_aiida_deeph_slurm_saved_flags="$-"
_aiida_deeph_slurm_saved_pipefail=0
shopt -qo pipefail && _aiida_deeph_slurm_saved_pipefail=1
set +e +u +o pipefail
_aiida_deeph_slurm_main
_aiida_deeph_slurm_rc=$?
case "$_aiida_deeph_slurm_saved_flags" in *e*) set -e ;; esac
case "$_aiida_deeph_slurm_saved_flags" in *u*) set -u ;; esac
[ "$_aiida_deeph_slurm_saved_pipefail" = 1 ] && set -o pipefail
unset _aiida_deeph_slurm_saved_flags _aiida_deeph_slurm_saved_pipefail
unset -f _aiida_deeph_slurm_log _aiida_deeph_slurm_fail _aiida_deeph_slurm_healthy _aiida_deeph_slurm_install \
    _aiida_deeph_slurm_munge _aiida_deeph_slurm_config _aiida_deeph_slurm_start _aiida_deeph_slurm_smoke _aiida_deeph_slurm_main
if (return 0 2>/dev/null); then
    return 0        # sourced: never fail the caller; the outcome is in AIIDA_DEEPH_SLURM
else
    exit "$_aiida_deeph_slurm_rc"
fi
