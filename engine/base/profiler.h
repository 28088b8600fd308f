// The built-in profiler: per-op times, FLOP and byte rates, a Chrome trace and a memory report for
// a short window of optimizer steps.
//
// Ranges come from KD_RANGE / KD_RANGE_P / KD_OP (engine/base/trace.h): the same names Nsight
// Systems shows as NVTX ranges. The profiler only records between step_begin(s) and step_end(s) of
// steps inside the window; outside it a range costs one relaxed atomic load.
//
// Window (counted in step_begin calls after configure, like torch.profiler's schedule):
//   wait steps      nothing recorded
//   warmup steps    recorded and thrown away (first-touch, caches, allocator)
//   active steps    recorded; after the last one the report is built and written:
//                     <out_dir>/profile.json  ops, phases, steps, memory
//                     <out_dir>/trace.json    Chrome Trace Event Format (open in Perfetto)
//                   and the per-op table and memory report are printed to stdout.
//
// Op time: a range of phase Op counts its time minus the time of Op ranges nested inside it, so
// the op times of a step add up to the time covered by ops; the rest of the step is reported as
// "not covered by any op" (launch gaps, host work, synchronisation, unannotated code). Ranges of
// other phases (forward, backward, layer, ...) are listed with their inclusive time.
//
// Typical trainer use:
//   kd::profiler::configure({.enabled = true, .wait = 5, .warmup = 2, .active = 5,
//                            .out_dir = run_dir});
//   for (step ...) {
//     kd::profiler::StepScope s(step);   // step_begin / step_end, plus the NVTX "step" range
//     ...                                // KD_RANGE_P("teacher_forward", ...), KD_OP(...), ...
//   }
//   kd::profiler::finish();              // reports a window cut short by the end of training
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace kd {

class Json;

// What a range belongs to. Also the NVTX category (id = value + 1) of the `kdengine` domain.
enum class Phase : uint8_t {
  Step,
  Data,
  TeacherForward,
  StudentForward,
  Loss,
  StudentBackward,
  Optimizer,
  Eval,
  Checkpoint,
  Layer,
  Op,
  Comm,  // data-parallel collectives (engine/train/comm.cpp)
};
inline constexpr int kNumPhases = 12;
// "step", "data", "teacher_forward", "student_forward", "loss", "student_backward", "optimizer",
// "eval", "checkpoint", "layer", "op", "comm".
const char* phase_name(Phase p);

// Memory categories of the report.
enum class Mem : uint8_t {
  Weights,
  Gradients,
  MasterWeights,
  OptimizerMoments,
  Activations,
  TeacherWeights,
  TeacherScratch,
  LossWorkspace,
  Other,
};
inline constexpr int kNumMem = 9;
// "weights", "gradients", "master_weights", "optimizer_moments", "activations",
// "teacher_weights", "teacher_scratch", "loss_workspace", "other".
const char* mem_name(Mem m);

namespace profiler {

struct Config {
  bool enabled = false;
  int wait = 0;    // steps skipped first
  int warmup = 1;  // steps recorded and discarded
  int active = 3;  // steps reported
  std::string out_dir = ".";
  bool print = true;  // print the table and memory report to stdout at the end of the window
};

// Starts a new window (forgets any previous one). Memory accounting is kept.
void configure(const Config& cfg);
void configure(bool enabled, int wait, int warmup, int active, const std::string& out_dir = ".");

// Bracket one optimizer step (everything the step does, micro-batches included). Also open and
// close the NVTX range "step" (payload = step), whether or not the profiler is enabled.
void step_begin(int64_t step);
void step_end(int64_t step);
class StepScope {
 public:
  explicit StepScope(int64_t step) : step_(step) { step_begin(step); }
  ~StepScope() { step_end(step_); }
  StepScope(const StepScope&) = delete;
  StepScope& operator=(const StepScope&) = delete;

 private:
  int64_t step_;
};

// Ends the window early (training stopped inside it): reports the active steps recorded so far,
// if any. Idempotent.
void finish();

// Forgets the window, the last report, the memory accounting and any clock (for tests).
void reset();

// ---- Work attribution -------------------------------------------------------------------------
// Adds FLOPs and bytes moved to the innermost range open on this thread (normally the op that is
// running). Free when not recording. KD_OP(name, flops, bytes) does the same in one line.
inline void add_work(double flops, double bytes);

// ---- Timing source ----------------------------------------------------------------------------
// The CPU path stamps ranges with std::chrono::steady_clock. A device backend supplies a Clock
// whose mark() records an event on its stream and returns a token; at step_end the profiler hands
// all tokens of the step to resolve() at once (one synchronisation per step), which must replace
// each token with nanoseconds on one common timeline.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t mark() = 0;
  virtual void resolve(std::vector<int64_t>& tokens) { (void)tokens; }
  virtual const char* name() const = 0;
};
// nullptr restores the CPU clock. The clock must outlive its use; change it between steps only.
void set_clock(Clock* clock);

// ---- Memory accounting (always on) ------------------------------------------------------------
void memory_alloc(Mem m, size_t bytes);
void memory_free(Mem m, size_t bytes);
void memory_set(Mem m, size_t bytes);  // sets the current size of a category
// What the device says (cudaMemGetInfo), and the caller's estimate of the largest micro-batch that
// would fit, with a short note on how it was estimated.
void set_device_memory(size_t free_bytes, size_t total_bytes);
void set_fit_estimate(int64_t max_micro_batch, const std::string& note);

struct MemoryStats {
  size_t current[kNumMem] = {};
  size_t peak[kNumMem] = {};
  size_t total_current = 0;
  size_t total_peak = 0;  // peak of the sum (not the sum of the peaks)
  bool has_device = false;
  size_t device_free = 0, device_total = 0;
  int64_t max_micro_batch = -1;  // -1: no estimate
  std::string fit_note;
};
MemoryStats memory_stats();
std::string memory_report_text(const MemoryStats& m);
Json memory_json(const MemoryStats& m);

// ---- Results ----------------------------------------------------------------------------------
struct Row {
  std::string name;
  Phase phase = Phase::Op;
  int64_t calls = 0;
  double total_ms = 0;  // op time for ops (nested ops excluded), inclusive time for other phases
  double mean_us = 0;
  double pct_of_step = 0;
  double flops = 0, bytes = 0;
  double gflops = 0, gbps = 0;  // per second of this row's time; 0 when no work was reported
};
struct StepTime {
  int64_t step = 0;
  double time_ms = 0, op_ms = 0, uncovered_ms = 0;
};
struct Report {
  std::string clock;
  int64_t first_step = 0, last_step = 0;
  std::vector<StepTime> steps;
  double step_ms = 0;  // total over the active steps
  double op_ms = 0;
  double uncovered_ms = 0, uncovered_pct = 0;
  std::vector<Row> ops;     // phase Op, by time, largest first
  std::vector<Row> phases;  // all other phases, by time
  MemoryStats memory;
  std::string out_dir;
};
// The report of the last finished window, or nullptr.
const Report* last_report();
std::string format_table(const Report& r);
Json report_json(const Report& r);

// ---- Used by engine/base/trace.h
// -------------------------------------------------------------------
namespace detail {
extern std::atomic<bool> g_recording;
uint32_t register_site(const char* name, Phase phase);
// Returns a handle for range_end, or -1 when the range was not recorded.
int64_t range_begin(uint32_t site, int64_t payload, bool has_payload);
void range_end(int64_t handle);
void add_work_slow(double flops, double bytes);
}  // namespace detail

inline bool recording() {
  return detail::g_recording.load(std::memory_order_relaxed);
}
inline void add_work(double flops, double bytes) {
  if (recording()) detail::add_work_slow(flops, bytes);
}

}  // namespace profiler
}  // namespace kd
