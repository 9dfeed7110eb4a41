#!/usr/bin/env python3
"""End-to-end tests of `nines serve`: the real binary, its HTTP API on loopback, a ledger the agents'
tools charge (to count effects), SIGTERM and kill -9 with resume (docs/api.md, docs/service.md).

usage: e2e_test.py NINES_BINARY [TEST_NAME ...]

Each test writes a config into a temporary directory, starts `nines serve --port 0` on it (the
port is read from its "listening on" line), and talks to it with urllib. Exit status 0 when every
test passed; the first failure of each test is printed with what was expected and what came.
"""
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

NINES = None  # the binary, from argv


class Failure(Exception):
    pass


def check(cond, what):
    if not cond:
        raise Failure(what)


# ---- the ledger: an HTTP tool target that counts what it applied ------------------------------


class Ledger:
    """POST /charge/{account}: applies a charge once per Idempotency-Key (a repeat with the same key
    answers the recorded result, as an idempotent API does). `hold` makes a charge wait (to kill the
    service while it is in flight). Counts requests and applications per key."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = {}  # key -> requests received
        self.applied = {}  # key -> times applied (must stay 1)
        self.hold_seconds = 0.0
        self.received = threading.Event()
        ledger = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                key = self.headers.get("Idempotency-Key") or ""
                with ledger.lock:
                    ledger.requests[key] = ledger.requests.get(key, 0) + 1
                    first = key not in ledger.applied
                    if first:
                        ledger.applied[key] = 1
                    hold = ledger.hold_seconds
                ledger.received.set()
                if hold:
                    time.sleep(hold)
                out = json.dumps({"ok": True, "account": self.path.rsplit("/", 1)[-1], "replayed": not first}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def tasks_charged(self):
        """task id -> number of distinct keys applied (the journal's keys start with the task id)."""
        out = {}
        with self.lock:
            for key in self.applied:
                task = key.split("#", 1)[0]
                out[task] = out.get(task, 0) + 1
        return out

    def close(self):
        self.server.shutdown()


# ---- the service ------------------------------------------------------------------------------


def config_text(ledger_port, *, latency_ms=0, extra_server="", unsafe=False, model_faults="", turns=None):
    if turns is None:
        turns = """
        - tool_calls: [{name: charge, arguments: {account: acct-1, cents: 100}}]
        - answer: charged"""
    nature = "unsafe" if unsafe else "idempotent"
    return f"""
version: 1
store:
  sqlite: {{path: nines.db, durability: synced}}
models:
  sim-a:
    provider: sim
    model: sim-1
    price: {{input_per_mtok: 2.5, output_per_mtok: 10}}
    retry: {{max_attempts: 2, backoff: {{base: 10ms, cap: 50ms}}}}
    breaker: {{window_size: 10, minimum_calls: 4, failure_rate_threshold: 0.5, open_duration: 60s}}
    sim:
      seed: 1
      latency: {{first_byte: {{distribution: fixed, ms: {latency_ms}}}}}
      scenario: {turns}
{model_faults}
tools:
  charge:
    type: http
    description: Charge an account.
    parameters:
      type: object
      properties: {{account: {{type: string}}, cents: {{type: integer}}}}
      required: [account, cents]
    method: POST
    url: http://127.0.0.1:{ledger_port}/charge/{{account}}
    nature: {nature}
    timeout: 30s
agents:
  support:
    models: [sim-a]
    system_prompt: You charge accounts.
    tools: [charge]
  other:
    models: [sim-a]
    system_prompt: Another agent.
server:
  address: 127.0.0.1
  max_body_bytes: 4KiB
  shutdown_grace: 10s
{extra_server}
logging: {{level: info}}
"""


class Service:
    def __init__(self, workdir, env=None):
        self.workdir = workdir
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.url = None
        self.stderr_lines = []

    def start(self, expect_ok=True, timeout=60):
        self.proc = subprocess.Popen([NINES, "serve", "-c", "nines.yaml", "--port", "0"], cwd=self.workdir,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=self.env)
        found = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.stderr_lines.append(line.rstrip("\n"))
                m = re.search(r"listening on (http://\S+)", line)
                if m and not found.is_set():
                    self.url = m.group(1)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        found.wait(timeout)
        if expect_ok:
            check(self.url is not None, "the service did not start:\n" + "\n".join(self.stderr_lines[-20:]))
        return self

    def log(self):
        return "\n".join(self.stderr_lines[-30:])

    def request(self, method, path, body=None, headers=None, raw=None, timeout=30):
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                text = r.read().decode()
                return r.status, dict(r.headers), (json.loads(text) if text.strip().startswith(("{", "[")) else text)
        except urllib.error.HTTPError as e:
            text = e.read().decode()
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = text
            return e.code, dict(e.headers), parsed

    def wait_task(self, task_id, statuses=("succeeded", "failed", "budget_exceeded", "loop_detected", "cancelled",
                                           "needs_attention"), timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            status, _, t = self.request("GET", "/v1/tasks/" + task_id)
            if status == 200 and t["status"] in statuses:
                return t
            time.sleep(0.05)
        raise Failure(f"task {task_id} did not reach {statuses} in {timeout}s (last: {t})\n{self.log()}")

    def terminate(self, timeout=30):
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill9(self):
        self.proc.kill()
        self.proc.wait(10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Env:
    """A test's directory, ledger and service; cleaned up at the end."""

    def __init__(self, **config):
        self.dir = tempfile.mkdtemp(prefix="nines-e2e-")
        self.ledger = Ledger()
        self.write_config(**config)
        self.services = []

    def write_config(self, **config):
        with open(os.path.join(self.dir, "nines.yaml"), "w") as f:
            f.write(config_text(self.ledger.port, **config))

    def service(self, env=None, expect_ok=True):
        s = Service(self.dir, env).start(expect_ok=expect_ok)
        self.services.append(s)
        return s

    def close(self):
        for s in self.services:
            s.stop()
        self.ledger.close()
        shutil.rmtree(self.dir, ignore_errors=True)


# ---- tests ------------------------------------------------------------------------------------


def metric(page, name, **labels):
    """The value of the sample `name{labels...}` (labels given must match; others may exist)."""
    for line in page.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)$', line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            return float(m.group(3))
    return None


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_routes_and_bad_input():
    e = Env()
    try:
        s = e.service()
        st, _, body = s.request("GET", "/healthz")
        check(st == 200 and body == {"status": "ok"}, f"healthz: {st} {body}")
        st, _, body = s.request("GET", "/readyz")
        check(st == 200 and body["ready"] is True, f"readyz: {st} {body}")

        st, h, t = s.request("POST", "/v1/tasks", {"agent": "support", "input": "charge acct-1"})
        check(st == 201, f"POST /v1/tasks: {st} {t}")
        check(h.get("Location") == "/v1/tasks/" + t["id"], f"Location: {h}")
        check(t["agent"] == "support" and t["input"] == "charge acct-1", f"task object: {t}")
        done = s.wait_task(t["id"])
        check(done["status"] == "succeeded", f"outcome: {done}")
        o = done["outcome"]
        check(o["answer"] == "charged" and o["steps"] == 2 and o["tool_calls"] == 1 and o["cost_usd"] > 0,
              f"outcome fields: {o}")
        check(e.ledger.tasks_charged() == {t["id"]: 1}, f"ledger: {e.ledger.tasks_charged()}")
        # Its log lines: JSON, with the task, agent, step and trace ids.
        lines = [json.loads(l) for l in s.stderr_lines if l.startswith("{")]
        mine = [l for l in lines if l.get("task") == t["id"]]
        check([l["event"] for l in mine] == ["task_started", "task_finished"], f"task log lines: {mine}")
        check(mine[-1]["msg"] == "succeeded" and mine[-1]["agent"] == "support" and mine[-1]["step"] == 2 and
              len(mine[-1]["trace_id"]) == 32 and mine[0]["trace_id"] == mine[-1]["trace_id"], f"fields: {mine[-1]}")

        # A second task, then the list with pagination.
        st, _, t2 = s.request("POST", "/v1/tasks", {"agent": "other", "input": "hello", "id": "my-task.1"})
        check(st == 201 and t2["id"] == "my-task.1", f"POST with id: {st} {t2}")
        s.wait_task("my-task.1")
        st, _, page = s.request("GET", "/v1/tasks?limit=1")
        check(st == 200 and len(page["tasks"]) == 1 and "next_cursor" in page, f"page 1: {st} {page}")
        st, _, page2 = s.request("GET", "/v1/tasks?limit=1&cursor=" + page["next_cursor"])
        check(st == 200 and len(page2["tasks"]) == 1, f"page 2: {st} {page2}")
        check(page["tasks"][0]["id"] != page2["tasks"][0]["id"], "pages repeat a task")
        st, _, page3 = s.request("GET", "/v1/tasks?limit=1&cursor=" + page2.get("next_cursor", ""))
        check(st == 200 and page3["tasks"] == [] and "next_cursor" not in page3 or st == 400, f"page 3: {st} {page3}")
        st, _, only = s.request("GET", "/v1/tasks?agent=other&status=succeeded")
        check([x["id"] for x in only["tasks"]] == ["my-task.1"], f"filtered list: {only}")
        st, _, none = s.request("GET", "/v1/tasks?status=running")
        check(none["tasks"] == [], f"running list: {none}")

        # Bad input: 4xx with a message naming the field, and no state change.
        before = s.request("GET", "/v1/tasks?limit=500")[2]["tasks"]
        cases = [
            ("POST", "/v1/tasks", b"{not json", 400, None),
            ("POST", "/v1/tasks", b"[1,2]", 400, None),
            ("POST", "/v1/tasks", json.dumps({"agent": "support"}).encode(), 400, "input"),
            ("POST", "/v1/tasks", json.dumps({"agent": "suport", "input": "x"}).encode(), 400, "agent"),
            ("POST", "/v1/tasks", json.dumps({"agent": "support", "input": 5}).encode(), 400, "input"),
            ("POST", "/v1/tasks", json.dumps({"agent": "support", "input": "x", "colour": 1}).encode(), 400, "colour"),
            ("POST", "/v1/tasks", json.dumps({"agent": "support", "input": "x", "id": "bad id"}).encode(), 400, "id"),
            ("POST", "/v1/tasks", json.dumps({"agent": "support", "input": "x", "budget": {"max_steps": -1}}).encode(),
             400, "budget.max_steps"),
            ("POST", "/v1/tasks", json.dumps({"agent": "support", "input": "x" * 5000}).encode(), 413, None),
            ("GET", "/v1/tasks?limit=0", None, 400, "limit"),
            ("GET", "/v1/tasks?status=done", None, 400, "status"),
            ("GET", "/v1/tasks?cursor=zz", None, 400, "cursor"),
            ("GET", "/v1/tasks?sort=id", None, 400, "sort"),
            ("GET", "/v1/tasks/nope", None, 404, None),
            ("GET", "/v1/nothing", None, 404, None),
            ("DELETE", "/v1/tasks", None, 405, None),
            ("GET", "/v1/tasks/my-task.1/cancel", None, 405, None),
            ("POST", "/v1/tasks/my-task.1/resolve", json.dumps({"effect_id": "1", "applied": True}).encode(), 409, None),
            ("POST", "/v1/tasks/my-task.1/approve", json.dumps({}).encode(), 400, "call_id"),
        ]
        for method, path, raw, want, field in cases:
            st, h, b = s.request(method, path, raw=raw, headers={"Content-Type": "application/json"})
            check(st == want, f"{method} {path} {raw!r:.60}: want {want}, got {st} {b}")
            if st == 413:
                continue  # the HTTP server's own answer
            check(isinstance(b, dict) and "error" in b and b["error"]["message"], f"{method} {path}: error body {b}")
            if field:
                check(b["error"].get("field") == field, f"{method} {path}: field {b['error']} != {field}")
            if st == 405:
                check("Allow" in h, f"405 without Allow: {h}")
            text = json.dumps(b)
            check("Traceback" not in text and " at 0x" not in text, f"stack trace in {text}")
        after = s.request("GET", "/v1/tasks?limit=500")[2]["tasks"]
        check([x["id"] for x in after] == [x["id"] for x in before], "a bad request changed the tasks")

        # The views.
        st, _, agents = s.request("GET", "/v1/agents")
        check(st == 200 and sorted(a["name"] for a in agents["agents"]) == ["other", "support"], f"agents: {agents}")
        st, _, models = s.request("GET", "/v1/models")
        check(st == 200 and models["models"][0]["name"] == "sim-a" and
              models["models"][0]["routes"][0]["breaker"] == "closed", f"models: {models}")
        st, _, sup = s.request("GET", "/v1/supervision")
        check(st == 200 and sup["root"]["alive"] and len(sup["root"]["children"]) == 1, f"supervision: {sup}")

        # The metrics page: the figures of what happened above, in a format promtool accepts.
        st, h, page = s.request("GET", "/metrics")
        check(st == 200 and h.get("Content-Type", "").startswith("text/plain; version=0.0.4"), f"metrics: {st} {h}")
        check(metric(page, "nines_tasks_total", agent="support", outcome="succeeded") == 1, "tasks_total support")
        check(metric(page, "nines_tasks_total", agent="other", outcome="succeeded") == 1, "tasks_total other")
        check(metric(page, "nines_workflows", status="completed") == 2, "workflows completed")
        check(metric(page, "nines_http_requests_total", route="/v1/tasks", method="POST", code="400") >= 8,
              "400s counted")
        check(metric(page, "nines_http_requests_total", route="unmatched", method="GET", code="404") == 1,
              "unmatched route counted once")
        check(metric(page, "gen_ai_client_token_usage_count", gen_ai_request_model="sim-1",
                     gen_ai_token_type="input") >= 3, "token usage histogram")
        check(metric(page, "process_resident_memory_bytes") > 0, "resident memory")
        if shutil.which("promtool"):
            lint = subprocess.run(["promtool", "check", "metrics"], input=page, capture_output=True, text=True)
            check(lint.returncode == 0, f"promtool check metrics: {lint.stdout}{lint.stderr}")
    finally:
        e.close()


def test_idempotent_submission_under_concurrent_duplicates():
    e = Env(latency_ms=200)
    try:
        s = e.service()
        results = []
        lock = threading.Lock()

        def submit():
            r = s.request("POST", "/v1/tasks", {"agent": "support", "input": "once"}, {"Idempotency-Key": "order-42"})
            with lock:
                results.append(r)

        threads = [threading.Thread(target=submit) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        statuses = sorted(r[0] for r in results)
        ids = {r[2]["id"] for r in results}
        check(statuses.count(201) == 1 and statuses.count(200) == 15, f"statuses: {statuses}")
        check(len(ids) == 1, f"ids: {ids}")
        task_id = ids.pop()
        check(s.wait_task(task_id)["status"] == "succeeded", "the task did not succeed")
        st, _, b = s.request("POST", "/v1/tasks", {"agent": "support", "input": "twice"}, {"Idempotency-Key": "order-42"})
        check(st == 409 and b["error"]["code"] == "conflict", f"other body, same key: {st} {b}")
        st, _, b = s.request("POST", "/v1/tasks", {"agent": "support", "input": "once"}, {"Idempotency-Key": "order-42"})
        check(st == 200 and b["id"] == task_id and b["status"] == "succeeded", f"same body, same key later: {st} {b}")
        all_tasks = s.request("GET", "/v1/tasks")[2]["tasks"]
        check(len(all_tasks) == 1, f"tasks: {len(all_tasks)}")
        check(e.ledger.tasks_charged() == {task_id: 1}, f"charged: {e.ledger.tasks_charged()}")
    finally:
        e.close()


def read_sse(s, path, headers=None, max_events=100, timeout=30):
    req = urllib.request.Request(s.url + path, headers=headers or {})
    events = []
    with urllib.request.urlopen(req, timeout=timeout) as r:
        check(r.headers.get("Content-Type", "").startswith("text/event-stream"), f"content type {r.headers}")
        ev = {}
        for raw in r:
            line = raw.decode().rstrip("\r\n")
            if line == "":
                if "data" in ev:
                    events.append(ev)
                    if len(events) >= max_events:
                        break
                ev = {}
                continue
            if line.startswith(":"):
                continue
            k, _, v = line.partition(":")
            ev[k] = v[1:] if v.startswith(" ") else v
    return events


def test_sse_events_and_resume():
    e = Env(latency_ms=300)
    try:
        s = e.service()
        st, _, t = s.request("POST", "/v1/tasks", {"agent": "support", "input": "stream me"})
        check(st == 201, f"POST: {st}")
        first = read_sse(s, f"/v1/tasks/{t['id']}/events", max_events=2)
        check([x["event"] for x in first] == ["task_started", "step_started"], f"first events: {first}")
        rest = read_sse(s, f"/v1/tasks/{t['id']}/events", headers={"Last-Event-ID": first[-1]["id"]})
        types = [x["event"] for x in rest]
        check(types[0] == "step_finished" and types[-1] == "task_finished", f"resumed events: {types}")
        check("tool_call" in types and "tool_result" in types, f"tool events: {types}")
        check(json.loads(rest[-1]["data"])["detail"] == "succeeded", f"last: {rest[-1]}")
        ids = [int(x["id"].split(".")[1]) for x in first + rest]
        check(ids == sorted(ids) and len(set(ids)) == len(ids), f"ids not increasing: {ids}")
        # The whole stream again, without Last-Event-ID: every held event, ending at task_finished.
        again = read_sse(s, f"/v1/tasks/{t['id']}/events")
        check([x["id"] for x in again] == [x["id"] for x in first + rest], "replay differs")
        # After a restart: one task_finished built from the record.
        check(s.terminate() == 0, "SIGTERM exit status")
        s2 = e.service()
        replay = read_sse(s2, f"/v1/tasks/{t['id']}/events", headers={"Last-Event-ID": rest[-1]["id"]})
        check([x["event"] for x in replay] == ["task_finished"], f"after restart: {replay}")
        check(json.loads(replay[0]["data"])["detail"] == "succeeded", f"after restart: {replay}")
    finally:
        e.close()


def test_auth():
    e = Env(extra_server="  auth:\n    tokens:\n      - {env: E2E_OPERATOR_TOKEN, scope: operator}\n"
                         "      - {file: read-token, scope: read}\n")
    try:
        with open(os.path.join(e.dir, "read-token"), "w") as f:
            f.write("reader-secret-123\n")
        s = e.service(env={"E2E_OPERATOR_TOKEN": "operator-secret-456"})
        op = {"Authorization": "Bearer operator-secret-456"}
        rd = {"Authorization": "Bearer reader-secret-123"}
        check(s.request("GET", "/healthz")[0] == 200, "healthz needs no token")
        check(s.request("GET", "/readyz")[0] == 200, "readyz needs no token")
        st, h, b = s.request("GET", "/v1/tasks")
        check(st == 401 and h.get("WWW-Authenticate") == "Bearer", f"no token: {st} {h}")
        check(s.request("GET", "/v1/tasks", headers={"Authorization": "Bearer wrong"})[0] == 401, "wrong token")
        check(s.request("GET", "/v1/tasks", headers={"Authorization": "Basic abc"})[0] == 401, "basic auth")
        check(s.request("GET", "/metrics")[0] == 401, "metrics without token")
        check(s.request("GET", "/v1/tasks", headers=rd)[0] == 200, "read token reads")
        st, _, b = s.request("POST", "/v1/tasks", {"agent": "other", "input": "x"}, rd)
        check(st == 403, f"read token submits: {st} {b}")
        st, _, t = s.request("POST", "/v1/tasks", {"agent": "other", "input": "x"}, op)
        check(st == 201, f"operator submits: {st} {t}")
        st, _, b = s.request("POST", f"/v1/tasks/{t['id']}/cancel", None, rd)
        check(st == 403, f"read token cancels: {st}")
        text = "\n".join(s.stderr_lines)
        check("operator-secret-456" not in text and "reader-secret-123" not in text, "a token in the log")
    finally:
        e.close()
    # Not loopback and no token: refused at start.
    e = Env(extra_server="")
    try:
        cfg = os.path.join(e.dir, "nines.yaml")
        with open(cfg) as f:
            text = f.read()
        with open(cfg, "w") as f:
            f.write(text.replace("address: 127.0.0.1", "address: 0.0.0.0"))
        s = Service(e.dir)
        s.proc = subprocess.run([NINES, "serve", "-c", "nines.yaml", "--port", "0"], cwd=e.dir, capture_output=True,
                                text=True, timeout=30)
        check(s.proc.returncode == 1 and "token" in s.proc.stderr and "server.address" in s.proc.stderr,
              f"0.0.0.0 without tokens: "
              f"{s.proc.returncode} {s.proc.stderr}")
    finally:
        e.close()


def test_sigterm_drains_and_the_next_start_resumes():
    turns = """
        - tool_calls: [{name: charge, arguments: {account: a, cents: 1}}]
        - tool_calls: [{name: charge, arguments: {account: b, cents: 2}}]
        - tool_calls: [{name: charge, arguments: {account: c, cents: 3}}]
        - answer: charged three times"""
    e = Env(latency_ms=400, turns=turns)
    try:
        s = e.service()
        ids = []
        for i in range(8):
            st, _, t = s.request("POST", "/v1/tasks", {"agent": "support", "input": f"task {i}"})
            check(st == 201, f"POST {i}: {st} {t}")
            ids.append(t["id"])
        time.sleep(0.6)  # the first turns are in flight
        t0 = time.time()
        s.proc.send_signal(signal.SIGTERM)
        # Readiness goes false and new tasks are refused while it drains.
        saw_503 = False
        while s.proc.poll() is None and time.time() - t0 < 15:
            try:
                st, _, b = s.request("POST", "/v1/tasks", {"agent": "support", "input": "late"}, timeout=2)
                if st == 503:
                    saw_503 = True
            except Exception:
                pass
            time.sleep(0.05)
        code = s.proc.wait(20)
        check(code == 0, f"exit status after SIGTERM: {code}\n{s.log()}")
        check(time.time() - t0 < 12, "shutdown took longer than the grace period")
        check(any("tasks left running" in l for l in s.stderr_lines), "no shutdown report")
        left = [int(m.group(1)) for l in s.stderr_lines for m in [re.search(r"stopped \((\d+) tasks left", l)] if m]
        check(left == [0], f"every task reached a checkpoint within the grace period: {left}")
        s2 = e.service()
        resumed = 0
        for task_id in ids:
            t = s2.wait_task(task_id)
            check(t["status"] == "succeeded", f"{task_id}: {t}")
            resumed += t["outcome"]["restarts"] >= 1
        check(resumed > 0, "no task was stopped by the drain and resumed (the SIGTERM came too late?)")
        charged = e.ledger.tasks_charged()
        check(all(charged.get(i) == 3 for i in ids), f"each task charges three accounts once: {charged}")
        check(sum(e.ledger.applied.values()) == len(e.ledger.applied), "an effect applied twice")
        _ = saw_503  # may be missed when the drain is quick; the exit status and resume are the contract
    finally:
        e.close()


def test_kill9_loses_nothing_and_duplicates_nothing():
    turns = """
        - tool_calls: [{name: charge, arguments: {account: a, cents: 1}}]
        - tool_calls: [{name: charge, arguments: {account: b, cents: 2}}]
        - answer: done"""
    e = Env(latency_ms=150, turns=turns)
    try:
        s = e.service()
        ids = []
        for i in range(20):
            st, _, t = s.request("POST", "/v1/tasks", {"agent": "support", "input": f"task {i}"})
            check(st == 201, f"POST {i}: {st}")
            ids.append(t["id"])
        time.sleep(0.4)
        s.kill9()
        s2 = e.service()
        for task_id in ids:
            t = s2.wait_task(task_id)
            check(t["status"] == "succeeded", f"{task_id}: {t}")
        charged = e.ledger.tasks_charged()
        check(all(charged.get(i) == 2 for i in ids), f"each task charges two accounts once: {charged}")
        check(max(e.ledger.applied.values()) == 1, "an effect applied twice")
    finally:
        e.close()


def test_unsafe_tool_cut_by_kill9_waits_for_the_operator():
    e = Env(unsafe=True)
    try:
        e.ledger.hold_seconds = 30
        s = e.service()
        st, _, t = s.request("POST", "/v1/tasks", {"agent": "support", "input": "charge once"})
        check(st == 201, f"POST: {st}")
        check(e.ledger.received.wait(20), "the charge never reached the ledger")
        s.kill9()  # the charge was sent; its answer never recorded
        e.ledger.hold_seconds = 0
        s2 = e.service()
        t = s2.wait_task(t["id"])
        check(t["status"] == "needs_attention", f"after kill -9 mid-call: {t}")
        pending = t.get("pending_effects", [])
        check(len(pending) == 1 and pending[0]["nature"] == "unsafe" and
              pending[0]["arguments"] == {"account": "acct-1", "cents": 100}, f"pending effects: {pending}")
        check(sum(e.ledger.applied.values()) == 1, "the unsafe charge ran again by itself")
        st, _, b = s2.request("POST", f"/v1/tasks/{t['id']}/resolve",
                              {"effect_id": pending[0]["effect_id"], "applied": True, "outcome": '{"ok":true}'})
        check(st == 200, f"resolve: {st} {b}")
        done = s2.wait_task(t["id"], statuses=("succeeded", "failed"))
        check(done["status"] == "succeeded", f"after resolve: {done}")
        check(sum(e.ledger.applied.values()) == 1 and sum(e.ledger.requests.values()) == 1,
              f"ledger after resolve: {e.ledger.requests}")
    finally:
        e.close()


def test_cancel_a_running_task():
    e = Env(latency_ms=5000)
    try:
        s = e.service()
        st, _, t = s.request("POST", "/v1/tasks", {"agent": "support", "input": "slow"})
        time.sleep(0.3)
        st, _, b = s.request("POST", f"/v1/tasks/{t['id']}/cancel")
        check(st == 202, f"cancel: {st} {b}")
        done = s.wait_task(t["id"], timeout=10)
        check(done["status"] == "cancelled", f"after cancel: {done}")
        check(e.ledger.tasks_charged() == {}, "a cancelled task charged")
        st, _, b = s.request("POST", f"/v1/tasks/{t['id']}/cancel")
        check(st == 200 and b["status"] == "cancelled", f"cancel again: {st} {b}")
    finally:
        e.close()


def test_readiness_with_every_breaker_open():
    faults = "      faults: {unavailable: {probability: 1.0}}"
    e = Env(model_faults=faults)
    try:
        s = e.service()
        check(s.request("GET", "/readyz")[0] == 200, "ready at start")
        for i in range(4):  # each call fails: the breaker (minimum 4 calls, 50%) opens
            st, _, t = s.request("POST", "/v1/tasks", {"agent": "other", "input": f"x{i}"})
            check(st == 201, f"POST {i}: {st}")
        deadline = time.time() + 30
        st, body = 200, None
        while time.time() < deadline:
            st, _, body = s.request("GET", "/readyz")
            if st == 503:
                break
            time.sleep(0.1)
        check(st == 503 and body["ready"] is False, f"readyz with the breaker open: {st} {body}")
        check("breaker" in body["checks"]["agents"]["other"], f"checks: {body}")
        check(s.request("GET", "/healthz")[0] == 200, "liveness must not depend on the models")
        st, _, models = s.request("GET", "/v1/models")
        check(any(r["breaker"] == "open" and r["degraded_since"] for r in models["models"][0]["routes"]),
              f"models: {models}")
    finally:
        e.close()


def test_hot_reload_valid_invalid_half_written_deleted():
    turns = """
        - tool_calls: [{name: charge, arguments: {account: a, cents: 1}}]
        - tool_calls: [{name: charge, arguments: {account: b, cents: 2}}]
        - answer: old answer"""
    e = Env(latency_ms=600, turns=turns)
    cfg = os.path.join(e.dir, "nines.yaml")
    try:
        s = e.service()

        def reloads(kind):
            return sum(1 for l in s.stderr_lines if f'"event":"{kind}"' in l)

        def wait_log(kind, n, timeout=10):
            deadline = time.time() + timeout
            while time.time() < deadline:
                if reloads(kind) >= n:
                    return
                time.sleep(0.05)
            raise Failure(f"no {kind} #{n} in the log:\n{s.log()}")

        # A task in flight when the config changes switches at its next model turn.
        st, _, running = s.request("POST", "/v1/tasks", {"agent": "support", "input": "in flight"})
        check(st == 201, f"POST: {st}")
        time.sleep(0.3)
        new_turns = turns.replace("old answer", "new answer")
        with open(cfg, "w") as f:
            f.write(config_text(e.ledger.port, latency_ms=100, turns=new_turns).replace(
                "  other:\n", "  added:\n    models: [sim-a]\n    system_prompt: Added by a reload.\n  other:\n"))
        wait_log("config_reloaded", 1)
        t = s.wait_task(running["id"])
        check(t["status"] == "succeeded" and t["outcome"]["answer"] == "new answer",
              f"the running task finishes on the new config: {t}")
        st, _, t2 = s.request("POST", "/v1/tasks", {"agent": "added", "input": "hi"})
        check(st == 201, f"an agent added by the reload takes tasks: {st} {t2}")
        check(s.wait_task(t2["id"])["status"] == "succeeded", "the added agent's task")
        agents = sorted(a["name"] for a in s.request("GET", "/v1/agents")[2]["agents"])
        check(agents == ["added", "other", "support"], f"agents after the reload: {agents}")

        good = open(cfg).read()
        # Invalid: rejected whole, the old config keeps running.
        with open(cfg, "w") as f:
            f.write(good.replace("  added:\n    models: [sim-a]", "  added:\n    models: [sim-nope]"))
        wait_log("config_reload_rejected", 1)
        check(any("sim-nope" in l for l in s.stderr_lines), "the rejection names the error")
        # Half-written: rejected too.
        with open(cfg, "w") as f:
            f.write(good[: len(good) // 2 - 7])
        wait_log("config_reload_rejected", 2)
        # Deleted: rejected.
        os.remove(cfg)
        wait_log("config_reload_rejected", 3)
        st, _, t3 = s.request("POST", "/v1/tasks", {"agent": "added", "input": "still here"})
        check(st == 201 and s.wait_task(t3["id"])["outcome"]["answer"] == "new answer",
              f"the last good config still runs: {st} {t3}")
        # A change only a restart can make: rejected with the reason.
        with open(cfg, "w") as f:
            f.write(good.replace("path: nines.db", "path: other.db"))
        wait_log("config_reload_rejected", 4)
        check(any("store changed" in l for l in s.stderr_lines), f"store change reason:\n{s.log()}")
        # Removed agent: new tasks refused; SIGHUP reloads without a file change too.
        with open(cfg, "w") as f:
            f.write(good.replace("  added:\n    models: [sim-a]\n    system_prompt: Added by a reload.\n", ""))
        wait_log("config_reloaded", 2)
        st, _, b = s.request("POST", "/v1/tasks", {"agent": "added", "input": "gone"})
        check(st == 400 and b["error"]["field"] == "agent", f"a removed agent: {st} {b}")
        s.proc.send_signal(signal.SIGHUP)
        wait_log("config_reloaded", 3)
        check(s.request("GET", "/readyz")[0] == 200, "ready after the reloads")
        page = s.request("GET", "/metrics")[2]
        check(metric(page, "nines_config_reloads_total", result="ok") == 4, "reloads ok (the start and 3)")
        check(metric(page, "nines_config_reloads_total", result="rejected") == 4, "reloads rejected")
    finally:
        e.close()


def test_a_real_prometheus_scrapes_the_service():
    if not shutil.which("prometheus"):
        print("  (skipped: prometheus is not installed)")
        return
    e = Env()
    prom = None
    try:
        s = e.service()
        for i in range(3):
            st, _, t = s.request("POST", "/v1/tasks", {"agent": "support", "input": f"scrape {i}"})
            s.wait_task(t["id"])
        target = s.url.split("//", 1)[1]
        web = free_port()
        with open(os.path.join(e.dir, "prometheus.yml"), "w") as f:
            f.write(f"global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n"
                    f"rule_files: [{os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', '..', 'deploy', 'prometheus', 'alerts.yml')}]\n"
                    f"scrape_configs:\n  - job_name: nines\n    static_configs: [{{targets: ['{target}']}}]\n")
        prom = subprocess.Popen(["prometheus", "--config.file=" + os.path.join(e.dir, "prometheus.yml"),
                                 "--storage.tsdb.path=" + os.path.join(e.dir, "prom-data"),
                                 "--web.listen-address=127.0.0.1:%d" % web, "--log.level=warn"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        query = urllib.parse.quote('sum(nines_tasks_total{outcome="succeeded"})')
        value = None
        deadline = time.time() + 40
        while time.time() < deadline and value is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/v1/query?query={query}", timeout=2) as r:
                    data = json.loads(r.read())
                    if data["data"]["result"]:
                        value = float(data["data"]["result"][0]["value"][1])
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if value is None:
                time.sleep(0.5)
        check(value == 3, f"prometheus's query API: {value}")
        with urllib.request.urlopen(f"http://127.0.0.1:{web}/api/v1/targets", timeout=5) as r:
            targets = json.loads(r.read())["data"]["activeTargets"]
        check(targets and targets[0]["health"] == "up", f"targets: {targets}")
    finally:
        if prom:
            prom.terminate()
            prom.wait(10)
        e.close()


def test_repeated_kill9_at_random_moments():
    """Ten kill -9 at random moments while 30 tasks of three tool calls each run: every task
    ends succeeded, every charge is applied once."""
    import random
    turns = """
        - tool_calls: [{name: charge, arguments: {account: a, cents: 1}}]
        - tool_calls: [{name: charge, arguments: {account: b, cents: 2}}, {name: charge, arguments: {account: c, cents: 3}}]
        - answer: done"""
    e = Env(latency_ms=250, turns=turns)
    rng = random.Random(int(os.environ.get("E2E_SEED", "7")))
    try:
        s = e.service()
        ids = []
        for i in range(30):
            st, _, t = s.request("POST", "/v1/tasks", {"agent": "support", "input": f"task {i}"},
                                 {"Idempotency-Key": f"kill-{i}"})
            check(st in (200, 201), f"POST {i}: {st}")
            ids.append(t["id"])
        for k in range(10):
            time.sleep(rng.uniform(0.1, 0.4))
            s.kill9()
            s = e.service()
        resumed = 0
        for task_id in ids:
            t = s.wait_task(task_id, timeout=120)
            check(t["status"] == "succeeded", f"{task_id}: {t}")
            resumed += t["outcome"]["restarts"] >= 1
        check(resumed >= 5, f"only {resumed} tasks were cut by a kill and resumed: the kills came too late")
        charged = e.ledger.tasks_charged()
        check(all(charged.get(i) == 3 for i in ids), f"each task charges three accounts once: {charged}")
        check(max(e.ledger.applied.values()) == 1, "an effect applied twice")
    finally:
        e.close()


class Postgres:
    """A throwaway PostgreSQL server on a Unix socket in a temporary directory (as `nobody` when
    we are root: postgres refuses to run as root)."""

    def __init__(self):
        self.bin = os.environ.get("NINES_PG_BIN", "/usr/lib/postgresql/15/bin")
        self.dir = tempfile.mkdtemp(prefix="nines-e2e-pg-")
        if os.geteuid() == 0:
            os.chown(self.dir, 65534, 65534)
        self.run("initdb", "-D", self.dir + "/data", "-U", "nines", "-A", "trust", "-E", "UTF8", "--no-sync")
        self.start()
        self.url = f"host={self.dir} user=nines dbname=postgres"

    def run(self, tool, *args):
        cmd = [self.bin + "/" + tool, *args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "nobody", "--"] + cmd
        subprocess.run(cmd, cwd=self.dir, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def start(self):
        self.run("pg_ctl", "-D", self.dir + "/data", "-l", self.dir + "/server.log", "-w", "-t", "60", "-o",
                 f"-k {self.dir} -c listen_addresses=''", "start")

    def stop(self):
        self.run("pg_ctl", "-D", self.dir + "/data", "-m", "fast", "-w", "stop")

    def close(self):
        try:
            self.run("pg_ctl", "-D", self.dir + "/data", "-m", "immediate", "-w", "stop")
        except Exception:  # noqa: BLE001 - stopped already
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def test_probes_while_the_store_is_down_on_postgres():
    if not os.path.exists(os.environ.get("NINES_PG_BIN", "/usr/lib/postgresql/15/bin") + "/initdb"):
        print("  (skipped: postgresql is not installed)")
        return
    pg = Postgres()
    e = Env()
    try:
        cfg = os.path.join(e.dir, "nines.yaml")
        text = open(cfg).read().replace("sqlite: {path: nines.db, durability: synced}",
                                        f"postgres: {{url: '{pg.url}', connect_timeout: 2s}}")
        with open(cfg, "w") as f:
            f.write(text)
        s = e.service()
        st, _, t = s.request("POST", "/v1/tasks", {"agent": "support", "input": "on postgres"})
        check(st == 201 and s.wait_task(t["id"])["status"] == "succeeded", f"a task on postgres: {st} {t}")
        check(s.request("GET", "/readyz")[0] == 200, "ready on postgres")

        pg.stop()
        st, _, body = s.request("GET", "/readyz")
        check(st == 503 and body["checks"]["store"].startswith("unreachable"), f"readyz with the store down: {st} {body}")
        check(s.request("GET", "/healthz")[0] == 200, "liveness must not depend on the store")
        st, _, body = s.request("POST", "/v1/tasks", {"agent": "support", "input": "while down"})
        check(st == 503 and body["error"]["code"] == "unavailable", f"a submission while the store is down: {st} {body}")
        st, _, body = s.request("GET", "/v1/tasks/" + t["id"])
        check(st == 503, f"a read while the store is down: {st} {body}")

        pg.start()
        deadline = time.time() + 30
        while time.time() < deadline and s.request("GET", "/readyz")[0] != 200:
            time.sleep(0.2)
        check(s.request("GET", "/readyz")[0] == 200, "ready again once the store is back")
        st, _, t2 = s.request("POST", "/v1/tasks", {"agent": "support", "input": "after"})
        check(st == 201 and s.wait_task(t2["id"])["status"] == "succeeded", f"a task after the outage: {st} {t2}")
        listed = [x["input"] for x in s.request("GET", "/v1/tasks")[2]["tasks"]]
        check(sorted(listed) == ["after", "on postgres"], f"nothing from the failed submission: {listed}")
    finally:
        e.close()
        pg.close()


def test_nines_run_cli():
    """`nines run` against the real service: live events and the outcome (exit 0), a capped budget
    (exit 5, --json), and Ctrl-C (SIGINT) leaving the task running (exit 130)."""
    e = Env(latency_ms=300)
    try:
        s = e.service()
        env = dict(os.environ, NINES_URL=s.url)
        p = subprocess.run([NINES, "run", "support", "charge acct-1", "--id", "run-1", "--max-steps", "10"],
                           env=env, capture_output=True, text=True, timeout=60)
        check(p.returncode == 0, f"nines run: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
        for text in ("task run-1 submitted", "tool_call charge", "tool_result charge", "task_finished succeeded",
                     "answer      charged"):
            check(text in p.stdout, f"nines run: no {text!r} in:\n{p.stdout}")
        check(e.ledger.tasks_charged() == {"run-1": 1}, f"ledger: {e.ledger.applied}")
        p = subprocess.run([NINES, "run", "support", "capped", "--max-steps", "1", "--json"], env=env,
                           capture_output=True, text=True, timeout=60)
        check(p.returncode == 5 and json.loads(p.stdout)["status"] == "budget_exceeded",
              f"a capped run: exit {p.returncode}\n{p.stdout}\n{p.stderr}")
        proc = subprocess.Popen([NINES, "run", "support", "interrupted", "--id", "run-3"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = proc.stdout.readline()  # "task run-3 submitted": it follows now
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
        check(proc.returncode == 130 and "nines tasks events run-3 --follow" in err,
              f"SIGINT: exit {proc.returncode}\n{first}{out}\n{err}")
        check(s.wait_task("run-3")["status"] == "succeeded", "the interrupted run's task went on")
    finally:
        e.close()


def test_sigterm_after_quick_tasks_stops_at_once():
    """Tasks that end within microseconds leave nothing counted as running: SIGTERM stops the
    service at once, not after the grace period."""
    e = Env(turns="\n        - answer: quick")
    try:
        s = e.service()
        ids = []
        lock = threading.Lock()

        def submit(n):
            for i in range(n):
                task_id = s.request("POST", "/v1/tasks", {"agent": "other", "input": f"q{i}"})[2]["id"]
                with lock:
                    ids.append(task_id)

        threads = [threading.Thread(target=submit, args=(25,)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for task_id in ids:
            check(s.wait_task(task_id)["status"] == "succeeded", f"{task_id}")
        t0 = time.time()
        check(s.terminate() == 0, "exit status")
        check(time.time() - t0 < 5, f"SIGTERM took {time.time() - t0:.1f}s with no task running")
        check(any("stopped (0 tasks left running" in l for l in s.stderr_lines), f"report:\n{s.log()}")
    finally:
        e.close()


TESTS = [name for name in list(globals()) if name.startswith("test_")]


def main():
    global NINES
    if len(sys.argv) < 2:
        print(__doc__)
        return 2
    NINES = os.path.abspath(sys.argv[1])
    chosen = sys.argv[2:] or TESTS
    failed = []
    for name in chosen:
        t0 = time.time()
        try:
            globals()[name]()
            print(f"PASS {name} ({time.time() - t0:.1f}s)", flush=True)
        except Exception as ex:  # noqa: BLE001 - every failure is reported
            failed.append(name)
            detail = str(ex) if isinstance(ex, Failure) else traceback.format_exc()
            print(f"FAIL {name} ({time.time() - t0:.1f}s): {detail}", flush=True)
    print(f"{len(chosen) - len(failed)} of {len(chosen)} passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
