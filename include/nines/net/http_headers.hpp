// nines/net/http_headers.hpp: HTTP header fields, shared by the client (http_client.hpp) and
// the server (http_server.hpp).
//
// Fields keep the order in which they were given or received; names compare
// case-insensitively (RFC 9110 5.1). A value type: no validation here (the client and the
// server check names and values where they cross the wire).
//
// Thread-safety: a value; distinct objects may be used from any thread.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace nines::net {

// Header fields in the order given or received; names compare case-insensitively.
class HttpHeaders {
 public:
  struct Field {
    std::string name;
    std::string value;
  };

  HttpHeaders() = default;
  HttpHeaders(std::initializer_list<std::pair<std::string, std::string>> fields);

  void add(std::string name, std::string value);
  // Replaces every field named `name` (case-insensitively) by one.
  void set(std::string name, std::string value);
  // The first value of the field `name`, compared case-insensitively; nullopt if absent.
  std::optional<std::string_view> get(std::string_view name) const;
  std::vector<std::string_view> get_all(std::string_view name) const;
  bool contains(std::string_view name) const { return get(name).has_value(); }

  const std::vector<Field>& fields() const { return fields_; }
  std::size_t size() const { return fields_.size(); }
  bool empty() const { return fields_.empty(); }
  void clear() { fields_.clear(); }

 private:
  std::vector<Field> fields_;
};

}  // namespace nines::net
