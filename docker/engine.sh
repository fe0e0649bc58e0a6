#!/usr/bin/env bash
# A private Docker engine for zchat's container tests and demo, on a machine with no Docker Hub
# and loopback-only networking: no default bridge and no iptables, so a container uses host
# networking or a network of its own (docker-compose makes one); published ports then go
# through docker-proxy, as the compose demo's do.
#
#   docker/engine.sh start        install docker.io, docker-compose, debootstrap if missing (apt-get),
#                                 start a private dockerd, wait until it answers, print the export line
#   docker/engine.sh base-image   start (as above) and build the local base image zchat-base:local
#                                 (debootstrap minbase + python3, python3-venv), unless it already exists
#   docker/engine.sh stop         stop the dockerd that `start` started (and only that one); its
#                                 data-root tmpfs stays mounted, so images survive until `purge`
#   docker/engine.sh status       exit 0 when that dockerd is running and answers
#   docker/engine.sh env          print the export line without starting anything
#   docker/engine.sh purge        stop, then delete ZCHAT_DOCKER_DIR (images and all)
#
# Usage from a shell or a test:   eval "$(docker/engine.sh start)"   # sets DOCKER_HOST
# Only the `export DOCKER_HOST=...` line goes to stdout; progress goes to stderr.
# Every command is idempotent and serialised by a lock, so parallel callers are safe.
#
# Environment:
#   ZCHAT_DOCKER_DIR      state directory (default /tmp/zchat-docker): socket, data-root, exec-root, log
#   ZCHAT_DOCKER_WAIT     seconds to wait for the engine to answer (default 60)
#   ZCHAT_DOCKER_TMPFS    size of a tmpfs mounted on the data-root (default 8g; 0 or empty: use the disk)
#   ZCHAT_BASE_IMAGE      tag of the base image (default zchat-base:local)
#   ZCHAT_BASE_REBUILD=1  rebuild the base image even if it exists
#   ZCHAT_DEBIAN_SUITE    suite for the base image (default bookworm)
#   ZCHAT_DEBIAN_MIRROR   mirror URL (default: the first Debian mirror in /etc/apt/sources.list*)
set -euo pipefail

DIR=${ZCHAT_DOCKER_DIR:-/tmp/zchat-docker}
WAIT=${ZCHAT_DOCKER_WAIT:-60}
BASE_IMAGE=${ZCHAT_BASE_IMAGE:-zchat-base:local}
SUITE=${ZCHAT_DEBIAN_SUITE:-bookworm}
TMPFS=${ZCHAT_DOCKER_TMPFS-8g}

log() { printf 'engine.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (dockerd and debootstrap need it)"
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd -P)
SOCK="$DIR/docker.sock"
# containerd's sockets live under the exec-root; a unix socket path has at most 107 bytes.
[ ${#DIR} -le 60 ] || die "ZCHAT_DOCKER_DIR=$DIR is too long for unix socket paths (at most 60 characters)"
PIDFILE="$DIR/engine.pid"        # written by this script: the dockerd it started
DOCKERD_PIDFILE="$DIR/dockerd.pid" # written by dockerd itself
LOGFILE="$DIR/dockerd.log"
export DOCKER_HOST="unix://$SOCK"

# The engine is Debian's 20.10; prefer its own client (another, newer one may be first on PATH).
docker_bin() { if [ -x /usr/bin/docker ]; then echo /usr/bin/docker; else command -v docker; fi; }
docker_cli() { "$(docker_bin)" "$@"; }

print_env() { printf 'export DOCKER_HOST=%s\n' "$DOCKER_HOST"; }

# One caller at a time (start/stop/base-image from parallel tests).
exec 9>"$DIR/engine.lock"
if ! flock -w 900 9; then die "timed out waiting for the lock $DIR/engine.lock"; fi

our_pid() {
    # The pid of the dockerd this script started, if it is still that process; else nothing.
    local pid
    [ -s "$PIDFILE" ] || return 1
    pid=$(cat "$PIDFILE")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "dockerd .*unix://$SOCK" || return 1
    echo "$pid"
}

engine_answers() { timeout 10 "$(docker_bin)" info >/dev/null 2>&1; }

install_packages() {
    local need=()
    command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
    [ -x /usr/bin/docker-compose ] || command -v docker-compose >/dev/null 2>&1 || need+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
    [ -f /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
    [ ${#need[@]} -gt 0 ] || return 0
    log "installing ${need[*]} with apt-get"
    # Keep package scripts from starting a system dockerd/containerd (policy-rc.d exit 101 = deny).
    local made_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    local apt=(env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -q
               --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    if ! "${apt[@]}" "${need[@]}" >&2; then
        log "apt-get install failed; running apt-get update and trying again"
        timeout 300 apt-get update -q >&2 || true
        "${apt[@]}" "${need[@]}" >&2 || { [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d; die "apt-get install ${need[*]} failed"; }
    fi
    [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
}

start_engine() {
    install_packages
    if our_pid >/dev/null && engine_answers; then
        log "dockerd already running (pid $(cat "$PIDFILE")) at $SOCK"
        return 0
    fi
    if pid=$(our_pid); then
        log "dockerd pid $pid does not answer; restarting it"
        stop_engine
    fi
    mkdir -p "$DIR/data" "$DIR/exec"
    # vfs copies a whole root filesystem for every container and build step: about 8x faster on
    # tmpfs than on this machine's disk (a `docker run` of the base image: ~3s instead of ~20s).
    # The tmpfs stays mounted across stop/start (images survive); `purge` unmounts it.
    # (dockerd bind-mounts its own data-root while it runs, so look for a tmpfs, not any mount.)
    if [ -n "$TMPFS" ] && [ "$TMPFS" != 0 ] \
        && ! awk -v m="$DIR/data" '$2 == m && $3 == "tmpfs" { f = 1 } END { exit !f }' /proc/mounts; then
        log "mounting a tmpfs (size=$TMPFS) on $DIR/data"
        mount -t tmpfs -o "size=$TMPFS,mode=0711" zchat-docker "$DIR/data"
    fi
    [ -f "$DIR/daemon.json" ] || echo '{}' >"$DIR/daemon.json"
    rm -f "$SOCK" "$DOCKERD_PIDFILE"
    log "starting dockerd (vfs, no default bridge, no iptables) in $DIR; log: $LOGFILE"
    local t0=$SECONDS
    # setsid: the engine outlives this script and is not hit by signals to the caller's process group.
    # 9>&-: the engine must not inherit (and so hold forever) the lock below.
    # Own containerd namespaces so it cannot touch a system dockerd's containers.
    setsid dockerd \
        -H "unix://$SOCK" \
        --data-root "$DIR/data" \
        --exec-root "$DIR/exec" \
        --pidfile "$DOCKERD_PIDFILE" \
        --config-file "$DIR/daemon.json" \
        --storage-driver=vfs \
        --iptables=false --ip6tables=false --ip-masq=false --bridge=none \
        --containerd-namespace zchat-docker --containerd-plugins-namespace zchat-docker-plugins \
        </dev/null >>"$LOGFILE" 2>&1 9>&- &
    local pid=$!
    echo "$pid" >"$PIDFILE"
    while ! engine_answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$LOGFILE" >&2 || true
            rm -f "$PIDFILE"
            die "dockerd exited during start-up (log above, $LOGFILE)"
        fi
        if [ $((SECONDS - t0)) -ge "$WAIT" ]; then
            tail -n 20 "$LOGFILE" >&2 || true
            stop_engine
            die "dockerd did not answer within ${WAIT}s"
        fi
        sleep 0.5
    done
    log "dockerd pid $pid answers after $((SECONDS - t0))s"
}

stop_engine() {
    local pid
    if ! pid=$(our_pid); then
        log "no dockerd of ours is running (pid file $PIDFILE)"
        rm -f "$PIDFILE"
        return 0
    fi
    log "stopping dockerd pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
        log "dockerd pid $pid still running after 30s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 1
    fi
    # The managed containerd normally stops with dockerd; make sure ours is gone.
    local cpidfile="$DIR/exec/containerd/containerd.pid" cpid
    if [ -s "$cpidfile" ]; then
        cpid=$(cat "$cpidfile")
        if kill -0 "$cpid" 2>/dev/null \
            && tr '\0' ' ' <"/proc/$cpid/cmdline" 2>/dev/null | grep -q -- "$DIR/exec/containerd"; then
            log "stopping leftover containerd pid $cpid"
            kill -TERM "$cpid" 2>/dev/null || true
            sleep 2
            kill -KILL "$cpid" 2>/dev/null || true
        fi
    fi
    rm -f "$PIDFILE"
}

# The first Debian mirror in the machine's apt sources (deb822 .sources or one-line .list),
# skipping security and comment lines; falls back to deb.debian.org.
debian_mirror() {
    if [ -n "${ZCHAT_DEBIAN_MIRROR:-}" ]; then echo "$ZCHAT_DEBIAN_MIRROR"; return; fi
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        uri=$(awk '
            function flush() { if (uri != "" && suites ~ /(^| )[a-z]+( |$)/ && uri !~ /security/ && uri ~ /debian/) { print uri; found = 1; exit } uri = ""; suites = "" }
            /^[[:space:]]*#/ { next }
            /^[[:space:]]*$/ { flush(); next }
            tolower($1) == "uris:" { uri = $2 }
            tolower($1) == "suites:" { suites = $0; sub(/^[^:]*:[[:space:]]*/, "", suites) }
            END { if (!found) flush() }' "$f")
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        uri=$(awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                  if ($i ~ /debian/ && $i !~ /security/ && $(i+1) !~ /-/) { print $i; exit } }' "$f")
        if [ -n "$uri" ]; then echo "$uri"; return; fi
    done
    echo "http://deb.debian.org/debian"
}

build_base_image() {
    if [ "${ZCHAT_BASE_REBUILD:-0}" != 1 ] && docker_cli image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image $BASE_IMAGE already exists"
        return 0
    fi
    local mirror rootfs t0=$SECONDS
    mirror=$(debian_mirror)
    rootfs="$DIR/rootfs.$$"
    rm -rf "$rootfs"
    log "debootstrap --variant=minbase $SUITE from $mirror (log: $DIR/debootstrap.log)"
    # </dev/null: run from a terminal, wget under timeout (its own process group) takes itself
    # for a background job and writes wget-log files into the current folder (the project's).
    if ! timeout 900 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
            "$SUITE" "$rootfs" "$mirror" </dev/null >"$DIR/debootstrap.log" 2>&1; then
        tail -n 20 "$DIR/debootstrap.log" >&2 || true
        rm -rf "$rootfs"
        die "debootstrap failed (log above, $DIR/debootstrap.log)"
    fi
    # Slim it like Debian's docker images: no docs (but copyrights), man pages or translations,
    # now and for packages installed later. Fewer files also make vfs copies faster.
    cat >"$rootfs/etc/dpkg/dpkg.cfg.d/zchat-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
SLIM
    find "$rootfs/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
    find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
    find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
    rm -rf "${rootfs:?}"/usr/share/man/* "${rootfs:?}"/usr/share/info/* \
           "${rootfs:?}"/var/lib/apt/lists/* "${rootfs:?}"/var/cache/apt/*.bin "${rootfs:?}"/var/cache/apt/archives/*.deb \
           "${rootfs:?}"/var/cache/debconf/*-old "${rootfs:?}"/var/log/* "${rootfs:?}"/tmp/* "${rootfs:?}"/dev/*
    log "importing as $BASE_IMAGE"
    tar --numeric-owner -C "$rootfs" -c . | docker_cli import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "debootstrap --variant=minbase $SUITE $mirror + python3 python3-venv" \
        - "$BASE_IMAGE" >&2
    rm -rf "$rootfs"
    log "base image $BASE_IMAGE built in $((SECONDS - t0))s"
}

purge() {
    stop_engine
    [ -f "$DIR/engine.lock" ] || die "$DIR does not look like an engine.sh directory; not deleting it"
    case "$DIR" in /|/tmp|/root|/home|/usr|/var|/etc) die "refusing to delete $DIR" ;; esac
    # Leftover mounts (container shm, netns) would make rm fail or reach outside.
    # (the data-root tmpfs among them).
    awk -v d="$DIR/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r \
        | while read -r m; do umount -l "$m" 2>/dev/null || true; done
    log "deleting $DIR"
    find "$DIR" -mindepth 1 -maxdepth 1 ! -name engine.lock -exec rm -rf {} +
}

case "${1:-}" in
    start) start_engine; print_env ;;
    base-image) start_engine; build_base_image; print_env ;;
    stop) stop_engine ;;
    status) our_pid >/dev/null && engine_answers ;;
    env) print_env ;;
    purge) purge ;;
    *) echo "usage: $0 start|base-image|stop|status|env|purge" >&2; exit 2 ;;
esac
