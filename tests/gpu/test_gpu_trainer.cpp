// The trainer end to end on the GPU (skipped without one): `kd::train` with device = "cuda" on a
// tiny distillation recipe. Checks the wiring the unit tests of the GPU step do not: the loss of
// the first logged step against the CPU trainer on the same recipe, the held-out loss falling, the
// profiler's CUDA-event clock and memory report, and a checkpoint that loads and resumes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/base/json.h"
#include "engine/io/recipe.h"
#include "engine/train/device.h"
#include "engine/train/trainer.h"
#include "model/checkpoint.h"
#include "model/gpt2_cuda.h"

namespace fs = std::filesystem;

namespace {

class GpuTrainer : public ::testing::Test {
 protected:
  void SetUp() override {
    const kd::DeviceInfo& dev = kd::probe_device();
    if (!dev.cuda_usable) GTEST_SKIP() << "no usable GPU: " << dev.reason;
    dir_ = fs::temp_directory_path() / ("kd_gpu_trainer_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::string text;
    const char* words[] = {"the quick ", "brown fox ", "jumps over ", "the lazy dog", ".\n"};
    for (unsigned i = 0; text.size() < 200000; ++i) text += words[(i * 7 + i / 3) % 5];
    std::ofstream(dir_ / "corpus.txt") << text;
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  // Head size 64 (the GPU attention's smallest): n_embd 64 with 1 head, or 128 with 2.
  std::string recipe(const std::string& name, int embd, int heads, const std::string& extra) {
    std::ostringstream r;
    r << "[run]\nname = \"" << name << "\"\nout_dir = \"" << (dir_ / name).string()
      << "\"\nseed = 3\ndevice = \"cuda\"\n\n[data]\ntrain = \"" << (dir_ / "corpus.txt").string()
      << "\"\n\n[student]\nn_layer = 2\nn_head = " << heads << "\nn_embd = " << embd
      << "\nblock_size = 64\n\n[train]\nmicro_batch = 8\nseq_len = 64\ngrad_accum = 2\n"
         "max_steps = 60\neval_every = 20\neval_batches = 4\n\n[optim]\nlr = 3e-3\n\n"
         "[schedule]\nwarmup_steps = 5\n\n[checkpoint]\nevery = 30\n\n[log]\nevery = 1\n\n"
      << extra;
    const fs::path p = dir_ / (name + ".toml");
    std::ofstream(p) << r.str();
    return p.string();
  }

  static std::vector<kd::Json> log(const fs::path& run) {
    std::ifstream f(run / "log.jsonl");
    std::vector<kd::Json> out;
    std::string line;
    while (std::getline(f, line)) out.push_back(kd::Json::parse(line));
    return out;
  }

  fs::path dir_;
};

TEST_F(GpuTrainer, DistillationRunsMatchesTheCpuAndResumes) {
  std::ostringstream sink;
  kd::train(kd::load_recipe(recipe("teacher", 128, 2, "")), sink);
  const std::string kd_extra =
      "[teacher]\ncheckpoint = \"" + (dir_ / "teacher" / "final").string() +
      "\"\n\n[profile]\nenabled = true\nwait = 2\nwarmup = 1\nactive = 3\n";
  kd::TrainSummary g = kd::train(kd::load_recipe(recipe("kd_gpu", 64, 1, kd_extra)), sink);
  EXPECT_EQ(g.steps_done, 60);

  // The same recipe on the CPU: the first step's loss agrees to bf16 accuracy.
  kd::train(kd::load_recipe(recipe("kd_cpu", 64, 1, kd_extra),
                            {"run.device=cpu", "profile.enabled=false"}),
            sink);
  const auto lg = log(dir_ / "kd_gpu"), lc = log(dir_ / "kd_cpu");
  ASSERT_FALSE(lg.empty());
  ASSERT_FALSE(lc.empty());
  const double g0 = lg[0].at("loss").as_number(), c0 = lc[0].at("loss").as_number();
  EXPECT_NEAR(g0, c0, 2e-2 * std::fabs(c0)) << "first-step loss, GPU vs CPU";

  // Held-out loss falls over the run.
  std::vector<double> val;
  for (const auto& j : lg)
    if (j.find("val_loss")) val.push_back(j.at("val_loss").as_number());
  ASSERT_GE(val.size(), 2u);
  EXPECT_LT(val.back(), val.front());
  EXPECT_TRUE(std::isfinite(g.final_val_loss));

  // The profiler ran on CUDA events and reported device memory.
  std::ifstream pf(dir_ / "kd_gpu" / "profile.json");
  ASSERT_TRUE(pf) << "no profile.json";
  std::stringstream ps;
  ps << pf.rdbuf();
  EXPECT_NE(ps.str().find("cuda_events"), std::string::npos);
  // The memory report is the GPU's plan (bf16 weights, fp32 master, gradients and moments, the
  // planned activations), not the CPU's fp32 numbers.
  const kd::GPT2Config sc = kd::load_model((dir_ / "kd_gpu" / "step_000060").string()).config();
  const kd::GPT2CudaMemory plan = kd::GPT2Cuda::plan(sc, 8, 64, kd::GPT2Cuda::Role::Student);
  const kd::Json mem = kd::Json::parse(ps.str()).at("memory").at("categories");
  auto bytes = [&](const char* cat) { return mem.at(cat).at("current_bytes").as_number(); };
  const double P = double(kd::GPT2Cuda::device_config(sc).num_parameters());  // wte padded
  EXPECT_EQ(bytes("weights"), double(plan.weights));
  EXPECT_EQ(bytes("weights"), 2 * P);
  EXPECT_EQ(bytes("master_weights"), 4 * P);
  EXPECT_EQ(bytes("gradients"), 4 * P);
  EXPECT_EQ(bytes("optimizer_moments"), 8 * P);
  EXPECT_EQ(bytes("activations"), double(plan.activations));
  EXPECT_GT(bytes("teacher_weights"), 0.0);

  // The checkpoint loads, and resuming from step 30 reproduces the last 30 steps' weights.
  kd::GPT2 at60 = kd::load_model((dir_ / "kd_gpu" / "step_000060").string());
  fs::remove_all(dir_ / "kd_gpu" / "step_000060");
  fs::remove_all(dir_ / "kd_gpu" / "final");
  kd::train(kd::load_recipe(recipe("kd_gpu", 64, 1, kd_extra),
                            {"checkpoint.resume=true", "profile.enabled=false"}),
            sink);
  kd::GPT2 again = kd::load_model((dir_ / "kd_gpu" / "step_000060").string());
  ASSERT_EQ(at60.params.size(), again.params.size());
  EXPECT_EQ(at60.params, again.params) << "GPU resume is not bitwise reproducible";
}

TEST_F(GpuTrainer, CudaDeviceFailsClearlyForUnsupportedHeadSize) {
  std::ostringstream sink;
  // Head size 32: the GPU attention supports 64 and 128 only.
  try {
    kd::train(kd::load_recipe(recipe("hs32", 64, 2, "")), sink);
    FAIL() << "expected a bad-input error";
  } catch (const kd::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("head sizes 64 and 128"), std::string::npos) << e.what();
  }
}

}  // namespace
