%% runtime_bench -- Erlang/OTP peer of nines_runtime_bench.
%%
%% Measures four actor-runtime workloads and prints one JSON line per metric
%% on stdout, e.g.
%%   {"bench":"ping_pong","system":"erlang","metric":"round_trips_per_s","value":123.4,"unit":"1/s"}
%% Progress notes go to stderr.
%%
%% Workloads (positional args N R F W C, same order as the nines and CAF
%% binaries; defaults in parentheses):
%%   spawn_idle       spawn N (1000000) processes that block in `receive`.
%%                    "seconds" runs from the first spawn until every process
%%                    has started and is idle (each bumps an atomics counter
%%                    right before its receive). bytes_per_process is the
%%                    VmRSS delta (/proc/self/status) with all N alive, / N.
%%                    No pid list is kept while measuring (it would add
%%                    ~16 B/process); cleanup finds the processes through
%%                    erlang:processes() and their initial_call.
%%   ping_pong        two processes bounce a message R (1000000) round trips.
%%   fan_out          one process sends F (1000000) requests round-robin to W
%%                    (1000) workers without waiting (send all, then collect
%%                    the F replies); requests_per_s = F / elapsed. The
%%                    sender's queue is off_heap (see fan_out below).
%%   restart_latency  a real OTP supervisor (one_for_one, intensity
%%                    10000000 per 1 s) with one gen_server child; C (100000)
%%                    times: crash the child with a cast, wait for the
%%                    restarted child's {started, Pid}, gen_server:call it;
%%                    p50/p99 of that whole round in microseconds.
%%
%% Run (the module halts the VM itself, with status 1 on failure):
%%   erlc -o DIR runtime_bench.erl
%%   erl -noshell +P 5000000 -pa DIR -s runtime_bench main N R F W C
%% Timing uses erlang:monotonic_time/0.
%%
%% The module is also the supervisor callback module and the gen_server
%% child callback module: init/1 dispatches on its argument. Only the
%% gen_server behaviour is declared, because declaring both would make the
%% compiler warn about the shared init/1 callback.

-module(runtime_bench).
-behaviour(gen_server).

-export([main/0, main/1]).
-export([idle/1]).
-export([init/1, handle_call/3, handle_cast/2, handle_info/2]).

-define(DEFAULTS, [1000000, 1000000, 1000000, 1000, 100000]).

%% ---------------------------------------------------------------------------
%% Entry point
%% ---------------------------------------------------------------------------

main() -> main([]).

%% Args come as atoms from `-s` or as strings from `-eval`/`-run`.
main(Args) ->
    try
        [N, R, F, W, C] = parse_args(Args),
        %% Crash reports of the restart benchmark would flood the output.
        ok = logger:set_primary_config(level, none),
        note("erlang/OTP ~s, ~b schedulers, N=~b R=~b F=~b W=~b C=~b",
             [erlang:system_info(otp_release),
              erlang:system_info(schedulers_online), N, R, F, W, C]),
        in_fresh_process(fun() -> spawn_idle(N) end),
        in_fresh_process(fun() -> ping_pong(R) end),
        in_fresh_process(fun() -> fan_out(F, W) end),
        in_fresh_process(fun() -> restart_latency(C) end),
        erlang:halt(0)
    catch
        Class:Reason:Stack ->
            io:format(standard_error, "runtime_bench failed: ~p:~p~n~p~n",
                      [Class, Reason, Stack]),
            erlang:halt(1)
    end.

parse_args(Args) ->
    Given = [to_int(A) || A <- Args],
    case length(Given) =< 5 andalso lists:all(fun(X) -> X > 0 end, Given) of
        true -> Given ++ lists:nthtail(length(Given), ?DEFAULTS);
        false -> error({bad_args, Args, "expected up to 5 positive ints: N R F W C"})
    end.

to_int(A) when is_atom(A) -> list_to_integer(atom_to_list(A));
to_int(A) when is_list(A) -> list_to_integer(A);
to_int(A) when is_integer(A) -> A.

%% Run each benchmark in its own process: clean heap, empty mailbox.
in_fresh_process(Fun) ->
    {Pid, Ref} = spawn_monitor(fun() -> Fun() end),
    receive
        {'DOWN', Ref, process, Pid, normal} -> ok;
        {'DOWN', Ref, process, Pid, Reason} -> error({bench_failed, Reason})
    end.

%% ---------------------------------------------------------------------------
%% a. spawn_idle
%% ---------------------------------------------------------------------------

spawn_idle(N) ->
    Counter = atomics:new(1, []),
    BaseCount = erlang:system_info(process_count),
    erlang:garbage_collect(),
    RssBefore = rss_bytes(),
    T0 = erlang:monotonic_time(),
    spawn_idle_loop(N, Counter),
    wait_counter(Counter, N),
    T1 = erlang:monotonic_time(),
    RssAfter = rss_bytes(),
    Secs = seconds(T1 - T0),
    emit(spawn_idle, seconds, Secs, "s"),
    emit(spawn_idle, spawn_rate, N / Secs, "procs/s"),
    emit(spawn_idle, bytes_per_process, (RssAfter - RssBefore) / N, "B"),
    %% Kill them all and wait until they are gone.
    [exit(P, kill) || P <- erlang:processes(),
                      erlang:process_info(P, initial_call) =:=
                          {initial_call, {?MODULE, idle, 1}}],
    wait_process_count(BaseCount).

spawn_idle_loop(0, _Counter) -> ok;
spawn_idle_loop(K, Counter) ->
    spawn(?MODULE, idle, [Counter]),
    spawn_idle_loop(K - 1, Counter).

%% Body of an idle process: report "started", then block forever.
idle(Counter) ->
    atomics:add(Counter, 1, 1),
    receive stop -> ok end.

wait_counter(Counter, N) ->
    case atomics:get(Counter, 1) >= N of
        true -> ok;
        false -> receive after 1 -> wait_counter(Counter, N) end
    end.

wait_process_count(Target) ->
    case erlang:system_info(process_count) =< Target of
        true -> ok;
        false -> receive after 10 -> wait_process_count(Target) end
    end.

rss_bytes() ->
    {ok, Status} = file:read_file("/proc/self/status"),
    {match, [Kb]} = re:run(Status, "VmRSS:\\s+(\\d+)\\s+kB",
                           [{capture, all_but_first, list}]),
    list_to_integer(Kb) * 1024.

%% ---------------------------------------------------------------------------
%% b. ping_pong: this process pings, a second process pongs.
%% ---------------------------------------------------------------------------

ping_pong(R) ->
    Ponger = spawn(fun pong_loop/0),
    T0 = erlang:monotonic_time(),
    ping_loop(Ponger, R),
    T1 = erlang:monotonic_time(),
    exit(Ponger, kill),
    emit(ping_pong, round_trips_per_s, R / seconds(T1 - T0), "1/s").

ping_loop(_Ponger, 0) -> ok;
ping_loop(Ponger, K) ->
    Ponger ! {ping, self()},
    receive pong -> ping_loop(Ponger, K - 1) end.

pong_loop() ->
    receive {ping, From} -> From ! pong, pong_loop() end.

%% ---------------------------------------------------------------------------
%% c. fan_out: send all F requests round-robin over W workers, then collect
%%    all F replies (no window; the replies queue up in our mailbox).
%%
%% The sender uses message_queue_data=off_heap, the setting OTP documents for
%% processes that accumulate long queues. With the default (on_heap) every
%% GC of the sender walks its ever-growing queue of replies, which makes the
%% run quadratic: measured here 556k req/s at F=100k but 39k req/s at F=1M,
%% versus ~2M req/s with off_heap at both sizes.
%% ---------------------------------------------------------------------------

fan_out(F, W) ->
    process_flag(message_queue_data, off_heap),
    Workers = list_to_tuple([spawn(fun worker_loop/0) || _ <- lists:seq(1, W)]),
    T0 = erlang:monotonic_time(),
    send_requests(F, 0, W, Workers, self()),
    collect_replies(F),
    T1 = erlang:monotonic_time(),
    [exit(P, kill) || P <- tuple_to_list(Workers)],
    emit(fan_out, requests_per_s, F / seconds(T1 - T0), "1/s").

send_requests(0, _I, _W, _Workers, _Self) -> ok;
send_requests(K, I, W, Workers, Self) ->
    element(I + 1, Workers) ! {req, Self},
    send_requests(K - 1, (I + 1) rem W, W, Workers, Self).

collect_replies(0) -> ok;
collect_replies(K) -> receive reply -> collect_replies(K - 1) end.

worker_loop() ->
    receive {req, From} -> From ! reply, worker_loop() end.

%% ---------------------------------------------------------------------------
%% d. restart_latency: OTP supervisor + gen_server child.
%%
%% Note: supervisor:add_restart/3 keeps the timestamps of all restarts of
%% the last `period` (>= 1 s, second granularity) in a list and walks it on
%% every restart, so under this restart storm each restart costs
%% O(restarts in the last 1-2 s). That is genuine OTP supervisor behaviour
%% and is part of what this number measures. It dominates at full size: p50
%% was ~20 us at C=2000 but ~145 us at C=100000; with a diagnostic copy of
%% supervisor that keeps only the latest restart, p50 at C=100000 was ~7 us.
%% ---------------------------------------------------------------------------

restart_latency(C) ->
    {ok, Sup} = supervisor:start_link(?MODULE, {sup, self()}),
    Child0 = receive {started, P0} -> P0 end,
    Samples = restart_loop(C, Child0, []),
    unlink(Sup),
    exit(Sup, kill),
    Sorted = list_to_tuple(lists:sort(Samples)),
    emit(restart_latency, p50_us, percentile(Sorted, 0.50), "us"),
    emit(restart_latency, p99_us, percentile(Sorted, 0.99), "us").

restart_loop(0, _Child, Acc) -> Acc;
restart_loop(K, Child, Acc) ->
    T0 = erlang:monotonic_time(),
    gen_server:cast(Child, crash),
    NewChild = receive {started, P} -> P end,
    pong = gen_server:call(NewChild, ping, infinity),
    T1 = erlang:monotonic_time(),
    Us = erlang:convert_time_unit(T1 - T0, native, nanosecond) / 1000,
    restart_loop(K - 1, NewChild, [Us | Acc]).

%% Nearest-rank percentile over a sorted tuple.
percentile(Sorted, P) ->
    Len = tuple_size(Sorted),
    element(max(1, min(Len, ceil(P * Len))), Sorted).

%% Supervisor callback (arg {sup, Driver}) and gen_server callback
%% (arg {child, Driver}).
init({sup, Driver}) ->
    Flags = #{strategy => one_for_one, intensity => 10000000, period => 1},
    Child = #{id => child,
              start => {gen_server, start_link, [?MODULE, {child, Driver}, []]},
              restart => permanent,
              shutdown => brutal_kill,
              type => worker},
    {ok, {Flags, [Child]}};
init({child, Driver}) ->
    Driver ! {started, self()},
    {ok, Driver}.

handle_call(ping, _From, State) -> {reply, pong, State}.

handle_cast(crash, _State) -> erlang:error(crash).

handle_info(_Msg, State) -> {noreply, State}.

%% ---------------------------------------------------------------------------
%% Output helpers
%% ---------------------------------------------------------------------------

seconds(NativeDelta) ->
    erlang:convert_time_unit(NativeDelta, native, nanosecond) / 1.0e9.

emit(Bench, Metric, Value, Unit) ->
    io:format("{\"bench\":\"~s\",\"system\":\"erlang\",\"metric\":\"~s\","
              "\"value\":~s,\"unit\":\"~s\"}~n",
              [Bench, Metric, num(Value), Unit]).

num(V) when is_integer(V) -> integer_to_list(V);
num(V) when is_float(V) -> float_to_list(V, [{decimals, 3}, compact]).

note(Fmt, Args) ->
    io:format(standard_error, "[erlang] " ++ Fmt ++ "~n", Args).
