// nines/nines.hpp: every public header of nines in one include, for programs that would rather
// not pick. Parts a build left out (NINES_WITH_* options, see nines/features.hpp) are skipped.
// One concept per header remains the rule inside nines; include the narrow headers where compile
// time matters.
#pragma once

#include "nines/features.hpp"
#include "nines/version.hpp"

#include "nines/core/check.hpp"
#include "nines/core/environment.hpp"
#include "nines/core/fault.hpp"
#include "nines/core/log.hpp"
#include "nines/core/percentile.hpp"
#include "nines/core/result.hpp"
#include "nines/core/striped_counters.hpp"
#include "nines/core/time.hpp"
#include "nines/resilience/backoff.hpp"
#include "nines/resilience/bulkhead.hpp"
#include "nines/resilience/circuit_breaker.hpp"
#include "nines/resilience/classify.hpp"
#include "nines/resilience/fallback.hpp"
#include "nines/resilience/hedging.hpp"
#include "nines/resilience/pipeline.hpp"
#include "nines/resilience/rate_limiter.hpp"
#include "nines/resilience/retry.hpp"
#include "nines/resilience/retry_budget.hpp"
#include "nines/runtime/events.hpp"
#include "nines/runtime/exit_reason.hpp"
#include "nines/runtime/message.hpp"
#include "nines/runtime/pid.hpp"
#include "nines/runtime/process.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/runtime/supervisor.hpp"
#include "nines/runtime/task.hpp"
#include "nines/store/group_commit.hpp"
#include "nines/store/memory_store.hpp"
#if NINES_HAS_POSTGRES
#include "nines/store/postgres_store.hpp"
#endif
#if NINES_HAS_SQLITE
#include "nines/store/sqlite_store.hpp"
#endif
#include "nines/store/store.hpp"
#include "nines/workflow/codec.hpp"
#include "nines/workflow/workflow.hpp"
#if NINES_HAS_NET
#include "nines/net/http_client.hpp"
#include "nines/net/http_headers.hpp"
#include "nines/net/http_server.hpp"
#include "nines/net/sse.hpp"
#endif
#if NINES_HAS_LLM
#include "nines/agent/agent.hpp"
#include "nines/agent/always_on.hpp"
#include "nines/agent/delegate.hpp"
#include "nines/agent/http_tool.hpp"
#include "nines/agent/mcp.hpp"
#include "nines/agent/registry.hpp"
#include "nines/agent/tool.hpp"
#include "nines/agent/validation.hpp"
#include "nines/llm/anthropic.hpp"
#include "nines/llm/client.hpp"
#include "nines/llm/codec.hpp"
#include "nines/llm/context.hpp"
#include "nines/llm/errors.hpp"
#include "nines/llm/message.hpp"
#include "nines/llm/model.hpp"
#include "nines/llm/openai.hpp"
#include "nines/llm/provider.hpp"
#include "nines/llm/router.hpp"
#include "nines/llm/sim.hpp"
#include "nines/llm/sim_server.hpp"
#include "nines/llm/tokens.hpp"
#include "nines/llm/wire.hpp"
#include "nines/service/config.hpp"
#include "nines/service/metrics.hpp"
#include "nines/service/service.hpp"
#endif
