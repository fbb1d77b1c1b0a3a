# Sourced by the unattended experiment scripts (proxy_fig23.sh, lr_stability.sh, ablation_421.sh):
# one bnrepro-train per run, each in its own process with its own log, so a run that fails is
# recorded and the others go on; then one JSON record of the whole experiment: the command, its
# wall time, the commit of the code, and each run's fields, exit status and seconds.
#
#   source "$(dirname "$0")/run_lib.sh"
#   train_run "$OUT/logs/x.log" "experiment=x seed=0" experiment=x seed=0 ...   # -> $STATUS
#   write_record "$RESULTS/x_run.json" "$wall" "the command line"
#
# Needs BIN (the venv's bin folder, holding bnrepro-train and python).

RUNS=()  # one "key=value key=value ... exit_status=N seconds=N" per run
FAILED=0
STATUS=0

# train_run LOG FIELDS OVERRIDES...: run bnrepro-train OVERRIDES... into LOG; record FIELDS
# (space-separated key=value, what the record says the run was), its exit status and seconds.
# Exit status 3 (diverged) is a result, not a failure, for the scripts that pass ok_statuses.
train_run() {
  local log=$1 fields=$2
  shift 2
  local t0 seconds
  t0=$(date +%s)
  STATUS=0
  "$BIN/bnrepro-train" "$@" >"$log" 2>&1 || STATUS=$?
  seconds=$(($(date +%s) - t0))
  RUNS+=("$fields exit_status=$STATUS seconds=$seconds")
  echo "$fields: exit $STATUS in ${seconds} s (log: $log)"
}

# write_record PATH WALL_SECONDS COMMAND [OK_STATUSES]: the JSON record; a run whose exit status
# is not in OK_STATUSES (default "0") counts as failed.
write_record() {
  "$BIN/python" - "$1" "$2" "$3" "${4:-0}" "${RUNS[@]}" <<'PY'
import json, sys

from bnrepro.provenance import git_dirty, git_sha

path, wall, command, ok, *runs = sys.argv[1:]
ok = {int(s) for s in ok.split(",")}


def value(text):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


rows = [{k: value(v) for k, v in (f.split("=", 1) for f in run.split())} for run in runs]
failed = [r for r in rows if r["exit_status"] not in ok]
record = {"command": command, "wall_seconds": int(wall), "git_sha": git_sha(),
          "git_dirty": git_dirty(), "failed_runs": len(failed), "runs": rows}
open(path, "w").write(json.dumps(record, indent=2) + "\n")
PY
}

# check_seeds SCRIPT SEEDS: refuse a SEEDS that is not like 0,1,2 (exit status 2, a user error).
check_seeds() {
  case "$2" in '' | *[!0-9,]*) echo "$1: SEEDS must be like 0,1,2, got '$2'" >&2; exit 2 ;; esac
}
