#!/usr/bin/env bash
# The fault suite at full scale (tests/faults): 500 jobs per scenario, 20 SIGKILLs of GPU
# workers, Redis restarts with and without AOF, PostgreSQL restarts -m fast / -m immediate, the
# S3 server unreachable for 30 s, the webhook receiver down for 30 s. Private PostgreSQL, Redis
# and S3 forwarder (own ports and data directories); needs the test services for the S3 server
# itself (scripts/services.sh). Then the API scenarios: 50 clients for 60 s, 260 hostile requests
# (also while PostgreSQL restarts), tenant isolation on every route. Writes both measured tables
# into RELIABILITY.md; a partial run (e.g. `bash scripts/faults.sh -k api_faults`) rewrites only
# the table whose scenarios it ran.
set -euo pipefail
cd "$(dirname "$0")/.."
report=$(mktemp)
trap 'rm -f "$report"' EXIT
status=0
CAPTIONQ_FAULTS_SCALE=full CAPTIONQ_FAULTS_REPORT="$report" \
  python -m pytest -q -s -p no:cacheprovider tests/faults "$@" || status=$?
python - "$report" "$status" "$@" <<'PY'
import json, os, platform, re, subprocess, sys, datetime

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
status = int(sys.argv[2])
job_rows = [r for r in rows if r.get("kind") != "api"]
api_rows = [r for r in rows if r.get("kind") == "api"]

def version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[0]
    except Exception:
        return "unknown"

cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
measured = (
    f"Measured {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC with `bash scripts/faults.sh{' ' + ' '.join(sys.argv[3:]) if sys.argv[3:] else ''}`"
    f" (exit status {status}) on {os.cpu_count()} CPU cores ({cpu}), {version(['postgres', '--version'])},"
    f" {version(['redis-server', '--version']).split(' sha=')[0]}, Python {platform.python_version()};")
load = f" load average at the end {open('/proc/loadavg').read().split()[1]} (5 min): the times include whatever else ran on the machine."
head = [
    measured + " tiny InternLM2 checkpoint on CPU, 2 GPU-queue workers + 1 io worker with the scheduler;"
    " sweep 2 s, re-send after 5 s, heartbeat 1 s, worker dead after 6 s;" + load,
    "",
    "| scenario | fault | jobs | succeeded | failed | lost | ended twice | all terminal after the fault (s) | webhooks undelivered |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
]
for r in job_rows:
    failed = f"{r['failed']}" + (f" ({', '.join(f'{k} {v}' for k, v in r['failed_codes'].items())})" if r['failed'] else "")
    rec = "not reached" if r["recovered_seconds"] is None else f"{r['recovered_seconds']}"
    wh = "" if r["webhooks_pending"] is None else str(r["webhooks_pending"])
    head.append(f"| {r['scenario']} | {r['fault']} | {r['jobs']} | {r['succeeded']} | {failed} | **{r['lost']}** |"
                f" **{r['ended_twice']}** | {rec} | {wh} |")
api = [
    measured + " `captionq serve` (one process) on the suite's private PostgreSQL and Redis, no worker;" + load,
    "",
    "| scenario | requests | responses ≥ 500 | transport errors | wrong answers | 503 + Retry-After | req/s | p50 (ms) | p99 (ms) | mix |",
    "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
]
for r in api_rows:
    cell = lambda v: "" if v is None else str(v)
    api.append(f"| {r['scenario']} | {r['requests']} | **{r['server_errors']}** | **{r['transport_errors']}** |"
               f" **{r['wrong']}** | {r['unavailable']} | {cell(r['rate'])} | {cell(r['p50_ms'])} |"
               f" {cell(r['p99_ms'])} | {r['note']} |")
path = "RELIABILITY.md"
text = open(path).read()
for tag, lines, have in (("faults", head, job_rows), ("faults-api", api, api_rows)):
    if not have:  # a partial run (-k) leaves the other table as it was
        continue
    start, end = f"<!-- {tag}:begin -->", f"<!-- {tag}:end -->"
    block = f"{start}\n" + "\n".join(lines) + f"\n{end}"
    assert start in text, f"{start} missing in {path}"
    text = re.sub(re.escape(start) + ".*?" + re.escape(end), lambda m: block, text, flags=re.S)
    print("\n".join(lines) + "\n")
open(path, "w").write(text)
PY
exit $status
