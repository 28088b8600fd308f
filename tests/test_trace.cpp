// KD_RANGE: NVTX ranges in the kdengine domain (checked through the recorder injection library,
// tests/nvtx_recorder.cpp) and the same names in the built-in profiler.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "engine/base/json.h"
#include "engine/base/profiler.h"
#include "engine/base/trace.h"
#include "engine/io/recipe.h"
#include "engine/train/trainer.h"

namespace fs = std::filesystem;
using kd::Phase;

namespace {

constexpr int kStudentLayers = 1;
constexpr int kTeacherLayers = 2;
constexpr int kSteps = 2;
constexpr int kMicroBatch = 2;  // the teacher's forward runs one sequence at a time

std::string tiny_recipe(const fs::path& dir, const std::string& name, int layers, int steps,
                        const std::string& extra) {
  std::ostringstream r;
  r << "[run]\nname = \"" << name << "\"\nout_dir = \"" << (dir / name).string()
    << "\"\ndevice = \"cpu\"\n\n[data]\ntrain = \"" << (dir / "corpus.txt").string()
    << "\"\n\n[student]\nn_layer = " << layers
    << "\nn_head = 2\nn_embd = 16\nblock_size = 16\n\n[train]\nmicro_batch = " << kMicroBatch
    << "\nseq_len = 16\n"
       "max_steps = "
    << steps << "\neval_every = 0\neval_batches = 1\n\n[log]\nevery = 1\n\n"
    << extra;
  const fs::path p = dir / (name + ".toml");
  std::ofstream(p) << r.str();
  return p.string();
}

// The workload whose ranges are checked: a real CPU distillation run. A 2-layer teacher is trained
// for one step, then a 1-layer student is distilled from it for kSteps optimizer steps.
// `profile` adds a [profile] window over the student's steps.
void run_workload(bool profile = false) {
  const fs::path dir = fs::temp_directory_path() / ("kd_trace_run." + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string text;
  for (int i = 0; text.size() < 20000; ++i)
    text += "to be or not to be, that is " + std::to_string(i % 7) + "\n";
  std::ofstream(dir / "corpus.txt") << text;
  std::ostringstream sink;
  kd::train(kd::load_recipe(tiny_recipe(dir, "teacher", kTeacherLayers, 1, "")), sink);
  std::string extra = "[teacher]\ncheckpoint = \"" + (dir / "teacher" / "final").string() + "\"\n";
  if (profile)
    extra +=
        "\n[profile]\nenabled = true\nwait = 0\nwarmup = 0\nactive = " + std::to_string(kSteps) +
        "\n";
  // One more step than the window, so the final evaluation falls outside it.
  kd::train(kd::load_recipe(tiny_recipe(dir, "student", kStudentLayers, kSteps + 1, extra)), sink);
  fs::remove_all(dir);
}

// Names every run must produce.
const std::set<std::string> kExpectedNames = {"step",
                                              "data",
                                              "teacher_forward",
                                              "student_forward",
                                              "loss",
                                              "layer",
                                              "attention_forward",
                                              "matmul_forward",
                                              "student_backward",
                                              "optimizer",
                                              "kd_loss",
                                              "adamw_update",
                                              "eval",
                                              "checkpoint"};

struct Push {
  std::string domain, kind, name, parent;
  int depth = 0;
  uint32_t category = 0;
  std::string payload;
};

std::vector<std::string> split_tabs(const std::string& line) {
  std::vector<std::string> out;
  std::stringstream ss(line);
  std::string f;
  while (std::getline(ss, f, '\t')) out.push_back(f);
  if (!line.empty() && line.back() == '\t') out.emplace_back();
  return out;
}

// Leaves in $KD_KEEP_TB_DIR a run that was cut short twice and resumed each time, for ctest's
// tensorboard_resume_python_check: three event files, and log.jsonl holding each step once.
// Run 1 trains 12 steps (checkpoints at 4, 8, 12); the checkpoints past step 4 are then deleted, as
// if it had been killed right after step 12's log but with only step 4 saved, and the run resumes
// from step 4 with another learning rate (so its points differ from the orphaned ones); then
// again from step 8 with a third. TensorBoard must show the last values of every step, once.
TEST(Trace, ResumedRunForTensorBoard) {
  const char* keep = std::getenv("KD_KEEP_TB_DIR");
  if (!keep || !*keep)
    GTEST_SKIP() << "set KD_KEEP_TB_DIR (ctest's tensorboard_resume_run_dir does)";
  const fs::path dir = fs::temp_directory_path() / ("kd_tb_resume." + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string text;
  for (int i = 0; text.size() < 20000; ++i)
    text += "to be or not to be " + std::to_string(i % 7) + "\n";
  std::ofstream(dir / "corpus.txt") << text;
  fs::remove_all(keep);
  const std::string recipe =
      tiny_recipe(dir, "tb", 1, 12, "[checkpoint]\nevery = 4\nkeep_last = 5\n");
  const fs::path out(keep);
  auto train = [&](std::vector<std::string> sets) {
    sets.push_back("run.out_dir=\"" + out.string() + "\"");
    sets.push_back("train.eval_every=3");
    sets.push_back("log.tensorboard=true");
    std::ostringstream sink;
    kd::train(kd::load_recipe(recipe, sets), sink);
    return sink.str();
  };
  train({"optim.lr=1e-3"});
  fs::remove_all(out / "step_000008");
  fs::remove_all(out / "step_000012");
  EXPECT_NE(train({"optim.lr=2e-3", "checkpoint.resume=true"}).find("at step 4"),
            std::string::npos);
  fs::remove_all(out / "step_000012");
  EXPECT_NE(train({"optim.lr=3e-3", "checkpoint.resume=true"}).find("at step 8"),
            std::string::npos);
  size_t files = 0;
  for (const auto& e : fs::directory_iterator(out / "tb")) files += e.is_regular_file();
  EXPECT_EQ(files, 3u);
  std::ifstream log(out / "log.jsonl");
  std::string line;
  int train_records = 0;
  while (std::getline(log, line)) train_records += line.find("\"loss\"") != std::string::npos;
  EXPECT_EQ(train_records, 12);
  fs::remove_all(dir);
}

// The profiler numbers steps as the log does, from 1: with wait = 1 and warmup = 1 the active
// window of 2 steps is the log's steps 3 and 4.
TEST(Trace, ProfilerCountsStepsFromOneLikeTheLog) {
  const fs::path dir = fs::temp_directory_path() / ("kd_prof_steps." + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string text;
  for (int i = 0; text.size() < 20000; ++i)
    text += "all the world's a stage " + std::to_string(i % 3) + "\n";
  std::ofstream(dir / "corpus.txt") << text;
  std::ostringstream out;
  kd::train(kd::load_recipe(tiny_recipe(
                dir, "p", 1, 5, "[profile]\nenabled = true\nwait = 1\nwarmup = 1\nactive = 2\n")),
            out);
  std::ifstream f(dir / "p" / "profile.json");
  const std::string pj((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const kd::Json j = kd::Json::parse(pj);
  EXPECT_EQ(j.at("first_step").as_int(), 3) << pj.substr(0, 300);
  EXPECT_EQ(j.at("last_step").as_int(), 4);
  fs::remove_all(dir);
}

}  // namespace

TEST(Trace, CategoryIdsFollowPhases) {
  EXPECT_EQ(kd::trace::category(Phase::Step).get_id(), 1u);
  EXPECT_EQ(kd::trace::category(Phase::Layer).get_id(), 10u);
  EXPECT_EQ(kd::trace::category(Phase::Op).get_id(), 11u);
}

TEST(Trace, RangesWorkWithoutAToolOrProfiler) {
  kd::profiler::reset();
  EXPECT_FALSE(kd::profiler::recording());
  run_workload();  // NVTX calls are no-ops without a tool; nothing is recorded
  EXPECT_EQ(kd::profiler::last_report(), nullptr);
}

TEST(Trace, ProfilerSeesTheSameNames) {
  kd::profiler::reset();
  run_workload(/*profile=*/true);
  const kd::profiler::Report* r = kd::profiler::last_report();
  ASSERT_NE(r, nullptr);
  std::set<std::string> names = {"step", "eval", "checkpoint"};  // the step is the denominator;
  // the final evaluation and checkpoint fall outside the window
  std::map<std::string, int64_t> calls;
  for (const auto* rows : {&r->ops, &r->phases})
    for (const auto& row : *rows) {
      names.insert(row.name);
      calls[row.name] = row.calls;
    }
  for (const auto& n : kExpectedNames) EXPECT_TRUE(names.count(n)) << n;
  // Per step: 4 products per layer and the LM head, in the student's and the teacher's forward
  // (the teacher's layers once per sequence); the MLP's first product is the fused
  // matmul_gelu_forward.
  EXPECT_EQ(calls["matmul_forward"],
            kSteps * ((3 * kStudentLayers + 1) + (3 * kTeacherLayers * kMicroBatch + 1)));
  EXPECT_EQ(calls["matmul_gelu_forward"], kSteps * (kStudentLayers + kTeacherLayers * kMicroBatch));
  // Layers: the student's forward and backward, the teacher's forward of each sequence.
  EXPECT_EQ(calls["layer"], kSteps * (2 * kStudentLayers + kTeacherLayers * kMicroBatch));
  EXPECT_EQ(calls["adamw_update"], kSteps);
  kd::profiler::reset();
}

TEST(NvtxInjection, RangesInKdengineDomain) {
  const char* inj = std::getenv("NVTX_INJECTION64_PATH");
  const char* log_path = std::getenv("KD_NVTX_LOG");
  if (!inj || !*inj || !log_path || !*log_path)
    GTEST_SKIP() << "needs NVTX_INJECTION64_PATH (the kd_nvtx_recorder library) and KD_NVTX_LOG; "
                    "ctest's nvtx_ranges test sets both";

  run_workload();

  std::ifstream f(log_path);
  ASSERT_TRUE(f) << "the recorder wrote no log at " << log_path
                 << " (was the injection library loaded?)";
  std::set<std::string> domains;
  std::map<uint32_t, std::string> categories;  // in kdengine
  std::set<std::string> registered;            // in kdengine
  std::vector<Push> pushes;
  std::map<std::string, std::vector<std::string>> stacks;  // domain -> open names (one thread)
  std::string line;
  bool saw_init = false;
  while (std::getline(f, line)) {
    const auto v = split_tabs(line);
    ASSERT_FALSE(v.empty());
    if (v[0] == "init") {
      saw_init = true;
    } else if (v[0] == "domain") {
      domains.insert(v.at(1));
    } else if (v[0] == "category") {
      if (v.at(1) == "kdengine") categories[std::stoul(v.at(2))] = v.at(3);
    } else if (v[0] == "string") {
      if (v.at(1) == "kdengine") registered.insert(v.at(2));
    } else if (v[0] == "push") {
      ASSERT_EQ(v.size(), 7u) << line;
      auto& stack = stacks[v[1]];
      Push p{v[1],
             v[3],
             v[4],
             stack.empty() ? "" : stack.back(),
             std::stoi(v[2]),
             static_cast<uint32_t>(std::stoul(v[5])),
             v[6]};
      EXPECT_EQ(p.depth, static_cast<int>(stack.size()) + 1) << line;
      stack.push_back(p.name);
      pushes.push_back(p);
    } else if (v[0] == "pop") {
      auto& stack = stacks[v.at(1)];
      ASSERT_FALSE(stack.empty()) << "pop without a push: " << line;
      EXPECT_EQ(std::stoi(v.at(2)), static_cast<int>(stack.size())) << line;
      stack.pop_back();
    }
  }
  EXPECT_TRUE(saw_init);
  EXPECT_TRUE(domains.count("kdengine"));
  for (const auto& [d, stack] : stacks) EXPECT_TRUE(stack.empty()) << d << " left ranges open";

  // Every phase is a named category of the domain.
  for (int i = 0; i < kd::kNumPhases; ++i)
    EXPECT_EQ(categories[static_cast<uint32_t>(i + 1)], kd::phase_name(static_cast<Phase>(i)));

  const std::regex stable("[a-z][a-z_]*");
  std::set<std::string> seen;
  std::map<std::string, std::set<std::string>> parents;
  std::map<std::string, std::set<std::string>> payloads;
  for (const Push& p : pushes) {
    EXPECT_EQ(p.domain, "kdengine") << p.name << " pushed outside the kdengine domain";
    EXPECT_EQ(p.kind, "reg") << p.name << " is not a registered string";
    EXPECT_TRUE(registered.count(p.name)) << p.name;
    EXPECT_TRUE(std::regex_match(p.name, stable)) << "unstable range name: " << p.name;
    EXPECT_TRUE(categories.count(p.category)) << p.name << " has category " << p.category;
    seen.insert(p.name);
    parents[p.name].insert(p.parent);
    payloads[p.name].insert(p.payload);
  }
  for (const auto& n : kExpectedNames) EXPECT_TRUE(seen.count(n)) << "missing range " << n;

  // Nesting: the step is outermost, the phases sit in the step, layers in forward/backward passes.
  EXPECT_EQ(parents["step"], std::set<std::string>{""});
  for (const char* phase :
       {"data", "teacher_forward", "student_forward", "loss", "student_backward", "optimizer"})
    EXPECT_EQ(parents[phase], std::set<std::string>{"step"}) << phase;
  for (const auto& p : parents["layer"])
    EXPECT_TRUE(p == "teacher_forward" || p == "student_forward" || p == "student_backward" ||
                p == "eval")
        << p;
  for (const auto& p : parents["attention_forward"]) EXPECT_EQ(p, "layer");
  for (const auto& p : parents["kd_loss"]) EXPECT_TRUE(p == "loss" || p == "eval") << p;

  // Categories and payloads carry what names must not.
  for (const Push& p : pushes) {
    if (p.name == "layer") {
      EXPECT_EQ(categories[p.category], "layer");
    }
    if (p.name == "step") {
      EXPECT_EQ(categories[p.category], "step");
    }
    if (p.name == "attention_forward") {
      EXPECT_EQ(categories[p.category], "op");
    }
  }
  std::set<std::string> want_layers, want_steps;
  for (int l = 0; l < std::max(kStudentLayers, kTeacherLayers); ++l)
    want_layers.insert(std::to_string(l));
  for (int s = 1; s <= kSteps + 1; ++s) want_steps.insert(std::to_string(s));  // from 1, as the log
  EXPECT_EQ(payloads["layer"], want_layers);
  EXPECT_EQ(payloads["step"], want_steps);
  EXPECT_EQ(payloads["attention_forward"], std::set<std::string>{"-"});  // KD_OP: no payload
}

// Leaves a real training run (log.jsonl + TensorBoard events) in $KD_KEEP_TB_DIR for ctest's
// tensorboard_python_check, which reads the events with TensorBoard's own reader.
TEST(Trace, TrainingRunForTensorBoard) {
  const char* keep = std::getenv("KD_KEEP_TB_DIR");
  if (!keep || !*keep) GTEST_SKIP() << "set KD_KEEP_TB_DIR (ctest's tensorboard_run_dir does)";
  const fs::path dir = fs::temp_directory_path() / ("kd_tb_run." + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string text;
  for (int i = 0; text.size() < 20000; ++i)
    text += "a rose by any other name " + std::to_string(i % 5) + "\n";
  std::ofstream(dir / "corpus.txt") << text;
  fs::remove_all(keep);
  std::string recipe = tiny_recipe(dir, "tb", 1, 12, "");
  std::ostringstream sink;
  kd::train(kd::load_recipe(recipe, {"run.out_dir=\"" + std::string(keep) + "\"",
                                     "train.eval_every=4", "log.tensorboard=true"}),
            sink);
  EXPECT_TRUE(fs::exists(fs::path(keep) / "log.jsonl"));
  EXPECT_TRUE(fs::exists(fs::path(keep) / "tb"));
  fs::remove_all(dir);
}
