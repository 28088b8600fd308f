// The built-in profiler: window logic, op/uncovered accounting against a scripted clock, the
// written profile.json and trace.json, and memory accounting.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include "engine/base/json.h"
#include "engine/base/profiler.h"
#include "engine/base/trace.h"

namespace fs = std::filesystem;
namespace prof = kd::profiler;

namespace {

// A device-style clock: mark() hands out tokens, resolve() turns them into the scripted times.
// Exercises the token/resolve path a CUDA backend uses, with exact times.
class ScriptedClock : public prof::Clock {
 public:
  int64_t now = 0;
  int resolves = 0;
  void advance(int64_t ns) { now += ns; }
  int64_t mark() override {
    times_.push_back(now);
    return static_cast<int64_t>(times_.size() - 1) + 1'000'000;  // not a time
  }
  void resolve(std::vector<int64_t>& tokens) override {
    ++resolves;
    for (int64_t& t : tokens) t = times_.at(static_cast<size_t>(t - 1'000'000));
  }
  const char* name() const override { return "scripted"; }

 private:
  std::vector<int64_t> times_;
};

fs::path temp_dir(const std::string& stem) {
  fs::path p = fs::temp_directory_path() / (stem + "." + std::to_string(getpid()));
  fs::remove_all(p);
  return p;
}

kd::Json read_json(const fs::path& p) {
  std::ifstream f(p);
  std::stringstream ss;
  ss << f.rdbuf();
  return kd::Json::parse(ss.str());
}

// One training step, 13000 ns on the scripted clock:
//   data 1000 | matmul 3000 | attention 5000 (softmax 1000 inside) | layer 2500 (gelu 2000) | 1500
// Op time: matmul 3000, attention 4000, softmax 1000, gelu 2000 = 10000; not covered: 3000.
void scripted_step(ScriptedClock& c, int64_t step) {
  prof::step_begin(step);
  {
    KD_RANGE_P("data", kd::Phase::Data, step);
    c.advance(1000);
  }
  {
    KD_OP("matmul", 6e6, 1.2e6);
    c.advance(3000);
  }
  {
    KD_RANGE("attention");
    c.advance(2000);
    {
      KD_RANGE("softmax");
      c.advance(1000);
    }
    c.advance(2000);
  }
  {
    KD_RANGE_P("layer", kd::Phase::Layer, 3);
    {
      KD_RANGE("gelu");
      prof::add_work(1e3, 0);  // two reports add up
      prof::add_work(1e3, 4e3);
      c.advance(2000);
    }
    c.advance(500);
  }
  c.advance(1500);
  prof::step_end(step);
  c.advance(100000);  // time between steps is not step time
}

const prof::Row* find_row(const std::vector<prof::Row>& rows, const std::string& name) {
  for (const auto& r : rows)
    if (r.name == name) return &r;
  return nullptr;
}

}  // namespace

TEST(Profiler, PhaseNames) {
  EXPECT_STREQ(kd::phase_name(kd::Phase::Step), "step");
  EXPECT_STREQ(kd::phase_name(kd::Phase::TeacherForward), "teacher_forward");
  EXPECT_STREQ(kd::phase_name(kd::Phase::StudentBackward), "student_backward");
  EXPECT_STREQ(kd::phase_name(kd::Phase::Op), "op");
  EXPECT_STREQ(kd::mem_name(kd::Mem::OptimizerMoments), "optimizer_moments");
  EXPECT_STREQ(kd::mem_name(kd::Mem::Other), "other");
}

TEST(Profiler, WindowWaitWarmupActive) {
  prof::reset();
  ScriptedClock clock;
  prof::set_clock(&clock);
  const fs::path dir = temp_dir("kd_prof_window");
  prof::Config cfg;
  cfg.enabled = true;
  cfg.wait = 2;
  cfg.warmup = 1;
  cfg.active = 2;
  cfg.out_dir = dir.string();
  cfg.print = false;
  prof::configure(cfg);

  // Steps 10..15: 10, 11 wait; 12 warmup; 13, 14 active; 15 after the window.
  const bool want_recording[] = {false, false, true, true, true, false};
  for (int i = 0; i < 6; ++i) {
    const int64_t step = 10 + i;
    EXPECT_EQ(prof::last_report() != nullptr, i >= 5) << step;
    prof::step_begin(step);
    EXPECT_EQ(prof::recording(), want_recording[i]) << step;
    prof::step_end(step);
    EXPECT_FALSE(prof::recording());
  }
  const prof::Report* r = prof::last_report();
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->first_step, 13);
  EXPECT_EQ(r->last_step, 14);
  ASSERT_EQ(r->steps.size(), 2u);
  EXPECT_EQ(r->steps[0].step, 13);
  EXPECT_EQ(r->steps[1].step, 14);
  EXPECT_TRUE(fs::exists(dir / "profile.json"));
  EXPECT_TRUE(fs::exists(dir / "trace.json"));
  fs::remove_all(dir);
  prof::reset();
}

TEST(Profiler, TableSumsAndUncoveredTime) {
  prof::reset();
  ScriptedClock clock;
  prof::set_clock(&clock);
  const fs::path dir = temp_dir("kd_prof_table");
  prof::Config cfg;
  cfg.enabled = true;
  cfg.wait = 0;
  cfg.warmup = 1;
  cfg.active = 3;
  cfg.out_dir = dir.string();
  cfg.print = false;
  prof::configure(cfg);
  for (int64_t s = 1; s <= 5; ++s) scripted_step(clock, s);
  EXPECT_EQ(clock.resolves, 3);  // once per active step

  const prof::Report* r = prof::last_report();
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->clock, "scripted");
  ASSERT_EQ(r->steps.size(), 3u);
  for (const auto& st : r->steps) {
    EXPECT_DOUBLE_EQ(st.time_ms, 0.013);
    EXPECT_DOUBLE_EQ(st.op_ms, 0.010);
    EXPECT_DOUBLE_EQ(st.uncovered_ms, 0.003);
  }
  EXPECT_DOUBLE_EQ(r->step_ms, 0.039);
  EXPECT_DOUBLE_EQ(r->uncovered_ms, 0.009);
  EXPECT_NEAR(r->uncovered_pct, 100.0 * 3 / 13, 1e-9);

  ASSERT_EQ(r->ops.size(), 4u);
  // Largest first: attention 4000, matmul 3000, gelu 2000, softmax 1000 (ns per step).
  EXPECT_EQ(r->ops[0].name, "attention");
  EXPECT_EQ(r->ops[1].name, "matmul");
  EXPECT_EQ(r->ops[2].name, "gelu");
  EXPECT_EQ(r->ops[3].name, "softmax");
  double pct = r->uncovered_pct;
  for (const auto& row : r->ops) {
    EXPECT_EQ(row.calls, 3) << row.name;
    pct += row.pct_of_step;
  }
  EXPECT_NEAR(pct, 100.0, 1e-9);

  const prof::Row* mm = find_row(r->ops, "matmul");
  ASSERT_NE(mm, nullptr);
  EXPECT_DOUBLE_EQ(mm->total_ms, 0.009);
  EXPECT_DOUBLE_EQ(mm->mean_us, 3.0);
  EXPECT_NEAR(mm->pct_of_step, 100.0 * 3 / 13, 1e-9);
  EXPECT_DOUBLE_EQ(mm->flops, 18e6);
  EXPECT_NEAR(mm->gflops, 6e6 / 3e-6 * 1e-9, 1e-6);  // 2000 GFLOP/s
  EXPECT_NEAR(mm->gbps, 1.2e6 / 3e-6 * 1e-9, 1e-6);  // 400 GB/s
  const prof::Row* att = find_row(r->ops, "attention");
  ASSERT_NE(att, nullptr);
  EXPECT_DOUBLE_EQ(att->mean_us, 4.0);  // softmax's 1 us is not counted twice
  EXPECT_EQ(att->gflops, 0.0);          // no work reported
  const prof::Row* gelu = find_row(r->ops, "gelu");
  ASSERT_NE(gelu, nullptr);
  EXPECT_DOUBLE_EQ(gelu->flops, 6e3);
  EXPECT_DOUBLE_EQ(gelu->bytes, 12e3);

  // Other phases are inclusive.
  const prof::Row* layer = find_row(r->phases, "layer");
  ASSERT_NE(layer, nullptr);
  EXPECT_EQ(layer->phase, kd::Phase::Layer);
  EXPECT_DOUBLE_EQ(layer->mean_us, 2.5);
  const prof::Row* data = find_row(r->phases, "data");
  ASSERT_NE(data, nullptr);
  EXPECT_DOUBLE_EQ(data->mean_us, 1.0);

  // The text table lists every op and the uncovered line.
  const std::string table = prof::format_table(*r);
  for (const char* name :
       {"matmul", "attention", "softmax", "gelu", "layer", "data", "(not covered by any op)"})
    EXPECT_NE(table.find(name), std::string::npos) << name << "\n" << table;

  // profile.json carries the same numbers.
  const kd::Json pj = read_json(dir / "profile.json");
  EXPECT_EQ(pj.at("first_step").as_int(), 2);  // step 1 is the warmup
  EXPECT_EQ(pj.at("last_step").as_int(), 4);   // step 5 is past the window
  EXPECT_EQ(pj.at("active_steps").as_int(), 3);
  EXPECT_NEAR(pj.at("uncovered_ms").as_number(), 0.009, 1e-12);
  ASSERT_EQ(pj.at("ops").size(), 4u);
  EXPECT_EQ(pj.at("ops").items()[1].at("name").as_string(), "matmul");
  EXPECT_NEAR(pj.at("ops").items()[1].at("gflops_per_s").as_number(), 2000.0, 1e-6);
  EXPECT_EQ(pj.at("steps").size(), 3u);
  EXPECT_TRUE(pj.at("memory").at("categories").find("activations") != nullptr);
  fs::remove_all(dir);
  prof::reset();
}

TEST(Profiler, TraceJsonHasCompleteEvents) {
  prof::reset();
  ScriptedClock clock;
  prof::set_clock(&clock);
  const fs::path dir = temp_dir("kd_prof_trace");
  prof::configure(true, 0, 0, 2, dir.string());
  testing::internal::CaptureStdout();  // print = true by default: the table goes to stdout
  for (int64_t s = 7; s <= 8; ++s) scripted_step(clock, s);
  const std::string printed = testing::internal::GetCapturedStdout();
  EXPECT_NE(printed.find("matmul"), std::string::npos);
  EXPECT_NE(printed.find("profile written to"), std::string::npos);

  const kd::Json tj = read_json(dir / "trace.json");
  const auto& events = tj.at("traceEvents").items();
  std::map<std::string, int> count;
  std::vector<const kd::Json*> xs;
  for (const kd::Json& e : events) {
    const std::string ph = e.at("ph").as_string();
    if (ph != "X") {
      EXPECT_EQ(ph, "M");  // process / thread names
      continue;
    }
    xs.push_back(&e);
    count[e.at("name").as_string()]++;
    EXPECT_EQ(e.at("pid").as_int(), getpid());
    EXPECT_TRUE(e.at("tid").is_number());
    EXPECT_GE(e.at("ts").as_number(), 0.0);
    EXPECT_GE(e.at("dur").as_number(), 0.0);
  }
  const std::map<std::string, int> want = {{"step", 2},      {"data", 2},    {"matmul", 2},
                                           {"attention", 2}, {"softmax", 2}, {"layer", 2},
                                           {"gelu", 2}};
  EXPECT_EQ(count, want);
  // Exact times in microseconds, relative to the first step's start; categories are the phases.
  // Step 7 starts at 0; step 8 starts 113 us later (13 us step + 100 us between steps).
  for (const kd::Json* e : xs) {
    const std::string name = e->at("name").as_string();
    const double ts = e->at("ts").as_number(), dur = e->at("dur").as_number();
    const bool second = ts >= 113.0;
    const double base = second ? 113.0 : 0.0;
    const kd::Json& args = e->at("args");
    if (name == "step") {
      EXPECT_EQ(e->at("cat").as_string(), "step");
      EXPECT_DOUBLE_EQ(ts, base);
      EXPECT_DOUBLE_EQ(dur, 13.0);
      EXPECT_EQ(args.at("payload").as_int(), second ? 8 : 7);
    } else if (name == "data") {
      EXPECT_EQ(e->at("cat").as_string(), "data");
      EXPECT_DOUBLE_EQ(ts, base);
      EXPECT_DOUBLE_EQ(dur, 1.0);
      EXPECT_EQ(args.at("payload").as_int(), second ? 8 : 7);
    } else if (name == "matmul") {
      EXPECT_EQ(e->at("cat").as_string(), "op");
      EXPECT_DOUBLE_EQ(ts, base + 1.0);
      EXPECT_DOUBLE_EQ(dur, 3.0);
      EXPECT_DOUBLE_EQ(args.at("flops").as_number(), 6e6);
      EXPECT_EQ(args.find("payload"), nullptr);
    } else if (name == "attention") {
      EXPECT_DOUBLE_EQ(ts, base + 4.0);
      EXPECT_DOUBLE_EQ(dur, 5.0);  // trace durations are inclusive
    } else if (name == "softmax") {
      EXPECT_DOUBLE_EQ(ts, base + 6.0);
      EXPECT_DOUBLE_EQ(dur, 1.0);
    } else if (name == "layer") {
      EXPECT_EQ(e->at("cat").as_string(), "layer");
      EXPECT_DOUBLE_EQ(ts, base + 9.0);
      EXPECT_DOUBLE_EQ(dur, 2.5);
      EXPECT_EQ(args.at("payload").as_int(), 3);
    } else if (name == "gelu") {
      EXPECT_DOUBLE_EQ(ts, base + 9.0);
      EXPECT_DOUBLE_EQ(dur, 2.0);
    }
  }
  fs::remove_all(dir);
  prof::reset();
}

TEST(Profiler, CpuClockMeasuresRealTime) {
  prof::reset();
  const fs::path dir = temp_dir("kd_prof_cpu");
  prof::Config cfg;
  cfg.enabled = true;
  cfg.warmup = 0;
  cfg.active = 2;
  cfg.out_dir = dir.string();
  cfg.print = false;
  prof::configure(cfg);
  for (int s = 0; s < 2; ++s) {
    prof::StepScope step(s);
    {
      KD_RANGE("sleep_op");
      std::this_thread::sleep_for(std::chrono::milliseconds(3));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // not in any op
  }
  const prof::Report* r = prof::last_report();
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->clock, "cpu_steady_clock");
  ASSERT_EQ(r->ops.size(), 1u);
  EXPECT_EQ(r->ops[0].calls, 2);
  EXPECT_GE(r->ops[0].total_ms, 6.0);
  EXPECT_GE(r->uncovered_ms, 4.0);
  EXPECT_GE(r->step_ms, r->ops[0].total_ms + 4.0);
  EXPECT_NEAR(r->ops[0].pct_of_step + r->uncovered_pct, 100.0, 1e-6);
  fs::remove_all(dir);
  prof::reset();
}

TEST(Profiler, DisabledRecordsNothing) {
  prof::reset();
  const fs::path dir = temp_dir("kd_prof_off");
  prof::configure(false, 0, 0, 1, dir.string());
  for (int s = 0; s < 3; ++s) {
    prof::step_begin(s);
    EXPECT_FALSE(prof::recording());
    KD_RANGE("idle_op");
    prof::add_work(1, 1);  // no open recorded range: ignored
    prof::step_end(s);
  }
  prof::finish();
  EXPECT_EQ(prof::last_report(), nullptr);
  EXPECT_FALSE(fs::exists(dir));
}

TEST(Profiler, FinishReportsAShortWindow) {
  prof::reset();
  ScriptedClock clock;
  prof::set_clock(&clock);
  const fs::path dir = temp_dir("kd_prof_finish");
  prof::Config cfg;
  cfg.enabled = true;
  cfg.warmup = 1;
  cfg.active = 10;
  cfg.out_dir = dir.string();
  cfg.print = false;
  prof::configure(cfg);
  for (int64_t s = 0; s < 3; ++s) scripted_step(clock, s);  // warmup + 2 active of 10
  EXPECT_EQ(prof::last_report(), nullptr);
  prof::finish();
  const prof::Report* r = prof::last_report();
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->steps.size(), 2u);
  EXPECT_EQ(r->first_step, 1);
  prof::finish();  // idempotent
  EXPECT_EQ(prof::last_report()->steps.size(), 2u);
  fs::remove_all(dir);
  prof::reset();
}

TEST(Profiler, RangesCrossingStepBoundariesAreDropped) {
  prof::reset();
  ScriptedClock clock;
  prof::set_clock(&clock);
  const fs::path dir = temp_dir("kd_prof_cross");
  prof::Config cfg;
  cfg.enabled = true;
  cfg.warmup = 0;
  cfg.active = 1;
  cfg.out_dir = dir.string();
  cfg.print = false;
  prof::configure(cfg);
  {
    KD_RANGE("opened_before");  // begins while idle: never recorded
    prof::step_begin(0);
    {
      KD_RANGE("inside");
      clock.advance(10);
    }
    clock.advance(10);
  }
  prof::step_end(0);
  const prof::Report* r = prof::last_report();
  ASSERT_NE(r, nullptr);
  ASSERT_EQ(r->ops.size(), 1u);
  EXPECT_EQ(r->ops[0].name, "inside");
  fs::remove_all(dir);
  prof::reset();
}

TEST(Profiler, MemoryCurrentAndPeak) {
  prof::reset();
  using kd::Mem;
  prof::memory_alloc(Mem::Weights, 100);
  prof::memory_alloc(Mem::Activations, 200);     // total 300
  prof::memory_free(Mem::Activations, 200);      // total 100
  prof::memory_alloc(Mem::TeacherScratch, 250);  // total 350: the peak of the sum
  prof::memory_free(Mem::TeacherScratch, 100);
  prof::memory_set(Mem::OptimizerMoments, 80);  // total 330
  prof::memory_set(Mem::OptimizerMoments, 20);  // total 270
  prof::memory_free(Mem::Gradients, 5);         // more than allocated: clamps at 0
  prof::set_device_memory(1 << 20, 4 << 20);
  prof::set_fit_estimate(48, "activations scale linearly in B");

  const prof::MemoryStats m = prof::memory_stats();
  auto idx = [](Mem c) { return static_cast<size_t>(c); };
  EXPECT_EQ(m.current[idx(Mem::Weights)], 100u);
  EXPECT_EQ(m.peak[idx(Mem::Weights)], 100u);
  EXPECT_EQ(m.current[idx(Mem::Activations)], 0u);
  EXPECT_EQ(m.peak[idx(Mem::Activations)], 200u);
  EXPECT_EQ(m.current[idx(Mem::TeacherScratch)], 150u);
  EXPECT_EQ(m.peak[idx(Mem::TeacherScratch)], 250u);
  EXPECT_EQ(m.current[idx(Mem::OptimizerMoments)], 20u);
  EXPECT_EQ(m.peak[idx(Mem::OptimizerMoments)], 80u);
  EXPECT_EQ(m.current[idx(Mem::Gradients)], 0u);
  EXPECT_EQ(m.total_current, 270u);
  EXPECT_EQ(m.total_peak, 350u);  // not 100 + 200 + 250 + 80
  EXPECT_TRUE(m.has_device);
  EXPECT_EQ(m.device_total, 4u << 20);
  EXPECT_EQ(m.max_micro_batch, 48);

  const kd::Json j = kd::Json::parse(prof::memory_json(m).dump());
  EXPECT_EQ(j.at("total_peak_bytes").as_int(), 350);
  EXPECT_EQ(j.at("categories").at("teacher_scratch").at("current_bytes").as_int(), 150);
  EXPECT_EQ(j.at("categories").at("teacher_scratch").at("peak_bytes").as_int(), 250);
  EXPECT_EQ(j.at("categories").at("loss_workspace").at("peak_bytes").as_int(), 0);
  EXPECT_EQ(j.at("device_free_bytes").as_int(), 1 << 20);
  EXPECT_EQ(j.at("max_micro_batch").as_int(), 48);

  const std::string text = prof::memory_report_text(m);
  EXPECT_NE(text.find("teacher_scratch"), std::string::npos) << text;
  EXPECT_NE(text.find("largest micro-batch that fits: 48"), std::string::npos) << text;

  prof::reset();
  EXPECT_EQ(prof::memory_stats().total_peak, 0u);
}
