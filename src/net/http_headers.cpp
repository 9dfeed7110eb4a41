// HttpHeaders (nines/net/http_headers.hpp).
#include "nines/net/http_headers.hpp"

#include "net/http_util.hpp"

namespace nines::net {

using internal::iequals;

HttpHeaders::HttpHeaders(std::initializer_list<std::pair<std::string, std::string>> fields) {
  for (const auto& [n, v] : fields) fields_.push_back({n, v});
}

void HttpHeaders::add(std::string name, std::string value) { fields_.push_back({std::move(name), std::move(value)}); }

void HttpHeaders::set(std::string name, std::string value) {
  std::erase_if(fields_, [&](const Field& f) { return iequals(f.name, name); });
  add(std::move(name), std::move(value));
}

std::optional<std::string_view> HttpHeaders::get(std::string_view name) const {
  for (const auto& f : fields_) {
    if (iequals(f.name, name)) return std::string_view(f.value);
  }
  return std::nullopt;
}

std::vector<std::string_view> HttpHeaders::get_all(std::string_view name) const {
  std::vector<std::string_view> out;
  for (const auto& f : fields_) {
    if (iequals(f.name, name)) out.emplace_back(f.value);
  }
  return out;
}

}  // namespace nines::net
