#include "engine/base/profiler.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <mutex>
#include <stdexcept>

#include "engine/base/json.h"
#include "engine/base/trace.h"

namespace kd {

const char* phase_name(Phase p) {
  static constexpr const char* kNames[kNumPhases] = {
      "step",      "data", "teacher_forward", "student_forward", "loss", "student_backward",
      "optimizer", "eval", "checkpoint",      "layer",           "op",   "comm"};
  const auto i = static_cast<size_t>(p);
  return i < kNumPhases ? kNames[i] : "unknown";
}

const char* mem_name(Mem m) {
  static constexpr const char* kNames[kNumMem] = {
      "weights",           "gradients",      "master_weights",
      "optimizer_moments", "activations",    "teacher_weights",
      "teacher_scratch",   "loss_workspace", "other"};
  const auto i = static_cast<size_t>(m);
  return i < kNumMem ? kNames[i] : "unknown";
}

namespace profiler {

namespace detail {
std::atomic<bool> g_recording{false};
}  // namespace detail

static void memory_reset();

namespace {

class CpuClock final : public Clock {
 public:
  int64_t mark() override {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  const char* name() const override { return "cpu_steady_clock"; }
};

struct SiteInfo {
  std::string name;
  Phase phase;
};

// One range of the current step. begin/end hold clock tokens until the step is resolved.
struct Rec {
  uint32_t site;
  int tid;
  int64_t begin, end;  // end < 0: still open
  int64_t payload;
  bool has_payload;
  int64_t parent;  // index of the enclosing recorded range on the same thread, or -1
  double flops, bytes;
};

struct TraceEvent {
  int64_t site;  // -1: the step itself
  int tid;
  int64_t ts_ns, dur_ns;
  int64_t payload;
  bool has_payload;
  double flops, bytes;
};

struct SiteTotals {
  int64_t calls = 0;
  int64_t time_ns = 0;
  double flops = 0, bytes = 0;
};

enum class StepKind { Idle, Warmup, Active };

struct State {
  std::mutex mu;
  std::vector<SiteInfo> sites;  // guarded by mu
  Config cfg;
  bool done = false;
  int64_t seen = 0;  // step_begin calls since configure
  CpuClock cpu_clock;
  Clock* clock = &cpu_clock;

  // Current step.
  StepKind kind = StepKind::Idle;
  int64_t step = 0;
  int step_tid = 0;
  int64_t step_begin = 0;
  uint32_t gen = 1;  // bumped at every step_end; stale handles are ignored
  std::vector<Rec> recs;

  // Window so far.
  bool have_t0 = false;
  int64_t t0 = 0;
  std::vector<SiteTotals> totals;
  std::vector<StepTime> steps;
  std::vector<TraceEvent> events;
  std::unique_ptr<Report> last;
};

State& state() {
  static State s;
  return s;
}

int thread_index() {
  static std::atomic<int> next{0};
  thread_local int id = next++;
  return id;
}

// Ranges open on this thread: (generation, index into recs).
thread_local std::vector<std::pair<uint32_t, int64_t>> t_open;

constexpr size_t kMaxEvents = 2'000'000;  // bounds trace.json for very busy windows

int64_t make_handle(uint32_t gen, size_t index) {
  return (static_cast<int64_t>(gen & 0x7FFFFFFF) << 32) | static_cast<int64_t>(index);
}

// Folds the finished active step into the window totals. Caller holds mu.
void absorb_step(State& s, int64_t step_end_token) {
  std::vector<int64_t> tokens;
  tokens.reserve(2 * s.recs.size() + 2);
  tokens.push_back(s.step_begin);
  tokens.push_back(step_end_token);
  for (const Rec& r : s.recs) {
    tokens.push_back(r.begin);
    tokens.push_back(r.end);
  }
  s.clock->resolve(tokens);
  const int64_t b = tokens[0], e = tokens[1];
  for (size_t i = 0; i < s.recs.size(); ++i) {
    s.recs[i].begin = tokens[2 + 2 * i];
    if (s.recs[i].end >= 0) s.recs[i].end = tokens[3 + 2 * i];
  }
  if (!s.have_t0) {
    s.have_t0 = true;
    s.t0 = b;
  }
  if (s.totals.size() < s.sites.size()) s.totals.resize(s.sites.size());

  // Time of op ranges nested (at any depth) in each op range, through non-op ranges.
  std::vector<int64_t> nested_op(s.recs.size(), 0);
  for (size_t i = 0; i < s.recs.size(); ++i) {
    const Rec& r = s.recs[i];
    if (r.end < 0 || s.sites[r.site].phase != Phase::Op) continue;
    int64_t p = r.parent;
    while (p >= 0 && s.sites[s.recs[p].site].phase != Phase::Op) p = s.recs[p].parent;
    if (p >= 0) nested_op[p] += r.end - r.begin;
  }
  int64_t covered = 0;
  for (size_t i = 0; i < s.recs.size(); ++i) {
    const Rec& r = s.recs[i];
    if (r.end < 0) continue;  // still open at step_end: not part of this step
    const int64_t dur = r.end - r.begin;
    SiteTotals& t = s.totals[r.site];
    t.calls++;
    t.flops += r.flops;
    t.bytes += r.bytes;
    if (s.sites[r.site].phase == Phase::Op) {
      const int64_t own = dur - nested_op[i];
      t.time_ns += own;
      if (r.tid == s.step_tid) covered += own;
    } else {
      t.time_ns += dur;
    }
    if (s.events.size() < kMaxEvents)
      s.events.push_back(
          {r.site, r.tid, r.begin - s.t0, dur, r.payload, r.has_payload, r.flops, r.bytes});
  }
  const int64_t step_ns = e - b;
  const int64_t uncovered = std::max<int64_t>(0, step_ns - covered);
  s.steps.push_back({s.step, step_ns * 1e-6, covered * 1e-6, uncovered * 1e-6});
  if (s.events.size() < kMaxEvents)
    s.events.push_back({-1, s.step_tid, b - s.t0, step_ns, s.step, true, 0, 0});
}

Row make_row(const SiteInfo& site, const SiteTotals& t, double step_ms) {
  Row r;
  r.name = site.name;
  r.phase = site.phase;
  r.calls = t.calls;
  r.total_ms = t.time_ns * 1e-6;
  r.mean_us = t.calls ? t.time_ns * 1e-3 / t.calls : 0;
  r.pct_of_step = step_ms > 0 ? 100.0 * r.total_ms / step_ms : 0;
  r.flops = t.flops;
  r.bytes = t.bytes;
  const double sec = t.time_ns * 1e-9;
  if (sec > 0) {
    r.gflops = t.flops / sec * 1e-9;
    r.gbps = t.bytes / sec * 1e-9;
  }
  return r;
}

// Caller holds mu.
std::unique_ptr<Report> build_report(State& s) {
  auto r = std::make_unique<Report>();
  r->clock = s.clock->name();
  r->out_dir = s.cfg.out_dir;
  r->steps = s.steps;
  if (!s.steps.empty()) {
    r->first_step = s.steps.front().step;
    r->last_step = s.steps.back().step;
  }
  for (const StepTime& st : s.steps) {
    r->step_ms += st.time_ms;
    r->op_ms += st.op_ms;
    r->uncovered_ms += st.uncovered_ms;
  }
  r->uncovered_pct = r->step_ms > 0 ? 100.0 * r->uncovered_ms / r->step_ms : 0;
  // One row per (name, phase): call sites that share a name share a row.
  std::vector<std::pair<SiteInfo, SiteTotals>> merged;
  for (size_t i = 0; i < s.totals.size(); ++i) {
    const SiteTotals& t = s.totals[i];
    if (t.calls == 0) continue;
    auto it = std::find_if(merged.begin(), merged.end(), [&](const auto& m) {
      return m.first.name == s.sites[i].name && m.first.phase == s.sites[i].phase;
    });
    if (it == merged.end()) {
      merged.emplace_back(s.sites[i], t);
    } else {
      it->second.calls += t.calls;
      it->second.time_ns += t.time_ns;
      it->second.flops += t.flops;
      it->second.bytes += t.bytes;
    }
  }
  for (const auto& [site, t] : merged) {
    Row row = make_row(site, t, r->step_ms);
    (row.phase == Phase::Op ? r->ops : r->phases).push_back(std::move(row));
  }
  auto by_time = [](const Row& a, const Row& b) {
    return a.total_ms != b.total_ms ? a.total_ms > b.total_ms : a.name < b.name;
  };
  std::sort(r->ops.begin(), r->ops.end(), by_time);
  std::sort(r->phases.begin(), r->phases.end(), by_time);
  r->memory = memory_stats();
  return r;
}

Json trace_json(const State& s) {
  Json events = Json::array();
  const int64_t pid = getpid();
  Json meta = Json::object();
  meta["name"] = "process_name";
  meta["ph"] = "M";
  meta["pid"] = pid;
  meta["tid"] = 0;
  meta["args"] = Json::object();
  meta["args"]["name"] = "kdengine";
  events.push_back(meta);
  std::vector<int> tids;
  for (const TraceEvent& ev : s.events) {
    if (std::find(tids.begin(), tids.end(), ev.tid) == tids.end()) tids.push_back(ev.tid);
  }
  for (int tid : tids) {
    Json m = Json::object();
    m["name"] = "thread_name";
    m["ph"] = "M";
    m["pid"] = pid;
    m["tid"] = tid;
    m["args"] = Json::object();
    m["args"]["name"] = tid == s.step_tid ? std::string("train") : "thread " + std::to_string(tid);
    events.push_back(m);
  }
  for (const TraceEvent& ev : s.events) {
    Json e = Json::object();
    const bool is_step = ev.site < 0;
    e["name"] = is_step ? "step" : s.sites[ev.site].name;
    e["cat"] = phase_name(is_step ? Phase::Step : s.sites[ev.site].phase);
    e["ph"] = "X";
    e["ts"] = ev.ts_ns * 1e-3;
    e["dur"] = ev.dur_ns * 1e-3;
    e["pid"] = pid;
    e["tid"] = ev.tid;
    Json args = Json::object();
    if (ev.has_payload) args["payload"] = ev.payload;
    if (ev.flops > 0) args["flops"] = ev.flops;
    if (ev.bytes > 0) args["bytes"] = ev.bytes;
    e["args"] = std::move(args);
    events.push_back(std::move(e));
  }
  Json root = Json::object();
  root["traceEvents"] = std::move(events);
  root["displayTimeUnit"] = "ms";
  return root;
}

void write_file(const std::filesystem::path& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
  f.close();
  if (!f) throw std::runtime_error("profiler: cannot write " + path.string());
}

// Caller holds mu. Builds the report, writes the files and prints; marks the window done.
void close_window(State& s) {
  s.done = true;
  detail::g_recording.store(false, std::memory_order_relaxed);
  if (s.steps.empty()) return;
  s.last = build_report(s);
  const std::filesystem::path dir(s.cfg.out_dir);
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw std::runtime_error("profiler: cannot create " + dir.string() + ": " + ec.message());
  write_file(dir / "profile.json", report_json(*s.last).dump(1) + "\n");
  write_file(dir / "trace.json", trace_json(s).dump() + "\n");
  s.events.clear();
  s.events.shrink_to_fit();
  if (s.cfg.print) {
    std::cout << format_table(*s.last) << memory_report_text(s.last->memory)
              << "profile written to " << (dir / "profile.json").string() << " and "
              << (dir / "trace.json").string() << "\n"
              << std::flush;
  }
}

void clear_window(State& s) {
  detail::g_recording.store(false, std::memory_order_relaxed);
  s.done = false;
  s.seen = 0;
  s.kind = StepKind::Idle;
  s.recs.clear();
  s.gen++;
  s.have_t0 = false;
  s.t0 = 0;
  s.totals.clear();
  s.steps.clear();
  s.events.clear();
}

const trace::Site& step_site() {
  static const trace::Site site("step", Phase::Step);
  return site;
}

}  // namespace

void configure(const Config& cfg) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  clear_window(s);
  s.cfg = cfg;
  s.cfg.wait = std::max(0, cfg.wait);
  s.cfg.warmup = std::max(0, cfg.warmup);
  s.cfg.active = std::max(0, cfg.active);
}

void configure(bool enabled, int wait, int warmup, int active, const std::string& out_dir) {
  Config c;
  c.enabled = enabled;
  c.wait = wait;
  c.warmup = warmup;
  c.active = active;
  c.out_dir = out_dir;
  configure(c);
}

void step_begin(int64_t step) {
  trace::push(step_site(), step);
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.cfg.enabled || s.done) return;
  const int64_t k = s.seen++;
  const int64_t w = s.cfg.wait, u = s.cfg.warmup, a = s.cfg.active;
  if (k < w || k >= w + u + a) return;
  s.kind = k < w + u ? StepKind::Warmup : StepKind::Active;
  s.step = step;
  s.step_tid = thread_index();
  s.recs.clear();
  detail::g_recording.store(true, std::memory_order_relaxed);
  s.step_begin = s.clock->mark();
}

void step_end(int64_t /*step*/) {
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.kind != StepKind::Idle) {
      const int64_t end = s.clock->mark();
      detail::g_recording.store(false, std::memory_order_relaxed);
      if (s.kind == StepKind::Active) absorb_step(s, end);
      s.kind = StepKind::Idle;
      s.recs.clear();
      s.gen++;
      if (s.seen >= int64_t{s.cfg.wait} + s.cfg.warmup + s.cfg.active) {
        trace::pop();
        close_window(s);
        return;
      }
    }
  }
  trace::pop();
}

void finish() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.done || !s.cfg.enabled) return;
  s.kind = StepKind::Idle;
  s.recs.clear();
  s.gen++;
  close_window(s);
}

void reset() {
  State& s = state();
  {
    std::lock_guard<std::mutex> lock(s.mu);
    clear_window(s);
    s.cfg = Config{};
    s.clock = &s.cpu_clock;
    s.last.reset();
  }
  memory_reset();
}

void set_clock(Clock* clock) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.clock = clock ? clock : &s.cpu_clock;
}

const Report* last_report() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  return s.last.get();
}

namespace detail {

uint32_t register_site(const char* name, Phase phase) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  s.sites.push_back({name, phase});
  return static_cast<uint32_t>(s.sites.size() - 1);
}

int64_t range_begin(uint32_t site, int64_t payload, bool has_payload) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.kind == StepKind::Idle) return -1;
  int64_t parent = -1;
  if (!t_open.empty() && t_open.back().first == s.gen) parent = t_open.back().second;
  s.recs.push_back({site, thread_index(), 0, -1, payload, has_payload, parent, 0, 0});
  const size_t index = s.recs.size() - 1;
  t_open.emplace_back(s.gen, static_cast<int64_t>(index));
  s.recs[index].begin = s.clock->mark();
  return make_handle(s.gen, index);
}

void range_end(int64_t handle) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  const int64_t token = s.clock->mark();
  const auto gen = static_cast<uint32_t>(handle >> 32);
  const int64_t index = handle & 0xFFFFFFFF;
  for (size_t i = t_open.size(); i-- > 0;) {
    if ((t_open[i].first & 0x7FFFFFFF) == gen && t_open[i].second == index) {
      t_open.erase(t_open.begin() + static_cast<std::ptrdiff_t>(i), t_open.end());
      break;
    }
  }
  if (s.kind == StepKind::Idle || (s.gen & 0x7FFFFFFF) != gen) return;  // from an earlier step
  s.recs[static_cast<size_t>(index)].end = token;
}

void add_work_slow(double flops, double bytes) {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mu);
  if (s.kind == StepKind::Idle || t_open.empty() || t_open.back().first != s.gen) return;
  Rec& r = s.recs[static_cast<size_t>(t_open.back().second)];
  r.flops += flops;
  r.bytes += bytes;
}

}  // namespace detail

// ---- Report formatting --------------------------------------------------------------------------

std::string format_table(const Report& r) {
  std::string out;
  char line[256];
  const size_t n = r.steps.size();
  std::snprintf(line, sizeof line,
                "profile: steps %lld..%lld (%zu active), %.3f ms per step, clock %s\n",
                static_cast<long long>(r.first_step), static_cast<long long>(r.last_step), n,
                n ? r.step_ms / static_cast<double>(n) : 0.0, r.clock.c_str());
  out += line;
  std::snprintf(line, sizeof line, "%-28s %8s %11s %11s %7s %9s %9s\n", "op", "calls", "total ms",
                "mean us", "% step", "GFLOP/s", "GB/s");
  out += line;
  auto rate = [](double v) {
    char b[32];
    if (v > 0)
      std::snprintf(b, sizeof b, "%9.2f", v);
    else
      std::snprintf(b, sizeof b, "%9s", "-");
    return std::string(b);
  };
  for (const Row& row : r.ops) {
    std::snprintf(line, sizeof line, "%-28s %8lld %11.3f %11.2f %6.1f%% %s %s\n", row.name.c_str(),
                  static_cast<long long>(row.calls), row.total_ms, row.mean_us, row.pct_of_step,
                  rate(row.gflops).c_str(), rate(row.gbps).c_str());
    out += line;
  }
  std::snprintf(line, sizeof line, "%-28s %8s %11.3f %11s %6.1f%%\n", "(not covered by any op)", "",
                r.uncovered_ms, "", r.uncovered_pct);
  out += line;
  if (!r.phases.empty()) {
    std::snprintf(line, sizeof line, "%-28s %8s %11s %11s %7s   (inclusive)\n", "phase", "calls",
                  "total ms", "mean us", "% step");
    out += line;
    for (const Row& row : r.phases) {
      std::snprintf(line, sizeof line, "%-28s %8lld %11.3f %11.2f %6.1f%%\n", row.name.c_str(),
                    static_cast<long long>(row.calls), row.total_ms, row.mean_us, row.pct_of_step);
      out += line;
    }
  }
  return out;
}

namespace {
Json row_json(const Row& row) {
  Json j = Json::object();
  j["name"] = row.name;
  j["phase"] = phase_name(row.phase);
  j["calls"] = row.calls;
  j["total_ms"] = row.total_ms;
  j["mean_us"] = row.mean_us;
  j["pct_of_step"] = row.pct_of_step;
  j["flops"] = row.flops;
  j["bytes"] = row.bytes;
  j["gflops_per_s"] = row.gflops;
  j["gbytes_per_s"] = row.gbps;
  return j;
}
}  // namespace

Json report_json(const Report& r) {
  Json j = Json::object();
  j["clock"] = r.clock;
  j["first_step"] = r.first_step;
  j["last_step"] = r.last_step;
  j["active_steps"] = static_cast<int64_t>(r.steps.size());
  j["step_ms_total"] = r.step_ms;
  j["step_ms_mean"] = r.steps.empty() ? 0.0 : r.step_ms / static_cast<double>(r.steps.size());
  j["op_ms_total"] = r.op_ms;
  j["uncovered_ms"] = r.uncovered_ms;
  j["uncovered_pct"] = r.uncovered_pct;
  Json ops = Json::array();
  for (const Row& row : r.ops) ops.push_back(row_json(row));
  j["ops"] = std::move(ops);
  Json phases = Json::array();
  for (const Row& row : r.phases) phases.push_back(row_json(row));
  j["phases"] = std::move(phases);
  Json steps = Json::array();
  for (const StepTime& st : r.steps) {
    Json s = Json::object();
    s["step"] = st.step;
    s["time_ms"] = st.time_ms;
    s["op_ms"] = st.op_ms;
    s["uncovered_ms"] = st.uncovered_ms;
    steps.push_back(std::move(s));
  }
  j["steps"] = std::move(steps);
  j["memory"] = memory_json(r.memory);
  return j;
}

// ---- Memory -------------------------------------------------------------------------------------

namespace {
struct MemState {
  std::mutex mu;
  MemoryStats stats;
};
MemState& mem() {
  static MemState m;
  return m;
}
void update_total(MemoryStats& st) {
  st.total_current = 0;
  for (size_t c : st.current) st.total_current += c;
  st.total_peak = std::max(st.total_peak, st.total_current);
}
}  // namespace

static void memory_reset() {
  MemState& m = mem();
  std::lock_guard<std::mutex> lock(m.mu);
  m.stats = MemoryStats{};
}

void memory_alloc(Mem c, size_t bytes) {
  MemState& m = mem();
  std::lock_guard<std::mutex> lock(m.mu);
  const auto i = static_cast<size_t>(c);
  m.stats.current[i] += bytes;
  m.stats.peak[i] = std::max(m.stats.peak[i], m.stats.current[i]);
  update_total(m.stats);
}

void memory_free(Mem c, size_t bytes) {
  MemState& m = mem();
  std::lock_guard<std::mutex> lock(m.mu);
  const auto i = static_cast<size_t>(c);
  m.stats.current[i] -= std::min(bytes, m.stats.current[i]);
  update_total(m.stats);
}

void memory_set(Mem c, size_t bytes) {
  MemState& m = mem();
  std::lock_guard<std::mutex> lock(m.mu);
  const auto i = static_cast<size_t>(c);
  m.stats.current[i] = bytes;
  m.stats.peak[i] = std::max(m.stats.peak[i], bytes);
  update_total(m.stats);
}

void set_device_memory(size_t free_bytes, size_t total_bytes) {
  MemState& m = mem();
  std::lock_guard<std::mutex> lock(m.mu);
  m.stats.has_device = true;
  m.stats.device_free = free_bytes;
  m.stats.device_total = total_bytes;
}

void set_fit_estimate(int64_t max_micro_batch, const std::string& note) {
  MemState& m = mem();
  std::lock_guard<std::mutex> lock(m.mu);
  m.stats.max_micro_batch = max_micro_batch;
  m.stats.fit_note = note;
}

MemoryStats memory_stats() {
  MemState& m = mem();
  std::lock_guard<std::mutex> lock(m.mu);
  return m.stats;
}

std::string memory_report_text(const MemoryStats& st) {
  auto mib = [](size_t b) { return static_cast<double>(b) / (1024.0 * 1024.0); };
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "%-28s %14s %14s\n", "memory", "current MiB", "peak MiB");
  out += line;
  for (int i = 0; i < kNumMem; ++i) {
    if (st.peak[i] == 0) continue;
    std::snprintf(line, sizeof line, "%-28s %14.2f %14.2f\n", mem_name(static_cast<Mem>(i)),
                  mib(st.current[i]), mib(st.peak[i]));
    out += line;
  }
  std::snprintf(line, sizeof line, "%-28s %14.2f %14.2f\n", "total", mib(st.total_current),
                mib(st.total_peak));
  out += line;
  if (st.has_device) {
    std::snprintf(line, sizeof line, "device: %.2f MiB free of %.2f MiB\n", mib(st.device_free),
                  mib(st.device_total));
    out += line;
  }
  if (st.max_micro_batch >= 0) {
    std::snprintf(line, sizeof line, "largest micro-batch that fits: %lld%s%s\n",
                  static_cast<long long>(st.max_micro_batch), st.fit_note.empty() ? "" : " -- ",
                  st.fit_note.c_str());
    out += line;
  }
  return out;
}

Json memory_json(const MemoryStats& st) {
  Json j = Json::object();
  Json cats = Json::object();
  for (int i = 0; i < kNumMem; ++i) {
    Json c = Json::object();
    c["current_bytes"] = static_cast<uint64_t>(st.current[i]);
    c["peak_bytes"] = static_cast<uint64_t>(st.peak[i]);
    cats[mem_name(static_cast<Mem>(i))] = std::move(c);
  }
  j["categories"] = std::move(cats);
  j["total_current_bytes"] = static_cast<uint64_t>(st.total_current);
  j["total_peak_bytes"] = static_cast<uint64_t>(st.total_peak);
  if (st.has_device) {
    j["device_free_bytes"] = static_cast<uint64_t>(st.device_free);
    j["device_total_bytes"] = static_cast<uint64_t>(st.device_total);
  }
  if (st.max_micro_batch >= 0) {
    j["max_micro_batch"] = st.max_micro_batch;
    j["fit_note"] = st.fit_note;
  }
  return j;
}

}  // namespace profiler
}  // namespace kd
