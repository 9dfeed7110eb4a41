#!/usr/bin/env bash
# End-to-end: the real `nines` binary. Usage: cli_test.sh PATH_TO_NINES [VERSION]
# VERSION (CMake passes the project's): what `nines --version` must print after "nines ".
set -uo pipefail
nines=$1
version=${2:-}
fail=0
err_file=$(mktemp)
trap 'rm -f "$err_file"' EXIT
# check NAME EXPECTED_RC EXPECTED_TEXT... -- ARGS...
# Every EXPECTED_TEXT must be in the output (stdout and stderr). A usage error (rc 2) must print
# nothing on stdout: its message goes to stderr.
check() {
  local name=$1 want_rc=$2
  shift 2
  local -a want=()
  while [[ $1 != -- ]]; do want+=("$1"); shift; done
  shift
  local stdout rc out problem=""
  stdout=$("$nines" "$@" 2>"$err_file")
  rc=$?
  out="$stdout"$'\n'"$(cat "$err_file")"
  [[ $rc -eq $want_rc ]] || problem="rc=$rc (want $want_rc)"
  for w in "${want[@]}"; do
    grep -qF -- "$w" <<<"$out" || problem+=" missing '$w'"
  done
  [[ $want_rc -ne 2 || -z $stdout ]] || problem+=" a usage error printed on stdout"
  if [[ -n $problem ]]; then
    echo "FAIL $name:$problem, output:"; echo "$out" | tail -20
    fail=1
  else
    echo "ok   $name"
  fi
}
check usage 2 "Usage: nines" "demo" "sim-server" --
check help 0 "Usage: nines" "demo" "sim-server" -- --help
check unknown_command 2 "unknown command 'frobnicate'" "expected one of: demo, sim-server" -- frobnicate
check bad_number 2 "--workers: expected a whole number from 1 to" "got 'abc'" -- demo runtime --workers abc
check missing_value 2 "--seconds needs a value" -- demo runtime --seconds
check unknown_option 2 "unknown option '--bogus'" -- demo runtime --bogus 1
check shards_gt_workers 2 "must not exceed" -- demo runtime --workers 5 --shards 10

# Per-command help: exit 0 and name every option (with its default where it has one).
check help_demo 0 "Usage: nines demo" "runtime" "models" -- demo --help
check help_demo_runtime 0 "Usage: nines demo runtime" "--workers" "--shards" "--seconds" "--threads" "100000" \
  -- demo runtime --help
check help_demo_models 0 "Usage: nines demo models" "--agents" "--calls" -- demo models --help
check help_sim_server 0 "Usage: nines sim-server" "--config" "--port" "--bind" -- sim-server --help
check help_short 0 "--agents" -- demo models -h

# --version: "nines MAJOR.MINOR.PATCH", the CMake project's version.
out=$("$nines" --version 2>&1)
rc=$?
if [[ $rc -ne 0 ]] || ! grep -qxE 'nines [0-9]+\.[0-9]+\.[0-9]+' <<<"$out" ||
   [[ -n $version && $out != "nines $version" ]]; then
  echo "FAIL version: rc=$rc, output: $out (want nines ${version:-X.Y.Z})"; fail=1
else
  echo "ok   version"
fi

# `nines demo` alone lists the demos; an unknown one says which exist.
check demo_list 0 "runtime" "models" -- demo
check unknown_demo 2 "unknown demo 'frob'" "expected one of: runtime, models" -- demo frob
check unexpected_argument 2 "unexpected argument 'extra'" -- demo runtime extra

# Numbers: counts are whole, in range, and the error names the option.
check agents_fraction 2 "--agents: expected a whole number from 1 to" "got '0.5'" -- demo models --agents 0.5
check agents_zero 2 "--agents: expected a whole number from 1 to" "got '0'" -- demo models --agents 0
check agents_text 2 "--agents: expected a whole number from 1 to" "got 'x'" -- demo models --agents x
check agents_negative 2 "--agents: expected a whole number" "got '-1'" -- demo models --agents -1
check agents_hex 2 "--agents: expected a whole number" "got '0x10'" -- demo models --agents 0x10
check agents_too_many 2 "--agents: expected a whole number from 1 to" -- demo models --agents 99999999999
check seconds_zero 2 "--seconds: expected a number of seconds above 0" -- demo runtime --seconds 0
check seconds_equals 2 "--seconds: expected a number of seconds above 0" -- demo runtime --seconds=-1
check port_range 2 "--port: expected a whole number from 0 to 65535" -- sim-server --port 65536
check config_missing 2 "--config" "/nonexistent/sim.json" -- sim-server --config /nonexistent/sim.json
check unknown_top_option 2 "unknown option '--bogus'" -- --bogus

# `nines check`: the sample config is valid (0), a broken one lists every error (1), a missing file is 2.
sample="$(cd "$(dirname "$0")/../.." && pwd)/config/nines.yaml"
bad_config=$(mktemp --suffix=.yaml)
printf 'models:\n  m1: {provider: sim, contxt: 1}\nagents:\n  a1: {models: [m2]}\n' >"$bad_config"
check check_sample 0 "nines.yaml: ok (2 models, 2 tools, 2 agents)" -- check "$sample"
check check_invalid 1 "$bad_config:2:23: models.m1.contxt: unknown key 'contxt'" \
  "$bad_config:4:17: agents.a1.models[0]: unknown model 'm2' (did you mean 'm1'?)" -- check "$bad_config"
check check_unreadable 2 "/nonexistent/nines.yaml: cannot read the file" -- check /nonexistent/nines.yaml
check check_usage 2 "FILE is required" -- check
check help_check 0 "Usage: nines check" "Exit status: 0 valid; 1 invalid; 2" -- check --help
rm -f "$bad_config"

# A small demo run: the storm makes one shard escalate; everything must come back.
check demo_recovers 0 "OK: every crash was recovered" "exceeded its restart intensity" \
  -- demo runtime --workers 20000 --shards 10 --seconds 2
# The models demo, small: faults, an outage of the primary, every call answered.
check models_demo 0 "OK: every call got an answer" -- demo models --agents 30 --calls 12
# --flag=value works like --flag value (a tiny run: it ends before the outage).
check models_equals 0 "3 agents x 2 calls" "OK: every call got an answer" -- demo models --agents=3 --calls=2
check models_bad_option 2 "unknown option '--bogus'" -- demo models --bogus 1
check sim_server_bad_config 2 "sim config" -- sim-server --config /dev/null
exit $fail
