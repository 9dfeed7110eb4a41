// A real Prometheus server (Debian's `prometheus`) scrapes a ServiceMetrics page served by
// net::HttpServer on loopback, loads the shipped alert rules, and its query API then returns the
// figures. Skipped when the prometheus binary is not installed. Real environment, real time: it
// polls the query API (bounded) until the first scrape has landed.
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>

#include "agent/child_process.hpp"
#include "nines/net/http_client.hpp"
#include "nines/net/http_server.hpp"
#include "nines/runtime/runtime.hpp"
#include "nines/service/metrics.hpp"
#include "support/status_matchers.hpp"

namespace nines::service {
namespace {
using ::nines::test::IsOk;
using namespace std::chrono_literals;

bool on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return false;
  std::string dirs = path;
  for (std::size_t start = 0; start <= dirs.size();) {
    std::size_t end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    std::filesystem::path candidate = std::filesystem::path(dirs.substr(start, end - start)) / program;
    if (::access(candidate.c_str(), X_OK) == 0) return true;
    start = end + 1;
  }
  return false;
}

// A loopback port nothing listens on now (the kernel's choice; a small race until prometheus
// binds it, acceptable in a test).
std::uint16_t free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    if (fd >= 0) ::close(fd);
    return 0;
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

std::string url_encode(std::string_view s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '_' || c == '-' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

TEST(MetricsScrape, RealPrometheusScrapesThePageAndLoadsTheRules) {
  if (!on_path("prometheus")) GTEST_SKIP() << "prometheus is not installed (scripts/setup.sh installs it)";
  auto env = make_real_environment({.workers = 2});
  auto rt = Runtime::create(*env, {.workers = 2});
  ASSERT_THAT(rt, IsOk());

  ServiceMetrics metrics(*env);
  metrics.on_task_finished("support", {.status = agent::TaskStatus::kSucceeded, .wall_time = 2s});
  metrics.on_task_finished("support", {.status = agent::TaskStatus::kSucceeded, .wall_time = 3s});
  metrics.on_task_finished("support", {.status = agent::TaskStatus::kNeedsAttention, .wall_time = 1s});
  metrics.set_ready(true);
  metrics.attach_runtime(**rt);

  auto server = net::HttpServer::create(*env, {}, [&](net::HttpServerRequest&& req, net::HttpResponder r) {
    if (req.path() != "/metrics") {
      (void)r.respond(404, {}, "not found\n");
      return;
    }
    net::HttpHeaders h;
    h.add("Content-Type", std::string(ServiceMetrics::kContentType));
    (void)r.respond(200, std::move(h), metrics.render());
  });
  ASSERT_THAT(server, IsOk());

  const std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("nines_scrape_" + std::to_string(::getpid()));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir / "data");
  const std::uint16_t web_port = free_port();
  ASSERT_NE(web_port, 0);
  {
    std::ofstream config(dir / "prometheus.yml");
    config << "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
           << "rule_files:\n  - " << NINES_SOURCE_DIR << "/deploy/prometheus/alerts.yml\n"
           << "scrape_configs:\n  - job_name: nines\n    metrics_path: /metrics\n"
           << "    static_configs:\n      - targets: ['127.0.0.1:" << (*server)->port() << "']\n";
  }

  auto client = net::HttpClient::create(*env);
  ASSERT_THAT(client, IsOk());
  const std::string api = "http://127.0.0.1:" + std::to_string(web_port) + "/api/v1/";
  std::optional<double> succeeded;
  std::optional<double> up;
  std::string rules;
  std::string failure;
  auto run = (*rt)->spawn_watched([&](Context& ctx) -> Task<> {
    agent::internal::ChildOptions o{
        .argv = {"prometheus", "--config.file=" + (dir / "prometheus.yml").string(),
                 "--storage.tsdb.path=" + (dir / "data").string(),
                 "--web.listen-address=127.0.0.1:" + std::to_string(web_port), "--log.level=warn"},
        .name = "prometheus"};
    o.limits.address_space_bytes = 0;  // Go reserves address space freely
    auto child = co_await agent::internal::ChildProcess::spawn(ctx, o);
    if (!child.ok()) {
      failure = child.error().to_string();
      co_return;
    }
    std::shared_ptr<agent::internal::ChildProcess> prom = *child;
    // Drain its stderr (its log) so that it never blocks on a full pipe.
    (void)ctx.spawn([prom](Context& c) -> Task<> {
      while (co_await prom->read_stderr_line(c)) {
      }
    });
    // Poll until the first scrape is queryable: at most 90 s on a loaded machine.
    auto query = [&](std::string q) -> Task<std::optional<double>> {
      net::HttpRequest req{.url = api + "query?query=" + url_encode(q)};
      Result<net::HttpResponse> resp = co_await (*client)->request(ctx, std::move(req));
      if (!resp.ok() || resp->status != 200) co_return std::nullopt;
      auto j = nlohmann::json::parse(resp->body, nullptr, false);
      if (j.is_discarded() || j["data"]["result"].empty()) co_return std::nullopt;
      co_return std::stod(j["data"]["result"][0]["value"][1].get<std::string>());
    };
    for (int i = 0; i < 180 && !succeeded; ++i) {
      std::string q = R"(nines_tasks_total{job="nines",agent="support",outcome="succeeded"})";
      succeeded = co_await query(q);
      if (!succeeded) (void)co_await ctx.sleep(500ms);
    }
    std::string q = R"(up{job="nines"})";
    up = co_await query(q);
    net::HttpRequest req{.url = api + "rules"};
    Result<net::HttpResponse> resp = co_await (*client)->request(ctx, std::move(req));
    if (resp.ok()) rules = resp->body;
    if (!succeeded) failure = "no scrape landed; prometheus said: " + prom->stderr_tail();
    prom->kill();
    (void)co_await prom->wait_exit(ctx, 10s);
  });
  ASSERT_THAT(run, IsOk());
  EXPECT_TRUE(run->exit->wait().is_normal());
  EXPECT_EQ(failure, "");
  EXPECT_THAT(succeeded, ::testing::Optional(2.0));
  EXPECT_THAT(up, ::testing::Optional(1.0));
  EXPECT_THAT(rules, ::testing::HasSubstr("NinesRestartStorm"));
  EXPECT_THAT(rules, ::testing::HasSubstr("NinesTasksNeedAttention"));

  metrics.detach_runtime();
  client->reset();
  (*server)->stop();
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace nines::service
