# shellcheck shell=bash
# Real servers for the rollback test suite and benchmarks: a throwaway PostgreSQL
# cluster, a moto S3 server, Ceph radosgw (S3 with signatures, plain and TLS), Unleash 6 (and Prometheus' binary, which the probe tests
# start themselves). Sourced by scripts/test, scripts/servers-up
# and scripts/servers-down (and by any benchmark runner that wants the same servers).
#
# Usage:
#   source scripts/lib/servers.sh
#   rb_state_init            # makes $RB_STATE (temp dir for data, sockets, logs, state)
#   rb_start_postgres        # exports ROLLBACK_TEST_PG_URL, ROLLBACK_PG_BIN
#   rb_start_moto            # exports ROLLBACK_TEST_S3_*
#   rb_start_radosgw         # Ceph radosgw, plain and TLS: exports ROLLBACK_TEST_RGW_*
#   rb_start_unleash         # exports ROLLBACK_TEST_UNLEASH_* (needs PostgreSQL first)
#   rb_ensure_prometheus     # installs Prometheus if missing, exports ROLLBACK_PROMETHEUS_BIN
#   rb_make_tls              # a throwaway CA and server certificate, exports ROLLBACK_TEST_TLS_DIR
#   rb_start_postgres_tls    # a TLS-only cluster, exports ROLLBACK_TEST_PG_TLS_URL (needs rb_make_tls)
#   rb_start_unleash_tls     # Unleash behind stunnel, exports ROLLBACK_TEST_UNLEASH_TLS_URL
#   rb_print_exports         # the export lines, ready to `source`
#   rb_stop_all [STATE_DIR]  # stops what the state dir recorded, removes the dir
#
# Everything listens on 127.0.0.1 only. Each start function prints one line saying what
# it started where; on failure it prints the tail of the server's log and returns 1.
#
# Environment knobs (all optional):
#   DATABASE_URL         use this PostgreSQL instead of starting a cluster
#   PGPORT_TEST          first port tried for PostgreSQL (default 55432)
#   S3_PORT_TEST         first port tried for moto (default 59000)
#   RGW_PORT_TEST        first port tried for radosgw (default 59100; TLS on the next free one)
#   UNLEASH_PORT_TEST    first port tried for Unleash (default 54242)
#   PGPORT_TLS_TEST      first port tried for the TLS-only PostgreSQL (default 55532)
#   UNLEASH_TLS_PORT_TEST first port tried for Unleash's TLS front (default 54443)
#   ROLLBACK_TEST_CACHE  where Unleash is installed (default $XDG_CACHE_HOME/rollback-test
#                        or ~/.cache/rollback-test)
#   ROLLBACK_TEST_UNLEASH_DB  name of Unleash's database (default unleash)
#   ROLLBACK_TEST_TMPDIR where the state dir is made (default $TMPDIR or /tmp)
#   ROLLBACK_TEST_KEEP_TMP=1  keep the state dir (data, logs) after stopping

RB_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

rb_log() { printf 'rollback-test: %s\n' "$*" >&2; }
rb_die() { rb_log "error: $*"; return 1; }

# Single-quote a value for a shell `export` line.
rb_q() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

# Record KEY=VALUE in the state file (read back by rb_stop_all / servers-down).
rb_state_set() { printf '%s=%s\n' "$1" "$(rb_q "$2")" >>"$RB_STATE/state"; }

rb_now() { date +%s; }

# Tail of a log file to stderr, for start failures.
rb_tail_log() {
  local f=$1
  if [ -f "$f" ]; then
    rb_log "---- last 40 lines of $f ----"
    tail -n 40 "$f" >&2 || true
    rb_log "---- end of $f ----"
  fi
}

# The known machine quirk: /dev/null turned into a regular file breaks builds.
rb_check_dev_null() {
  if [ ! -c /dev/null ]; then
    if [ "$(id -u)" = 0 ]; then
      rb_log "/dev/null is not a character device; recreating it"
      rm -f /dev/null && mknod -m 666 /dev/null c 1 3
    else
      rb_log "warning: /dev/null is not a character device"
    fi
  fi
}

# The Python interpreter itself (not a version-manager shim: faster, and a server
# started with it keeps its pid).
rb_python() {
  if [ -z "${RB_PY:-}" ]; then
    RB_PY=$(python3 -c 'import sys; print(sys.executable)') || return 1
  fi
  echo "$RB_PY"
}

# Is TCP port $1 on 127.0.0.1 free to listen on?
rb_port_free() {
  local port=$1
  if command -v python3 >/dev/null 2>&1; then
    python3 - "$port" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
finally:
    s.close()
PY
  elif command -v ss >/dev/null 2>&1; then
    [ -z "$(ss -Htln "sport = :$port" 2>/dev/null)" ]
  else
    ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null
  fi
}

# First free port at or after $1 (tries 200 ports).
rb_free_port() {
  local port=$1 i
  for ((i = 0; i < 200; i++)); do
    if rb_port_free "$port"; then
      echo "$port"
      return 0
    fi
    port=$((port + 1))
  done
  rb_die "no free port found from $1 to $port"
}

# HTTP status of a GET (000 when nothing answers).
rb_http_status() {
  curl -s -o /dev/null -m 5 -w '%{http_code}' "$@" 2>/dev/null || true
}

# Make a new state directory ($RB_STATE): data, sockets, logs and the `state` file that
# records what runs (read back by rb_stop_all).
rb_state_init() {
  local base=${ROLLBACK_TEST_TMPDIR:-${TMPDIR:-/tmp}}
  # The postgres user must be able to reach the cluster's folder: stay in /tmp
  # when TMPDIR is somewhere private (e.g. under /root).
  case "$base" in /tmp | /tmp/* | /var/tmp | /var/tmp/*) ;; *) [ "$(id -u)" = 0 ] && base=/tmp ;; esac
  RB_STATE=$(mktemp -d "$base/rollback-test.XXXXXX")
  chmod 755 "$RB_STATE"
  mkdir -p "$RB_STATE/logs"
  : >"$RB_STATE/state"
  export RB_STATE
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------

# Directory of the highest installed PostgreSQL's binaries (installs it if absent).
rb_pg_bin() {
  local d best="" bestv=0 v
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ] || continue
    v=$(basename "$(dirname "$d")")
    v=${v%%.*}
    [[ $v =~ ^[0-9]+$ ]] || continue
    if ((v > bestv)); then bestv=$v best=$d; fi
  done
  if [ -z "$best" ]; then
    [ "$(id -u)" = 0 ] || { rb_die "PostgreSQL is not installed (run: apt-get install -y postgresql)"; return 1; }
    rb_log "PostgreSQL not found; installing the Debian package"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 ||
      { rb_die "apt-get install postgresql failed"; return 1; }
    rb_pg_bin
    return
  fi
  echo "$best"
}

# Run a command as the cluster's owner: `postgres` when we are root, else ourselves.
rb_as_pg() {
  if [ "$(id -u)" = 0 ]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

rb_ensure_pg_user() {
  [ "$(id -u)" = 0 ] || return 0
  id -u postgres >/dev/null 2>&1 && return 0
  rb_log "creating system user postgres"
  useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
}

# Starts the throwaway cluster, or uses $DATABASE_URL when it is set.
# Exports ROLLBACK_TEST_PG_URL and ROLLBACK_PG_BIN.
rb_start_postgres() {
  local t0 bin port data log sock attempt ver
  t0=$(rb_now)
  bin=$(rb_pg_bin) || return 1
  export ROLLBACK_PG_BIN=$bin
  rb_state_set RB_PG_BIN "$bin"

  if [ -n "${DATABASE_URL:-}" ]; then
    export ROLLBACK_TEST_PG_URL=$DATABASE_URL
    if ! "$bin/psql" "$DATABASE_URL" -XAtqc 'select 1' >/dev/null 2>"$RB_STATE/logs/postgres.log"; then
      rb_tail_log "$RB_STATE/logs/postgres.log"
      rb_die "DATABASE_URL does not answer"
      return 1
    fi
    rb_log "PostgreSQL: using DATABASE_URL (no cluster started); binaries $bin"
    return 0
  fi

  rb_ensure_pg_user || return 1
  data=$RB_STATE/pg
  sock=$RB_STATE/run
  log=$RB_STATE/logs/postgres.log
  mkdir -p "$data" "$sock"
  chmod 700 "$data"
  : >"$log"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$data" "$sock" "$log"; fi

  if ! rb_as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
    --no-sync >"$RB_STATE/logs/initdb.log" 2>&1; then
    rb_tail_log "$RB_STATE/logs/initdb.log"
    rb_die "initdb failed"
    return 1
  fi
  rb_state_set RB_PG_DATA "$data"

  port=${PGPORT_TEST:-55432}
  for attempt in 1 2 3; do
    port=$(rb_free_port "$port") || return 1
    if rb_as_pg "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 -s \
      -o "-p $port -k $sock -c listen_addresses=127.0.0.1 -c max_connections=200 -c wal_level=replica -c fsync=on" \
      start >>"$RB_STATE/logs/pg_ctl.log" 2>&1; then
      break
    fi
    if grep -qiE 'could not (bind|create listen)|address already in use' "$log" && [ $attempt -lt 3 ]; then
      rb_log "PostgreSQL: port $port taken meanwhile, trying the next one"
      port=$((port + 1))
      continue
    fi
    rb_tail_log "$log"
    rb_die "PostgreSQL did not start"
    return 1
  done
  rb_state_set RB_PG_PORT "$port"

  export ROLLBACK_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
  if ! "$bin/psql" "$ROLLBACK_TEST_PG_URL" -XAtqc 'select 1' >/dev/null 2>>"$log"; then
    rb_tail_log "$log"
    rb_die "PostgreSQL started but does not answer on 127.0.0.1:$port"
    return 1
  fi
  ver=$("$bin/psql" "$ROLLBACK_TEST_PG_URL" -XAtqc 'show server_version' 2>/dev/null)
  rb_log "PostgreSQL $ver started on 127.0.0.1:$port (data $data, log $log, $(($(rb_now) - t0))s)"
}

rb_stop_postgres() {
  [ -n "${RB_PG_DATA:-}" ] && [ -n "${RB_PG_BIN:-}" ] || return 0
  [ -f "$RB_PG_DATA/postmaster.pid" ] || return 0
  rb_as_pg "$RB_PG_BIN/pg_ctl" -D "$RB_PG_DATA" -m fast -w -t 60 -s stop >/dev/null 2>&1 ||
    rb_as_pg "$RB_PG_BIN/pg_ctl" -D "$RB_PG_DATA" -m immediate -w -t 30 -s stop >/dev/null 2>&1 ||
    rb_log "warning: could not stop PostgreSQL in $RB_PG_DATA"
}

# A second, small cluster that accepts only TLS from the network (ssl = on, hostssl-only
# pg_hba.conf), with the test CA's server certificate (DNS:localhost). Needs
# rb_make_tls and ROLLBACK_PG_BIN (rb_start_postgres). Exports ROLLBACK_TEST_PG_TLS_URL
# (postgres://postgres@localhost:PORT/postgres, without sslmode: tests add it) and
# ROLLBACK_TEST_PG_TLS_SOCKET_DIR (its Unix socket's folder, where TLS does not apply).
rb_start_postgres_tls() {
  local t0 bin port data log sock attempt ver tls
  t0=$(rb_now)
  bin=${ROLLBACK_PG_BIN:-}
  [ -n "$bin" ] || bin=$(rb_pg_bin) || return 1
  tls=${ROLLBACK_TEST_TLS_DIR:-}
  [ -n "$tls" ] && [ -f "$tls/server.pem" ] || { rb_die "run rb_make_tls before rb_start_postgres_tls"; return 1; }
  rb_ensure_pg_user || return 1
  data=$RB_STATE/pg-tls
  sock=$RB_STATE/run-tls
  log=$RB_STATE/logs/postgres-tls.log
  mkdir -p "$data" "$sock"
  chmod 700 "$data"
  : >"$log"
  if [ "$(id -u)" = 0 ]; then chown postgres: "$data" "$sock" "$log"; fi
  if ! rb_as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
    --no-sync >"$RB_STATE/logs/initdb-tls.log" 2>&1; then
    rb_tail_log "$RB_STATE/logs/initdb-tls.log"
    rb_die "initdb (TLS cluster) failed"
    return 1
  fi
  rb_state_set RB_PG_TLS_DATA "$data"
  rb_state_set RB_PG_BIN "$bin"
  # The key must belong to the server's user and be private to it.
  cp "$tls/server.pem" "$data/server.crt" && cp "$tls/server.key" "$data/server.key" &&
    cp "$tls/ca.pem" "$data/root.crt" && chmod 600 "$data/server.key" ||
    { rb_die "cannot copy the test certificates into $data"; return 1; }
  if [ "$(id -u)" = 0 ]; then chown postgres: "$data/server.crt" "$data/server.key" "$data/root.crt"; fi
  printf '%s\n' \
    '# Unix socket for the test scripts; from the network, TLS only.' \
    'local   all all              trust' \
    'hostssl all all 127.0.0.1/32 trust' \
    'hostssl all all ::1/128      trust' >"$data/pg_hba.conf"
  printf '%s\n' "ssl = on" "ssl_cert_file = 'server.crt'" "ssl_key_file = 'server.key'" \
    "ssl_ca_file = 'root.crt'" >>"$data/postgresql.conf"

  port=${PGPORT_TLS_TEST:-55532}
  for attempt in 1 2 3; do
    port=$(rb_free_port "$port") || return 1
    if rb_as_pg "$bin/pg_ctl" -D "$data" -l "$log" -w -t 60 -s \
      -o "-p $port -k $sock -c listen_addresses=127.0.0.1 -c max_connections=100 -c fsync=off" \
      start >>"$RB_STATE/logs/pg_ctl-tls.log" 2>&1; then
      break
    fi
    if grep -qiE 'could not (bind|create listen)|address already in use' "$log" && [ $attempt -lt 3 ]; then
      rb_log "PostgreSQL (TLS): port $port taken meanwhile, trying the next one"
      port=$((port + 1))
      continue
    fi
    rb_tail_log "$log"
    rb_die "PostgreSQL (TLS) did not start"
    return 1
  done
  rb_state_set RB_PG_TLS_PORT "$port"
  export ROLLBACK_TEST_PG_TLS_URL="postgres://postgres@localhost:$port/postgres"
  export ROLLBACK_TEST_PG_TLS_SOCKET_DIR=$sock
  if ! "$bin/psql" "host=localhost hostaddr=127.0.0.1 port=$port user=postgres dbname=postgres sslmode=verify-full sslrootcert=$tls/ca.pem" \
    -XAtqc 'select 1' >/dev/null 2>>"$log"; then
    rb_tail_log "$log"
    rb_die "PostgreSQL (TLS) started but does not answer over TLS on 127.0.0.1:$port"
    return 1
  fi
  ver=$("$bin/psql" "host=127.0.0.1 port=$port user=postgres dbname=postgres sslmode=require" -XAtqc 'show server_version' 2>/dev/null)
  rb_log "PostgreSQL $ver with TLS only started on 127.0.0.1:$port (certificate for localhost; data $data, log $log, $(($(rb_now) - t0))s)"
}

rb_stop_postgres_tls() {
  [ -n "${RB_PG_TLS_DATA:-}" ] && [ -n "${RB_PG_BIN:-}" ] || return 0
  [ -f "$RB_PG_TLS_DATA/postmaster.pid" ] || return 0
  rb_as_pg "$RB_PG_BIN/pg_ctl" -D "$RB_PG_TLS_DATA" -m fast -w -t 60 -s stop >/dev/null 2>&1 ||
    rb_as_pg "$RB_PG_BIN/pg_ctl" -D "$RB_PG_TLS_DATA" -m immediate -w -t 30 -s stop >/dev/null 2>&1 ||
    rb_log "warning: could not stop PostgreSQL in $RB_PG_TLS_DATA"
}

# ---------------------------------------------------------------------------
# Background processes (moto, Unleash)
# ---------------------------------------------------------------------------

# rb_spawn VAR LOG CMD... : start CMD detached in its own session (so it can outlive
# the caller for servers-up, and its whole process group can be stopped); records its
# pid in the state file as VAR at once and echoes it.
rb_spawn() {
  local var=$1 log=$2
  shift 2
  setsid "$@" </dev/null >>"$log" 2>&1 &
  rb_state_set "$var" $!
  echo $!
}

# Is pid $1 running (and not a zombie waiting to be reaped)?
rb_alive() {
  local st
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
  st=$(sed -n 's/^[0-9]* (.*) \([A-Za-z]\).*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 0
  [ "$st" != Z ] && [ "$st" != X ]
}

# Does pid $1 itself hold the listening socket on TCP port $2? (So that a server
# answering on the port is ours, not one that a parallel run started meanwhile.)
rb_pid_listens() {
  "$(rb_python)" - "$1" "$2" <<'PY'
import os, sys
pid, port = sys.argv[1], int(sys.argv[2])
inodes = set()
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    try:
        with open(table) as fh:
            next(fh)
            for line in fh:
                f = line.split()
                if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f[9])
    except OSError:
        pass
try:
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            sys.exit(0)
except OSError:
    pass
sys.exit(1)
PY
}

# rb_wait_ready PID PORT URL WANT TRIES INTERVAL: wait until URL answers (WANT is an
# HTTP status, or `any`) from the server PID listening on PORT. Fails when PID dies
# or after TRIES polls.
rb_wait_ready() {
  local pid=$1 port=$2 url=$3 want=$4 tries=$5 interval=$6 i code
  for ((i = 0; i < tries; i++)); do
    rb_alive "$pid" || return 1
    code=$(rb_http_status "$url")
    if [ "$code" != 000 ] && { [ "$want" = any ] || [ "$code" = "$want" ]; }; then
      rb_pid_listens "$pid" "$port" && return 0
    fi
    sleep "$interval"
  done
  return 1
}

# Stop a process we started (pid $1, expected to have $2 in its command line), and its
# process group; SIGTERM, then SIGKILL after 10 s.
rb_kill() {
  local pid=$1 expect=$2 i
  rb_alive "$pid" || return 0
  if [ -r "/proc/$pid/cmdline" ] && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "$expect"; then
    rb_log "warning: pid $pid is no longer $expect; not stopping it"
    return 0
  fi
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    rb_alive "$pid" || return 0
    sleep 0.1
  done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------------------
# moto (S3)
# ---------------------------------------------------------------------------

rb_start_moto() {
  local t0 py port log pid attempt
  t0=$(rb_now)
  command -v python3 >/dev/null 2>&1 || { rb_die "python3 is required for the moto S3 server"; return 1; }
  if ! python3 -c 'import moto.server' >/dev/null 2>&1; then
    rb_log "moto not found; installing moto[server] from PyPI"
    python3 -m pip install --quiet --disable-pip-version-check --no-input 'moto[server]' >&2 ||
      { rb_die "pip install moto[server] failed"; return 1; }
  fi
  py=$(rb_python) || { rb_die "python3 does not run"; return 1; }
  RB_PY=$py
  log=$RB_STATE/logs/moto.log
  port=${S3_PORT_TEST:-59000}
  for attempt in 1 2 3; do
    port=$(rb_free_port "$port") || return 1
    : >"$log"
    pid=$(rb_spawn RB_MOTO_PID "$log" "$py" -m moto.server -H 127.0.0.1 -p "$port")
    rb_wait_ready "$pid" "$port" "http://127.0.0.1:$port/" any 600 0.1 && break
    rb_kill "$pid" moto.server
    if { grep -qi 'address already in use' "$log" || ! rb_port_free "$port"; } && [ $attempt -lt 3 ]; then
      rb_log "moto: port $port taken meanwhile, trying the next one"
      port=$((port + 1))
      continue
    fi
    rb_tail_log "$log"
    rb_die "moto server did not answer on 127.0.0.1:$port"
    return 1
  done
  rb_state_set RB_MOTO_PORT "$port"
  export ROLLBACK_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
  export ROLLBACK_TEST_S3_ACCESS_KEY=test
  export ROLLBACK_TEST_S3_SECRET_KEY=test
  export ROLLBACK_TEST_S3_REGION=us-east-1
  rb_log "moto S3 server started on 127.0.0.1:$port (pid $pid, log $log, $(($(rb_now) - t0))s)"
}

# ---------------------------------------------------------------------------
# Ceph radosgw (S3): a production S3 implementation that enforces request
# signatures. One monitor, one OSD on memstore (in memory), and the gateway with a
# plain and a TLS endpoint (the rb_make_tls certificate, valid for localhost only).
# ---------------------------------------------------------------------------

rb_ensure_ceph() {
  local t0
  command -v radosgw >/dev/null 2>&1 && command -v ceph-mon >/dev/null 2>&1 &&
    command -v ceph-osd >/dev/null 2>&1 && command -v radosgw-admin >/dev/null 2>&1 && return 0
  [ "$(id -u)" = 0 ] || { rb_die "Ceph is not installed (run: apt-get install -y --no-install-recommends radosgw ceph-mon ceph-osd ceph-common)"; return 1; }
  t0=$(rb_now)
  rb_log "installing Ceph's radosgw, ceph-mon, ceph-osd (Debian packages)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends radosgw ceph-mon ceph-osd ceph-common >&2 ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends radosgw ceph-mon ceph-osd ceph-common >&2; } ||
    { rb_die "apt-get install radosgw ceph-mon ceph-osd ceph-common failed"; return 1; }
  rb_log "installed Ceph ($(($(rb_now) - t0))s)"
}

# Starts the cluster and the gateway. Exports ROLLBACK_TEST_RGW_ENDPOINT (plain HTTP),
# ROLLBACK_TEST_RGW_TLS_ENDPOINT (https://localhost:PORT), ROLLBACK_TEST_RGW_ACCESS_KEY,
# ROLLBACK_TEST_RGW_SECRET_KEY, ROLLBACK_TEST_RGW_REGION and ROLLBACK_TEST_TLS_DIR.
# Knob: RGW_PORT_TEST (first port tried, default 59100).
rb_start_radosgw() {
  local t0 d conf fsid mon_v2 mon_v1 port tls_port log osd_uuid osd_id pid i tls
  t0=$(rb_now)
  rb_ensure_ceph || return 1
  rb_make_tls || return 1
  tls=$ROLLBACK_TEST_TLS_DIR
  d=$RB_STATE/ceph
  log=$RB_STATE/logs/ceph.log
  mkdir -p "$d"/{mon.a,osd.0,run,log,rgw}
  : >"$log"
  rb_state_set RB_CEPH_DIR "$d"
  mon_v2=$(rb_free_port 59110) || return 1
  mon_v1=$(rb_free_port $((mon_v2 + 1))) || return 1
  port=$(rb_free_port "${RGW_PORT_TEST:-59100}") || return 1
  tls_port=$(rb_free_port $((port + 1))) || return 1
  fsid=$(cat /proc/sys/kernel/random/uuid)
  conf=$d/ceph.conf
  cat >"$conf" <<CONF
[global]
fsid = $fsid
mon host = [v2:127.0.0.1:$mon_v2,v1:127.0.0.1:$mon_v1]
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = true
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd objectstore = memstore
memstore device bytes = 2147483648
run dir = $d/run
admin socket = $d/run/\$name.asok
log file = $d/log/\$name.log
keyring = $d/keyring
[mon.a]
mon data = $d/mon.a
[osd.0]
osd data = $d/osd.0
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$port ssl_endpoint=127.0.0.1:$tls_port ssl_certificate=$tls/server.pem ssl_private_key=$tls/server.key
rgw data = $d/rgw
ms mon client mode = crc secure
CONF
  {
    ceph-authtool --create-keyring "$d/keyring" --gen-key -n mon. --cap mon 'allow *' &&
      ceph-authtool "$d/keyring" --gen-key -n client.admin --cap mon 'allow *' --cap osd 'allow *' &&
      monmaptool --create --addv a "[v2:127.0.0.1:$mon_v2,v1:127.0.0.1:$mon_v1]" --fsid "$fsid" "$d/monmap" &&
      ceph-mon -c "$conf" --mkfs -i a --monmap "$d/monmap" --keyring "$d/keyring"
  } >>"$log" 2>&1 || { rb_tail_log "$log"; rb_die "Ceph monitor set-up failed"; return 1; }
  pid=$(rb_spawn RB_CEPH_MON_PID "$log" ceph-mon -c "$conf" -i a -f)
  osd_uuid=$(cat /proc/sys/kernel/random/uuid)
  osd_id=$(timeout 60 ceph -c "$conf" osd new "$osd_uuid" 2>>"$log") &&
    ceph-osd -c "$conf" -i "$osd_id" --mkfs --osd-uuid "$osd_uuid" >>"$log" 2>&1 ||
    { rb_tail_log "$log"; rb_tail_log "$d/log/mon.a.log"; rb_die "Ceph OSD set-up failed (monitor pid $pid)"; return 1; }
  rb_spawn RB_CEPH_OSD_PID "$log" ceph-osd -c "$conf" -i "$osd_id" -f >/dev/null
  pid=$(rb_spawn RB_RGW_PID "$log" radosgw -c "$conf" -n client.rgw.a -f)
  if ! rb_wait_ready "$pid" "$port" "http://127.0.0.1:$port/" any 240 0.25; then # 60 s
    rb_tail_log "$log"
    rb_tail_log "$d/log/client.rgw.a.log"
    rb_die "radosgw did not answer on 127.0.0.1:$port"
    return 1
  fi
  export ROLLBACK_TEST_RGW_ACCESS_KEY=rollback-rgw-access
  export ROLLBACK_TEST_RGW_SECRET_KEY=rollback-rgw-secret-$(cat /proc/sys/kernel/random/uuid)
  export ROLLBACK_TEST_RGW_REGION=us-east-1
  timeout 60 radosgw-admin -c "$conf" user create --uid=rollback-test --display-name=rollback-test \
    --access-key="$ROLLBACK_TEST_RGW_ACCESS_KEY" --secret-key="$ROLLBACK_TEST_RGW_SECRET_KEY" >>"$log" 2>&1 ||
    { rb_tail_log "$log"; rb_die "radosgw-admin user create failed"; return 1; }
  for ((i = 0; i < 40; i++)); do
    [ "$(curl -s -o /dev/null -m 5 -w '%{http_code}' --cacert "$tls/ca.pem" \
      --resolve "localhost:$tls_port:127.0.0.1" "https://localhost:$tls_port/" 2>/dev/null)" != 000 ] && break
    sleep 0.25
  done
  [ "$i" -lt 40 ] || { rb_tail_log "$d/log/client.rgw.a.log"; rb_die "radosgw's TLS endpoint does not answer on 127.0.0.1:$tls_port"; return 1; }
  rb_state_set RB_RGW_PORT "$port"
  export ROLLBACK_TEST_RGW_ENDPOINT="http://127.0.0.1:$port"
  export ROLLBACK_TEST_RGW_TLS_ENDPOINT="https://localhost:$tls_port"
  rb_log "Ceph radosgw $(radosgw --version 2>/dev/null | awk '{print $3}') started on 127.0.0.1:$port and TLS 127.0.0.1:$tls_port (pid $pid, logs $d/log, $(($(rb_now) - t0))s)"
}

rb_stop_radosgw() {
  rb_kill "${RB_RGW_PID:-}" radosgw
  rb_kill "${RB_CEPH_OSD_PID:-}" ceph-osd
  rb_kill "${RB_CEPH_MON_PID:-}" ceph-mon
}

# ---------------------------------------------------------------------------
# Unleash 6
# ---------------------------------------------------------------------------

rb_unleash_dir() {
  echo "${ROLLBACK_TEST_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/rollback-test}/unleash"
}

rb_unleash_installed() {
  local dir=$1
  [ -f "$dir/node_modules/unleash-server/package.json" ] &&
    node -e 'const v=require(process.argv[1]).version; process.exit(v.startsWith("6.")?0:1)' \
      "$dir/node_modules/unleash-server/package.json" 2>/dev/null
}

# Installs unleash-server@6 into the cache folder unless it is already there.
rb_install_unleash() {
  local dir t0
  dir=$(rb_unleash_dir)
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { rb_die "node and npm are required for Unleash"; return 1; }
    rb_log "node/npm not found; installing Debian's nodejs and npm"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >&2 ||
      { rb_die "apt-get install nodejs npm failed"; return 1; }
  fi
  mkdir -p "$dir"
  (
    # One installer at a time (parallel runs share the cache).
    exec 9>"$dir/.lock"
    flock -w 900 9 || { rb_die "timed out waiting for $dir/.lock"; exit 1; }
    rb_unleash_installed "$dir" && exit 0
    t0=$(rb_now)
    rb_log "installing unleash-server@6 into $dir"
    [ -f "$dir/package.json" ] || printf '{ "name": "rollback-test-unleash", "private": true }\n' >"$dir/package.json"
    if ! (cd "$dir" && npm install --no-audit --no-fund --no-update-notifier --loglevel=error \
      unleash-server@6 >"$dir/npm-install.log" 2>&1); then
      rb_tail_log "$dir/npm-install.log"
      rb_die "npm install unleash-server@6 failed"
      exit 1
    fi
    rb_log "installed unleash-server $(node -p 'require(process.argv[1]).version' "$dir/node_modules/unleash-server/package.json") ($(($(rb_now) - t0))s)"
  )
}

# Needs rb_start_postgres first (ROLLBACK_TEST_PG_URL, ROLLBACK_PG_BIN).
rb_start_unleash() {
  local t0 dir port log pid attempt db dburl exists
  t0=$(rb_now)
  [ -n "${ROLLBACK_TEST_PG_URL:-}" ] || { rb_die "start PostgreSQL before Unleash"; return 1; }
  rb_install_unleash || return 1
  dir=$(rb_unleash_dir)
  log=$RB_STATE/logs/unleash.log
  : >"$log"

  # Unleash's own database in the same server.
  db=${ROLLBACK_TEST_UNLEASH_DB:-unleash}
  exists=$("$ROLLBACK_PG_BIN/psql" "$ROLLBACK_TEST_PG_URL" -XAtq -v ON_ERROR_STOP=1 \
    -c "select 1 from pg_database where datname = '$db'" 2>>"$log") ||
    { rb_tail_log "$log"; rb_die "cannot query PostgreSQL for Unleash's database"; return 1; }
  if [ "$exists" != 1 ]; then
    "$ROLLBACK_PG_BIN/psql" "$ROLLBACK_TEST_PG_URL" -XAtq -v ON_ERROR_STOP=1 \
      -c "create database \"$db\"" >>"$log" 2>&1 ||
      { rb_tail_log "$log"; rb_die "cannot create database $db"; return 1; }
  fi
  # Same server, other database name.
  dburl=$("$(rb_python)" - "$ROLLBACK_TEST_PG_URL" "$db" <<'PY'
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
print(u.urlunsplit((p.scheme, p.netloc, "/" + sys.argv[2], p.query, p.fragment)))
PY
  ) || { rb_die "cannot parse $ROLLBACK_TEST_PG_URL"; return 1; }

  export ROLLBACK_TEST_UNLEASH_ADMIN_TOKEN='*:*.ADMIN_SECRET'
  export ROLLBACK_TEST_UNLEASH_CLIENT_TOKEN='*:development.CLIENT_SECRET'

  port=${UNLEASH_PORT_TEST:-54242}
  for attempt in 1 2 3; do
    port=$(rb_free_port "$port") || return 1
    # Nothing leaves 127.0.0.1: no version check, no telemetry. DATABASE_URL is
    # removed from its environment so that only the options below configure it.
    pid=$(rb_spawn RB_UNLEASH_PID "$log" env -u DATABASE_URL -u DATABASE_URL_FILE \
      CHECK_VERSION=false SEND_TELEMETRY=false DO_NOT_TRACK=1 SCARF_ANALYTICS=false \
      NODE_ENV=production \
      RB_UNLEASH_MODULE="$dir/node_modules/unleash-server" \
      RB_UNLEASH_DB_URL="$dburl" RB_UNLEASH_PORT="$port" \
      RB_UNLEASH_ADMIN_TOKEN="$ROLLBACK_TEST_UNLEASH_ADMIN_TOKEN" \
      RB_UNLEASH_CLIENT_TOKEN="$ROLLBACK_TEST_UNLEASH_CLIENT_TOKEN" \
      node "$RB_LIB_DIR/unleash-server.js")
    rb_wait_ready "$pid" "$port" "http://127.0.0.1:$port/health" 200 240 0.5 && break # 120 s
    rb_kill "$pid" unleash-server.js
    if { grep -qi 'EADDRINUSE' "$log" || ! rb_port_free "$port"; } && [ $attempt -lt 3 ]; then
      rb_log "Unleash: port $port taken meanwhile, trying the next one"
      port=$((port + 1))
      continue
    fi
    rb_tail_log "$log"
    rb_die "Unleash did not answer 200 on http://127.0.0.1:$port/health within 120 s (status now: $(rb_http_status "http://127.0.0.1:$port/health"))"
    return 1
  done
  rb_state_set RB_UNLEASH_PORT "$port"
  export ROLLBACK_TEST_UNLEASH_URL="http://127.0.0.1:$port"
  rb_log "Unleash $(node -p 'require(process.argv[1]).version' "$dir/node_modules/unleash-server/package.json") started on 127.0.0.1:$port (pid $pid, database $db, log $log, $(($(rb_now) - t0))s)"
}

# A TLS front (stunnel, Debian's stunnel4) for the running Unleash, with the test CA's
# server certificate (DNS:localhost). Needs rb_make_tls and rb_start_unleash. Exports
# ROLLBACK_TEST_UNLEASH_TLS_URL (https://localhost:PORT).
rb_start_unleash_tls() {
  local t0 bin port log pid attempt tls conf i code
  t0=$(rb_now)
  tls=${ROLLBACK_TEST_TLS_DIR:-}
  [ -n "$tls" ] && [ -f "$tls/server.pem" ] || { rb_die "run rb_make_tls before rb_start_unleash_tls"; return 1; }
  [ -n "${ROLLBACK_TEST_UNLEASH_URL:-}" ] || { rb_die "start Unleash before its TLS front"; return 1; }
  bin=$(command -v stunnel4 || command -v stunnel || true)
  if [ -z "$bin" ]; then
    [ "$(id -u)" = 0 ] || { rb_die "stunnel is not installed (run: apt-get install -y stunnel4)"; return 1; }
    rb_log "installing stunnel4 (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4 >&2 ||
      { DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4 >&2; } ||
      { rb_die "apt-get install stunnel4 failed"; return 1; }
    bin=$(command -v stunnel4 || command -v stunnel)
  fi
  log=$RB_STATE/logs/unleash-tls.log
  conf=$RB_STATE/unleash-tls.conf
  port=${UNLEASH_TLS_PORT_TEST:-54443}
  for attempt in 1 2 3; do
    port=$(rb_free_port "$port") || return 1
    : >"$log"
    printf '%s\n' 'foreground = yes' 'pid =' "output = $log" 'debug = warning' '[unleash]' \
      "accept = 127.0.0.1:$port" "connect = ${ROLLBACK_TEST_UNLEASH_URL#http://}" \
      "cert = $tls/server.pem" "key = $tls/server.key" >"$conf"
    pid=$(rb_spawn RB_UNLEASH_TLS_PID "$log" "$bin" "$conf")
    code=000
    for ((i = 0; i < 100; i++)); do
      rb_alive "$pid" || break
      code=$(rb_http_status --cacert "$tls/ca.pem" --resolve "localhost:$port:127.0.0.1" "https://localhost:$port/health")
      [ "$code" = 200 ] && rb_pid_listens "$pid" "$port" && break
      sleep 0.1
    done
    [ "$code" = 200 ] && rb_alive "$pid" && break
    rb_kill "$pid" unleash-tls.conf
    if { grep -qi 'address already in use' "$log" || ! rb_port_free "$port"; } && [ $attempt -lt 3 ]; then
      rb_log "Unleash TLS front: port $port taken meanwhile, trying the next one"
      port=$((port + 1))
      continue
    fi
    rb_tail_log "$log"
    rb_die "the TLS front of Unleash did not answer 200 on https://localhost:$port/health (status $code)"
    return 1
  done
  rb_state_set RB_UNLEASH_TLS_PORT "$port"
  export ROLLBACK_TEST_UNLEASH_TLS_URL="https://localhost:$port"
  rb_log "Unleash over TLS (stunnel) on 127.0.0.1:$port -> ${ROLLBACK_TEST_UNLEASH_URL} (certificate for localhost; pid $pid, log $log, $(($(rb_now) - t0))s)"
}

# ---------------------------------------------------------------------------
# Prometheus (Debian's package): the probe tests start their own instances, on
# loopback, scraping an exporter they serve; here it is only installed and found.
# ---------------------------------------------------------------------------

rb_ensure_prometheus() {
  local bin=${ROLLBACK_PROMETHEUS_BIN:-}
  [ -n "$bin" ] && [ -x "$bin" ] || bin=$(command -v prometheus 2>/dev/null || true)
  if [ -z "$bin" ]; then
    [ "$(id -u)" = 0 ] || { rb_die "Prometheus is not installed (run: apt-get install -y --no-install-recommends prometheus)"; return 1; }
    rb_log "installing Prometheus (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2 ||
      { DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >&2; } ||
      { rb_die "apt-get install prometheus failed"; return 1; }
    bin=$(command -v prometheus)
  fi
  export ROLLBACK_PROMETHEUS_BIN=$bin
  rb_log "Prometheus: $("$bin" --version 2>&1 | head -n 1)"
}

# ---------------------------------------------------------------------------
# dbmate (the migration tool, for the interop tests of rollback-postgres's migrations)
# ---------------------------------------------------------------------------

rb_dbmate_dir() {
  echo "${ROLLBACK_TEST_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/rollback-test}/dbmate"
}

rb_dbmate_installed() {
  local dir=$1
  [ -x "$dir/node_modules/.bin/dbmate" ] && "$dir/node_modules/.bin/dbmate" --version >/dev/null 2>&1
}

# Installs dbmate from npm into the cache folder unless it is already there, and exports
# ROLLBACK_TEST_DBMATE_BIN. Needs node and npm (see rb_install_unleash).
rb_install_dbmate() {
  local dir t0
  dir=$(rb_dbmate_dir)
  command -v npm >/dev/null 2>&1 || { rb_die "npm is required for dbmate"; return 1; }
  mkdir -p "$dir"
  (
    exec 9>"$dir/.lock"
    flock -w 900 9 || { rb_die "timed out waiting for $dir/.lock"; exit 1; }
    rb_dbmate_installed "$dir" && exit 0
    t0=$(rb_now)
    rb_log "installing dbmate into $dir"
    [ -f "$dir/package.json" ] || printf '{ "name": "rollback-test-dbmate", "private": true }\n' >"$dir/package.json"
    if ! (cd "$dir" && npm install --no-audit --no-fund --no-update-notifier --loglevel=error \
      dbmate >"$dir/npm-install.log" 2>&1); then
      rb_tail_log "$dir/npm-install.log"
      rb_die "npm install dbmate failed"
      exit 1
    fi
    rb_log "installed $("$dir/node_modules/.bin/dbmate" --version 2>&1 | head -n 1) ($(($(rb_now) - t0))s)"
  ) || return 1
  export ROLLBACK_TEST_DBMATE_BIN=$dir/node_modules/.bin/dbmate
}

# ---------------------------------------------------------------------------
# All together
# ---------------------------------------------------------------------------

RB_EXPORT_VARS=(
  ROLLBACK_TEST_PG_URL ROLLBACK_PG_BIN
  ROLLBACK_TEST_S3_ENDPOINT ROLLBACK_TEST_S3_ACCESS_KEY ROLLBACK_TEST_S3_SECRET_KEY ROLLBACK_TEST_S3_REGION
  ROLLBACK_TEST_UNLEASH_URL ROLLBACK_TEST_UNLEASH_ADMIN_TOKEN ROLLBACK_TEST_UNLEASH_CLIENT_TOKEN
  ROLLBACK_PROMETHEUS_BIN ROLLBACK_TEST_TLS_DIR
  ROLLBACK_TEST_RGW_ENDPOINT ROLLBACK_TEST_RGW_TLS_ENDPOINT ROLLBACK_TEST_RGW_ACCESS_KEY
  ROLLBACK_TEST_RGW_SECRET_KEY ROLLBACK_TEST_RGW_REGION
  ROLLBACK_TEST_PG_TLS_URL ROLLBACK_TEST_PG_TLS_SOCKET_DIR ROLLBACK_TEST_UNLEASH_TLS_URL
  ROLLBACK_TEST_DBMATE_BIN
)

# ---------------------------------------------------------------------------
# TLS: a throwaway certificate authority for the TLS tests
# ---------------------------------------------------------------------------

# Makes $RB_STATE/tls with a throwaway CA (ca.pem), a server certificate signed by it
# (server.pem, key server.key, mode 0644 so the postgres user can copy it) whose only
# name is DNS:localhost — so connecting to 127.0.0.1 with hostname verification is a
# wrong-hostname case — and a second, unrelated CA (other-ca.pem) for wrong-CA cases.
# Exports ROLLBACK_TEST_TLS_DIR. Idempotent.
rb_make_tls() {
  local d=$RB_STATE/tls
  export ROLLBACK_TEST_TLS_DIR=$d
  [ -f "$d/server.pem" ] && return 0
  mkdir -p "$d"
  (
    cd "$d" || exit 1
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 \
      -subj "/CN=rollback test CA" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null &&
      openssl req -x509 -newkey rsa:2048 -nodes -keyout other-ca.key -out other-ca.pem -days 2 \
        -subj "/CN=rollback unrelated CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null &&
      openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr \
        -subj "/CN=localhost" 2>/dev/null &&
      printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >server.ext &&
      openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out server.pem -days 2 -extfile server.ext 2>/dev/null &&
      chmod 644 server.key ca.pem other-ca.pem server.pem
  ) || rb_die "could not make the test certificates in $d (openssl)" || return 1
  rb_log "test CA and server certificate (DNS:localhost) in $d"
}

rb_start_all() {
  rb_check_dev_null
  rb_start_postgres || return 1
  rb_start_moto || return 1
  rb_start_radosgw || return 1
  rb_start_unleash || return 1
  rb_make_tls || return 1
  rb_start_postgres_tls || return 1
  rb_start_unleash_tls || return 1
  rb_ensure_prometheus || return 1
  rb_install_dbmate || return 1
}

rb_print_exports() {
  local v
  for v in "${RB_EXPORT_VARS[@]}"; do
    [ -n "${!v:-}" ] && printf 'export %s=%s\n' "$v" "$(rb_q "${!v}")"
  done
  return 0
}

# Stops everything recorded in a state dir (default $RB_STATE) and removes the dir.
rb_stop_all() {
  local dir=${1:-${RB_STATE:-}}
  [ -n "$dir" ] && [ -f "$dir/state" ] || return 0
  (
    # shellcheck disable=SC1091
    . "$dir/state"
    rb_kill "${RB_UNLEASH_TLS_PID:-}" unleash-tls.conf
    rb_kill "${RB_UNLEASH_PID:-}" unleash-server.js
    rb_kill "${RB_MOTO_PID:-}" moto.server
    rb_stop_radosgw
    rb_stop_postgres_tls
    rb_stop_postgres
  )
  if [ -z "${ROLLBACK_TEST_KEEP_TMP:-}" ]; then
    rm -rf "$dir"
  fi
}

# ---------------------------------------------------------------------------
# sqlx-cli and refinery_cli (the Rust migration tools, for the interop tests of
# rollback-postgres's migrations): built once with cargo into the cache folder.
# ---------------------------------------------------------------------------

RB_SQLX_CLI_VERSION=${RB_SQLX_CLI_VERSION:-0.9.0}
RB_REFINERY_CLI_VERSION=${RB_REFINERY_CLI_VERSION:-0.10.0}

rb_cargo_tools_dir() {
  echo "${ROLLBACK_TEST_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/rollback-test}/cargo-tools"
}

# rb_cargo_tool_install NAME BIN VERSION CARGO-INSTALL-ARGS...: installs crate NAME at
# VERSION into the cache (skipped when BIN there already reports VERSION).
rb_cargo_tool_install() {
  local name=$1 bin=$2 version=$3 dir t0 cargo
  shift 3
  dir=$(rb_cargo_tools_dir)
  cargo=$(command -v cargo || echo "$HOME/.cargo/bin/cargo")
  [ -x "$cargo" ] || { rb_die "cargo is required for $name"; return 1; }
  mkdir -p "$dir"
  (
    exec 9>"$dir/.lock-$name"
    flock -w 3600 9 || { rb_die "timed out waiting for $dir/.lock-$name"; exit 1; }
    if [ -x "$dir/bin/$bin" ] && [ "$(cat "$dir/.version-$name" 2>/dev/null)" = "$version" ]; then
      exit 0
    fi
    t0=$(rb_now)
    rb_log "installing $name $version into $dir (cargo install, a few minutes)"
    # Its own target folder: never the workspace's (nor its lock).
    if ! CARGO_TARGET_DIR="$dir/target" "$cargo" install --locked --force --root "$dir" \
      "$name" --version "=$version" "$@" >"$dir/install-$name.log" 2>&1; then
      rb_tail_log "$dir/install-$name.log"
      rb_die "cargo install $name failed"
      exit 1
    fi
    echo "$version" >"$dir/.version-$name"
    rm -rf "$dir/target"
    rb_log "installed $name $version ($(($(rb_now) - t0))s)"
  ) || return 1
}

# Installs sqlx-cli (PostgreSQL only, rustls) and exports ROLLBACK_TEST_SQLX_BIN.
rb_install_sqlx_cli() {
  rb_cargo_tool_install sqlx-cli sqlx "$RB_SQLX_CLI_VERSION" \
    --no-default-features --features postgres,rustls || return 1
  export ROLLBACK_TEST_SQLX_BIN
  ROLLBACK_TEST_SQLX_BIN=$(rb_cargo_tools_dir)/bin/sqlx
}

# Installs refinery_cli (PostgreSQL only) and exports ROLLBACK_TEST_REFINERY_BIN.
rb_install_refinery_cli() {
  rb_cargo_tool_install refinery_cli refinery "$RB_REFINERY_CLI_VERSION" \
    --no-default-features --features postgresql || return 1
  export ROLLBACK_TEST_REFINERY_BIN
  ROLLBACK_TEST_REFINERY_BIN=$(rb_cargo_tools_dir)/bin/refinery
}

# Installs sqitch with its PostgreSQL driver from Debian's packages unless present, and
# exports ROLLBACK_TEST_SQITCH_BIN.
rb_install_sqitch() {
  local bin=${ROLLBACK_TEST_SQITCH_BIN:-}
  [ -n "$bin" ] && [ -x "$bin" ] || bin=$(command -v sqitch 2>/dev/null || true)
  if [ -z "$bin" ] || ! perl -MDBD::Pg -e 1 >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || { rb_die "sqitch is not installed (run: apt-get install -y sqitch libdbd-pg-perl)"; return 1; }
    rb_log "installing sqitch (Debian packages sqitch, libdbd-pg-perl)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sqitch libdbd-pg-perl >&2 ||
      { DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq sqitch libdbd-pg-perl >&2; } ||
      { rb_die "apt-get install sqitch libdbd-pg-perl failed"; return 1; }
    bin=$(command -v sqitch)
  fi
  export ROLLBACK_TEST_SQITCH_BIN=$bin
  rb_log "sqitch: $("$bin" --version 2>&1 | head -n 1)"
}

# The migration tools of the interop tests (dbmate is installed by rb_start_all).
rb_install_migration_tools() {
  rb_install_sqlx_cli || return 1
  rb_install_refinery_cli || return 1
  rb_install_sqitch || return 1
}
RB_EXPORT_VARS+=(ROLLBACK_TEST_SQLX_BIN ROLLBACK_TEST_REFINERY_BIN ROLLBACK_TEST_SQITCH_BIN)
# Chromium (Debian's package): renders the HTML run report headless in rollback-cli's
# tests. Installed once; exports ROLLBACK_TEST_CHROMIUM.
# ---------------------------------------------------------------------------

rb_install_chromium() {
  local bin
  bin=$(command -v chromium || true)
  if [ -z "$bin" ]; then
    [ "$(id -u)" = 0 ] || { rb_die "Chromium is not installed (run: apt-get install -y chromium)"; return 1; }
    rb_log "installing chromium (Debian package)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2 ||
      { DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >&2; } ||
      { rb_die "apt-get install chromium failed"; return 1; }
    bin=$(command -v chromium) || { rb_die "chromium is not on PATH after installing it"; return 1; }
  fi
  export ROLLBACK_TEST_CHROMIUM=$bin
}
RB_EXPORT_VARS+=(ROLLBACK_TEST_CHROMIUM)
