// sim_config.mjs -- prints the `nines sim-server` config of bench/peers/agents (docs/sim.md).
//
// Run:  node sim_config.mjs SPEC.json faults|clean SEED
// The scenario is the spec's 10 steps, one tool call per turn (the turn is the number of
// assistant messages in the request, so a retried or resumed call gets the same turn again),
// then the spec's answer; past the last turn the answer is repeated.
//   faults  the benchmark's model: first-byte latency uniform 20..80 ms, and per call, drawn
//           with SEED: server_error 10% (500) + unavailable 10% (503) = 20% transient errors,
//           malformed_json 5% (a 200 whose body is cut in half), hallucinated_tool 2% (a call
//           to sim_unknown_tool); a call gets at most one fault; the draws are keyed by the
//           request's logical position (fault_key "position", docs/sim.md), so both sides get
//           the same faults at the same point of the same task, retries included
//   clean   no latency and no faults: the framework-overhead run (steps_per_cpu_s)
import fs from 'node:fs';

const [specPath, profile, seed] = process.argv.slice(2);
if (!specPath || !['faults', 'clean'].includes(profile) || seed === undefined) {
  process.stderr.write('usage: node sim_config.mjs SPEC.json faults|clean SEED\n');
  process.exit(2);
}
const spec = JSON.parse(fs.readFileSync(specPath, 'utf8'));
const config = {
  seed: Number(seed),
  model: 'sim-1',
  scenario: [
    ...spec.steps.map((s) => ({ tool_calls: [{ name: s.tool, arguments: s.arguments }] })),
    { answer: spec.answer },
  ],
  after_last_turn: 'repeat_final',
  // Faults drawn by the request's logical position (the task's user message, the assistant
  // turns and tool results so far, and how often that position was asked), not by its bytes:
  // the two sides serialize the same conversation differently, and with the default
  // ("request") they would not get the same fault at the same point of the same task.
  fault_key: 'position',
};
if (profile === 'faults') {
  config.latency = { first_byte: { distribution: 'uniform', min_ms: 20, max_ms: 80 } };
  config.faults = {
    server_error: { probability: 0.10 },
    unavailable: { probability: 0.10 },
    malformed_json: { probability: 0.05 },
    hallucinated_tool: { probability: 0.02 },
  };
}
process.stdout.write(JSON.stringify(config, null, 2) + '\n');
