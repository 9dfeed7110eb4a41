// The HTTP client's fault points (core/fault.hpp): http_reset (HttpCore::write_cb) and
// http_stall (HttpCore::on_socket_ready), on the SimEnvironment driven by the test, against a
// real server on a thread of its own. The server's timing is real, so how often a stall
// fires over a whole request depends on how its bytes arrive; with probability 1 and 0 the
// outcome does not.
#include <gtest/gtest.h>

#include <optional>

#include "net/test_server.hpp"
#include "nines/net/http_client.hpp"
#include "nines/runtime/runtime.hpp"

namespace nines::net {
namespace {

using test::pause_ms;
using test::TestServer;

struct Rig {
  Rig() : real(make_real_environment({.workers = 1, .seed = 9})), server(*real), sim(42) {
    rt = Runtime::create(sim).value();
    client = HttpClient::create(sim, {.proxy = ""}).value();
  }
  ~Rig() {
    client.reset();
    rt.reset();
  }
  // GET `path`; drives the runtime (and virtual time, 5 ms a turn) until it ends.
  Result<HttpResponse> get(const std::string& path) {
    std::optional<Result<HttpResponse>> got;
    rt->spawn([&](Context& ctx) -> Task<> {
        HttpRequest req;
        req.url = server.url(path);
        got.emplace(co_await client->request(ctx, std::move(req)));
      }).value();
    for (int i = 0; i < 4000 && !got; ++i) {
      rt->advance(std::chrono::milliseconds(5));
      if (!got) pause_ms(1);
    }
    if (!got) return Error(ErrorKind::kInternal, "the request did not end");
    return std::move(*got);
  }

  std::unique_ptr<Environment> real;
  TestServer server;
  SimEnvironment sim;
  std::unique_ptr<Runtime> rt;
  std::unique_ptr<HttpClient> client;
};

TEST(HttpFaultPoints, AResetEndsTheTransferAsTransient) {
  Rig rig;
  rig.sim.set_faults(FaultOptions{}.set(FaultPoint::kHttpReset, 1.0));
  Result<HttpResponse> r = rig.get("/hello");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind(), ErrorKind::kTransient) << r.error().to_string();
  EXPECT_NE(r.error().message().find("connection reset"), std::string::npos) << r.error().to_string();
  EXPECT_EQ(rig.sim.fault_count(FaultPoint::kHttpReset), 1u);

  rig.sim.set_faults({});
  r = rig.get("/hello");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(r->body, "hello");
  EXPECT_EQ(rig.sim.fault_count(FaultPoint::kHttpReset), 1u);
}

// Every readiness is held back once (a stall is not drawn again when it ends): the transfer
// still completes, on the virtual clock the test moves.
TEST(HttpFaultPoints, AStalledTransferStillCompletes) {
  Rig rig;
  FaultOptions o = FaultOptions{}.set(FaultPoint::kHttpStall, 1.0);
  o.max_delay = std::chrono::milliseconds(200);
  rig.sim.set_faults(o);
  Result<HttpResponse> r = rig.get("/hello");
  ASSERT_TRUE(r.ok()) << r.error().to_string();  // late, but whole
  EXPECT_EQ(r->body, "hello");
  EXPECT_GE(rig.sim.fault_count(FaultPoint::kHttpStall), 1u);

  rig.sim.set_faults({});
  const std::uint64_t stalls = rig.sim.fault_count(FaultPoint::kHttpStall);
  r = rig.get("/hello");
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_EQ(rig.sim.fault_count(FaultPoint::kHttpStall), stalls);
}

}  // namespace
}  // namespace nines::net
