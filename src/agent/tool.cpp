// Tools (agent/tool.hpp): the spec's checks and native tools.
#include "nines/agent/tool.hpp"

#include <utility>

#include "nines/agent/validation.hpp"

namespace nines::agent {

Task<Result<std::optional<std::string>>> Tool::check(Context& /*ctx*/, const ToolInvocation& /*invocation*/) {
  co_return Error(ErrorKind::kPermanent, "tool '" + spec().name + "' cannot say whether a call was applied (no check)");
}

Status validate_tool_spec(const ToolSpec& spec) {
  auto bad = [&](const std::string& what) {
    return Error(ErrorKind::kInvalidArgument, "tool '" + spec.name.substr(0, 64) + "': " + what);
  };
  if (spec.name.empty() || spec.name.size() > 64) return bad("name must be 1 to 64 characters");
  for (char c : spec.name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (!ok) return bad("name may hold only letters, digits, '_' and '-'");
  }
  if (spec.timeout <= Duration::zero()) return bad("timeout must be > 0");
  if (spec.fallback == spec.name) return bad("fallback names the tool itself");
  auto schema = ArgumentSchema::compile(spec.parameters_schema_json);
  if (!schema.ok()) return bad(schema.error().message());
  return ok_status();
}

namespace {

class NativeTool final : public Tool {
 public:
  NativeTool(ToolSpec spec, NativeToolFn fn, NativeCheckFn check)
      : spec_(std::move(spec)), fn_(std::move(fn)), check_(std::move(check)) {}
  const ToolSpec& spec() const override { return spec_; }
  Task<Result<std::string>> call(Context& ctx, const ToolInvocation& invocation) override {
    co_return co_await fn_(ctx, invocation);
  }
  Task<Result<std::optional<std::string>>> check(Context& ctx, const ToolInvocation& invocation) override {
    if (!check_) co_return co_await Tool::check(ctx, invocation);
    co_return co_await check_(ctx, invocation);
  }

 private:
  ToolSpec spec_;
  NativeToolFn fn_;
  NativeCheckFn check_;
};

}  // namespace

Result<std::shared_ptr<Tool>> make_native_tool(ToolSpec spec, NativeToolFn fn, NativeCheckFn check) {
  if (Status s = validate_tool_spec(spec); !s.ok()) return std::move(s).error();
  if (!fn) return Error(ErrorKind::kInvalidArgument, "tool '" + spec.name + "': no function");
  if (spec.nature == EffectNature::kCheckable && !check) {
    return Error(ErrorKind::kInvalidArgument, "tool '" + spec.name + "': a checkable tool needs a check function");
  }
  return std::shared_ptr<Tool>(std::make_shared<NativeTool>(std::move(spec), std::move(fn), std::move(check)));
}

}  // namespace nines::agent
