// A supervised process, in a program of your own (README.md, "Use nines in your program").
// An echo worker under a one_for_one supervisor crashes on "crash"; the supervisor restarts it
// and the caller's next request is answered by the new incarnation. Exits 0 when it was.
#include <chrono>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>

#include "nines/runtime/runtime.hpp"
#include "nines/runtime/supervisor.hpp"

using namespace std::chrono_literals;

// [readme:supervised]
nines::Task<> echo(nines::Context& ctx) {
  for (;;) {
    nines::Message m = co_await ctx.receive();
    const std::string* text = m.get<std::string>();
    if (text && *text == "crash") throw std::runtime_error("asked to crash");  // crashes this process only
    if (m.is_call() && text) ctx.reply(m, "echo: " + *text);
  }
}

int main() {
  auto env = nines::make_real_environment();
  auto rt = nines::Runtime::create(*env).value();
  nines::SupervisorSpec spec{.name = "workers", .strategy = nines::Strategy::kOneForOne, .intensity = 3, .period = 5s};
  spec.children.push_back(nines::ChildSpec::worker("echo", echo, {.name = "echo"}));
  nines::Pid sup = nines::start_supervisor(*rt, spec).value();

  static constexpr const char* kRequests[] = {"hello", "crash", "again"};
  int answered = 0;
  auto client = rt->spawn_watched([&](nines::Context& ctx) -> nines::Task<> {
    for (std::string text : kRequests) {
      std::optional<nines::Pid> worker = ctx.whereis("echo");
      if (!worker) co_return;
      nines::Result<nines::Message> reply = co_await ctx.call(*worker, text, 1s);
      if (reply.ok()) {
        std::printf("%s\n", reply->get<std::string>()->c_str());
        ++answered;
      } else {
        std::printf("%s: %s\n", text.c_str(), reply.error().to_string().c_str());  // the crash
        (void)co_await ctx.sleep(10ms);  // the supervisor restarts echo meanwhile
      }
    }
  });
  client.value().exit->wait();
  rt->send_exit(sup, nines::ExitReason::shutdown());
  return answered == 2 ? 0 : 1;
}
// [readme:end]
