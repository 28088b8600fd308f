// Named ranges: one macro opens an NVTX range (seen by Nsight Systems and any NVTX tool) and feeds
// the built-in profiler (engine/base/profiler.h).
//
//   KD_RANGE("attention_forward");                      // phase Op, no payload
//   KD_RANGE_P("layer", kd::Phase::Layer, l);           // phase and int64 payload
//   KD_OP("matmul_forward", 2.0 * M * N * K, bytes);    // phase Op plus work for GFLOP/s, GB/s
//
// Each macro declares a scope object: the range ends when the enclosing block does.
//
// NVTX: ranges live in the domain "kdengine"; the message is a registered string (registered once
// per call site, in a function-local static) and the category is the phase (id = phase + 1, named
// with nvtxDomainNameCategoryA: "step", "data", "teacher_forward", ...). Payloads are int64.
//
// Names are stable identifiers: lower_snake_case, no numbers. Anything that varies (layer index,
// step, micro-batch) goes in the payload, so tools can group ranges by name.
//
// Cost with no tool attached and the profiler idle: an NVTX push/pop (a call through a pointer to
// an empty function) and one relaxed atomic load.
#pragma once

#include <cstdint>
#include <nvtx3/nvtx3.hpp>

#include "engine/base/profiler.h"

namespace kd::trace {

// The NVTX domain of every kdengine range.
struct Domain {
  static constexpr char const* name{"kdengine"};
};

// Names the phase categories in the domain (once; later calls do nothing) and returns the
// category of a phase.
const nvtx3::named_category_in<Domain>& category(Phase p);

// One call site: the registered NVTX string, the category, and the profiler's id for the name.
struct Site {
  Site(const char* name, Phase phase);
  const char* name;
  Phase phase;
  uint32_t id;
  nvtx3::registered_string_in<Domain> message;
};

class Range {
 public:
  explicit Range(const Site& site)
      : nvtx_(site.message, category(site.phase)), handle_(begin(site, 0, false)) {}
  Range(const Site& site, int64_t payload)
      : nvtx_(site.message, category(site.phase), nvtx3::payload{payload}),
        handle_(begin(site, payload, true)) {}
  ~Range() {
    if (handle_ >= 0) profiler::detail::range_end(handle_);
  }
  Range(const Range&) = delete;
  Range& operator=(const Range&) = delete;

 private:
  static int64_t begin(const Site& s, int64_t payload, bool has_payload) {
    return profiler::recording() ? profiler::detail::range_begin(s.id, payload, has_payload) : -1;
  }
  nvtx3::scoped_range_in<Domain> nvtx_;  // pushed first, popped last
  int64_t handle_;
};

// Opens / closes a range across two calls (profiler::step_begin / step_end use these). NVTX only:
// the profiler is not fed. Ranges opened in between must be closed before pop().
void push(const Site& site, int64_t payload);
void pop();

}  // namespace kd::trace

#define KD_TRACE_CAT2(a, b) a##b
#define KD_TRACE_CAT(a, b) KD_TRACE_CAT2(a, b)
// One static Site per call site, then the scope object. __COUNTER__ keeps several ranges on one
// line apart.
#define KD_TRACE_RANGE(var, name, phase, ...)                               \
  static const ::kd::trace::Site KD_TRACE_CAT(var, _site)((name), (phase)); \
  const ::kd::trace::Range var(KD_TRACE_CAT(var, _site) __VA_ARGS__)

#define KD_RANGE(name) KD_TRACE_RANGE(KD_TRACE_CAT(kd_range_, __COUNTER__), name, ::kd::Phase::Op)
#define KD_RANGE_P(name, phase, payload) \
  KD_TRACE_RANGE(KD_TRACE_CAT(kd_range_, __COUNTER__), name, phase, , static_cast<int64_t>(payload))
#define KD_OP(name, flops, bytes) \
  KD_RANGE(name);                 \
  ::kd::profiler::add_work((flops), (bytes))
