#include "engine/base/trace.h"

#include <array>
#include <utility>

namespace kd::trace {

namespace {

// Category ids are phase + 1: NVTX reserves 0 for "no category".
struct Categories {
  std::array<nvtx3::named_category_in<Domain>, kNumPhases> cats;
  static nvtx3::named_category_in<Domain> make(int i) {
    return nvtx3::named_category_in<Domain>(static_cast<uint32_t>(i + 1),
                                            phase_name(static_cast<Phase>(i)));
  }
  template <size_t... I>
  explicit Categories(std::index_sequence<I...>) : cats{make(I)...} {}
};

}  // namespace

const nvtx3::named_category_in<Domain>& category(Phase p) {
  static const Categories all(std::make_index_sequence<kNumPhases>{});
  return all.cats[static_cast<size_t>(p)];
}

Site::Site(const char* name_, Phase phase_)
    : name(name_),
      phase(phase_),
      id(profiler::detail::register_site(name_, phase_)),
      message(name_) {}

void push(const Site& site, int64_t payload) {
  nvtx3::event_attributes attr{site.message, category(site.phase), nvtx3::payload{payload}};
  nvtxDomainRangePushEx(nvtx3::domain::get<Domain>(), attr.get());
}

void pop() {
  nvtxDomainRangePop(nvtx3::domain::get<Domain>());
}

}  // namespace kd::trace
