#!/usr/bin/env bash
# End-to-end: the real `nines` binary. Usage: cli_test.sh PATH_TO_NINES
set -uo pipefail
nines=$1
fail=0
check() {  # check NAME EXPECTED_RC EXPECTED_TEXT -- ARGS...
  local name=$1 want_rc=$2 want_text=$3
  shift 4
  out=$("$nines" "$@" 2>&1)
  rc=$?
  if [[ $rc -ne $want_rc ]] || ! grep -qF -- "$want_text" <<<"$out"; then
    echo "FAIL $name: rc=$rc (want $want_rc), output:"; echo "$out" | tail -20
    fail=1
  else
    echo "ok   $name"
  fi
}
check usage 2 "usage: nines" --
check help 0 "demo runtime" -- --help
check unknown_command 2 "unknown command 'frobnicate'" -- frobnicate
check bad_number 2 "--workers needs a positive number, got 'abc'" -- demo runtime --workers abc
check missing_value 2 "--seconds needs a value" -- demo runtime --seconds
check unknown_option 2 "unknown option '--bogus'" -- demo runtime --bogus 1
check shards_gt_workers 2 "must not exceed" -- demo runtime --workers 5 --shards 10
# A small demo run: the storm makes one shard escalate; everything must come back.
check demo_recovers 0 "OK: every crash was recovered" -- demo runtime --workers 20000 --shards 10 --seconds 2
check demo_escalates 0 "exceeded its restart intensity" -- demo runtime --workers 20000 --shards 10 --seconds 2
# The models demo, small: faults, an outage of the primary, every call answered.
check models_demo 0 "OK: every call got an answer" -- demo models --agents 30 --calls 12
check models_bad_option 2 "unknown option '--bogus'" -- demo models --bogus 1
check sim_server_bad_config 2 "sim config" -- sim-server --config /dev/null
exit $fail
