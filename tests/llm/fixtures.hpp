// Test helpers for the llm layer: loading fixtures (tests/llm/fixtures/README.md).
#pragma once

#include <fstream>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>

#include "nines/llm/message.hpp"

namespace nines::llm {

// Readable failures for tool calls.
inline void PrintTo(const ToolCall& c, std::ostream* os) {
  *os << "ToolCall{id=" << c.id << ", name=" << c.name << ", arguments=" << c.arguments_json << "}";
}

}  // namespace nines::llm

namespace nines::llm::test {

inline std::string fixture(std::string_view name) {
  std::string path = std::string(NINES_LLM_FIXTURES) + "/" + std::string(name);
  std::ifstream in(path, std::ios::binary);
  if (!in) ADD_FAILURE() << "missing fixture " << path;
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

struct Event {
  std::string name;
  std::string data;
};

// Splits a .sse fixture into events. Only what the fixtures use: one `event:` and one
// `data:` line per event, a blank line after each. (Parsing real SSE is the net layer's.)
inline std::vector<Event> fixture_events(std::string_view name) {
  std::vector<Event> events;
  std::istringstream in(fixture(name));
  std::string line;
  Event e;
  bool any = false;
  while (std::getline(in, line)) {
    if (line.empty()) {
      if (any) events.push_back(e);
      e = {};
      any = false;
    } else if (line.rfind("event: ", 0) == 0) {
      e.name = line.substr(7);
      any = true;
    } else if (line.rfind("data: ", 0) == 0) {
      e.data = line.substr(6);
      any = true;
    }
  }
  if (any) events.push_back(e);
  return events;
}

}  // namespace nines::llm::test
