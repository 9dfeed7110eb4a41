// `nines serve`: the service in the foreground. The main thread loads the config, starts the
// service and then only waits for signals (blocked in every thread, read with sigtimedwait):
// SIGTERM and SIGINT shut down gracefully (server.shutdown_grace), SIGHUP asks for a reload.
#include "serve_cmd.hpp"

#include <signal.h>

#include <cerrno>
#include <cstdio>

#include "nines/core/environment.hpp"
#include "nines/core/log.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/service/config.hpp"
#include "nines/service/service.hpp"

namespace nines::cli {

int run_serve(const ServeCmdOptions& o) {
  // Signals first: the threads the environment and runtime start inherit the mask, so only
  // this thread ever takes them.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  service::ConfigResult loaded = service::load_config(o.config);
  if (!loaded.ok()) {
    for (const service::ConfigError& e : loaded.errors) std::fprintf(stderr, "%s\n", e.to_string().c_str());
    return loaded.unreadable ? 2 : 1;
  }
  const service::ServiceConfig& config = *loaded.config;
  auto env = make_real_environment({.log_level = config.logging.level, .log_format = config.logging.format});
  auto rt = Runtime::create(*env);
  if (!rt.ok()) {
    std::fprintf(stderr, "nines serve: %s\n", rt.error().to_string().c_str());
    return 1;
  }
  auto svc = service::Service::start(**rt, {.config_path = o.config, .port = o.port});
  if (!svc.ok()) {
    std::fprintf(stderr, "nines serve: %s\n", svc.error().to_string().c_str());
    return 1;
  }
  std::fprintf(stderr, "nines serve: listening on %s (config %s)\n", (*svc)->base_url().c_str(), o.config.c_str());
  std::fflush(stderr);
  for (;;) {
    siginfo_t info{};
    timespec wait{.tv_sec = 1, .tv_nsec = 0};
    const int sig = sigtimedwait(&set, &info, &wait);
    if (sig < 0) continue;  // EAGAIN (the second passed) or EINTR
    if (sig == SIGHUP) {
      Status s = (*svc)->reload();
      if (!s.ok()) {
        NINES_LOG(env->logger(), LogLevel::kError, "config_reload_rejected", "SIGHUP: the config was not reloaded",
                  {"error", s.error().to_string()});
      }
      continue;
    }
    break;  // SIGTERM, SIGINT
  }
  const Duration grace = (*svc)->config().server.shutdown_grace;
  std::fprintf(stderr, "nines serve: shutting down (grace %lld ms)\n",
               static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(grace).count()));
  const std::size_t left = (*svc)->shutdown(grace);
  std::fprintf(stderr, "nines serve: stopped (%zu tasks left running, resumed at the next start)\n", left);
  svc->reset();
  return 0;
}

}  // namespace nines::cli
