// Data-parallel training on GPU ranks over NCCL (docs/distributed.md, "GPU ranks (NCCL)"), run as a
// user runs it: `mpirun -np N kdengine train` with run.device = "cuda", one rank per GPU.
//
// Two builds of this file:
//   emu_test_gpu_distributed (label emu): kdengine over the CUDA emulator, 2 ranks with 2 emulated
//     devices (KDEMU_DEVICES=2) and the emulator's NCCL over MPI (tools/kdemu/nccl.cpp);
//   gpu_test_gpu_distributed (label gpu): the real kdengine and NCCL, one rank per visible GPU,
//     skipped with fewer than 2 GPUs (tools/gpu_check.sh runs it under its multi-GPU step).
// Skipped where mpirun is missing or kdengine is built without NCCL (no MPI or no nccl.h).
//
// What must hold: N ranks with grad_accum 1 give the losses, gradient norms and final weights of
// 1 rank with grad_accum N (the same global batch, the same sequences); the gradients do go through
// NCCL (NCCL_DEBUG's collective log); N ranks are bitwise reproducible; more ranks than GPUs on a
// node is a clear error.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/base/json.h"
#include "engine/base/rng.h"
#include "engine/train/device.h"
#include "model/checkpoint.h"
#include "tests/shell_util.h"

namespace fs = std::filesystem;

namespace {

const std::string kBin = KD_KDENGINE_BIN;

using kd::testing::Result;
using kd::testing::sh;

std::string bytes_of(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The log's per-step records: loss and gradient norm.
struct StepLog {
  std::vector<double> loss, norm;
};
StepLog read_log(const fs::path& log) {
  StepLog s;
  std::ifstream f(log);
  std::string line;
  while (std::getline(f, line)) {
    kd::Json j = kd::Json::parse(line);
    const kd::Json* l = j.find("loss");
    const kd::Json* n = j.find("grad_norm");
    if (l == nullptr || n == nullptr) continue;
    s.loss.push_back(l->as_number());
    s.norm.push_back(n->as_number());
  }
  return s;
}

size_t count_of(const std::string& text, const std::string& word) {
  size_t n = 0;
  for (size_t p = text.find(word); p != std::string::npos; p = text.find(word, p + 1)) ++n;
  return n;
}

class GpuDistributed : public ::testing::Test {
 protected:
  void SetUp() override {
#ifdef KD_BUILT_WITHOUT_NCCL
    GTEST_SKIP() << "kdengine is built without NCCL (it needs the CUDA backend, MPI and nccl.h)";
#endif
    if (sh("command -v mpirun").status != 0) GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
#ifdef KD_EMULATED_GPUS
    ranks_ = KD_EMULATED_GPUS;
    env_ = "KDEMU_DEVICES=" + std::to_string(ranks_) + " ";
#else
    const kd::DeviceInfo& dev = kd::probe_device();
    if (!dev.cuda_usable) GTEST_SKIP() << "no usable GPU: " << dev.reason;
    if (dev.device_count < 2)
      GTEST_SKIP() << "one rank per GPU needs at least 2 GPUs; " << dev.device_count << " visible";
    ranks_ = dev.device_count;
#endif
    dir_ = fs::temp_directory_path() /
           ("kd_gpu_dist_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
            std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::string text;
    kd::Rng rng(7);
    const char* words[] = {"alpha ", "beta ", "gamma ", "delta\n", "epsilon, ", "zeta. "};
    while (text.size() < 40000) text += words[rng.below(6)];
    std::ofstream(dir_ / "corpus.txt") << text;
  }
  void TearDown() override {
    if (!dir_.empty()) fs::remove_all(dir_);
  }

  // mpirun as root needs its consent variables; --oversubscribe lets the ranks share fewer cores.
  // NCCL_DEBUG=INFO with the COLL subsystem logs every collective (NCCL's log and the emulator's
  // both name it "AllReduce"). `timeout` turns a hang into a failure.
  std::string mpirun(int np) const {
    return env_ +
           "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 "
           "NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=COLL timeout 120 mpirun -np " +
           std::to_string(np) +
           " --oversubscribe -x OMP_NUM_THREADS -x NCCL_DEBUG -x NCCL_DEBUG_SUBSYS" +
           (env_.empty() ? "" : " -x KDEMU_DEVICES") + " ";
  }

  // A tiny student (head size 64, the GPU attention's smallest), distilled on the GPU from a
  // teacher of the same shape trained here for 3 steps on the CPU.
  fs::path recipe(const std::string& name, const std::string& extra = "") {
    const fs::path p = dir_ / (name + ".toml");
    std::ofstream(p)
        << "[run]\nname = \"t\"\nout_dir = \"" << (dir_ / "out").string()
        << "\"\ndevice = \"cuda\"\nseed = 3\nthreads = 1\n\n[data]\ntrain = \"corpus.txt\"\n\n"
           "[student]\nn_layer = 2\nn_head = 1\nn_embd = 64\nblock_size = 16\n\n"
           "[train]\nmicro_batch = 2\nseq_len = 16\nmax_steps = 6\neval_every = 0\n"
           "eval_batches = 1\n\n[optim]\nlr = 3e-3\n\n[log]\nevery = 1\n"
        << extra;
    return p;
  }
  std::string kd_extra() {
    const fs::path t = dir_ / "teacher";
    Result r =
        sh(kBin + " train " + recipe("teacher").string() + " --set run.out_dir='\"" + t.string() +
           "\"' --set run.device='\"cpu\"' --set run.seed=11 " + "--set train.max_steps=3");
    EXPECT_EQ(r.status, 0) << r.output;
    return "\n[teacher]\ncheckpoint = \"" + (t / "final").string() +
           "\"\n\n[loss]\nce_weight = 0.5\nkd_weight = 0.5\ntemperature = 2.0\n";
  }
  // `np` ranks (np = 0: a plain process, no mpirun) into dir_/out_name.
  Result train(int np, const fs::path& rec, const std::string& out_name,
               const std::string& sets = "") {
    return sh((np == 0 ? env_ : mpirun(np)) + kBin + " train " + rec.string() +
              " --set run.out_dir='\"" + (dir_ / out_name).string() + "\"' " + sets);
  }

  int ranks_ = 2;
  std::string env_;  // the emulator's device count, for every launch
  fs::path dir_;
};

// The same global batch (micro_batch 2 x grad_accum N x 1 rank = 2 x 1 x N ranks), the same
// sequences, the same kernels on the same micro-batches: the runs differ only in how the fp32
// gradients of the micro-batches are added. One rank adds micro-batch 1's backward into the buffer
// already holding micro-batch 0's (inside the kernels that accumulate); N ranks form each
// micro-batch's gradient on its own and NCCL adds the buffers. That is a few fp32 ulps per gradient
// element (2^-23 relative) and a few ulps of the double loss sums.
//
// Tolerances, derived:
//  - loss and gradient norm, 1e-4 relative: the fp32 order changes them by ~1e-7. If a 1-ulp
//    difference of an fp32 master weight rounds its bf16 copy the other way (a flip of one bf16
//    ulp, 2^-8 relative, in one of ~10^5 weights), the next forward moves by far less than 1e-4.
//    A wrong share of the batch moves the loss by ~1e-2, and a loss normalised by one rank's
//    tokens instead of the global step's doubles the gradient norm.
//  - weights, 2^-8 x (sum of the learning rates): AdamW moves a weight by at most ~lr per step
//    (m_hat / sqrt(v_hat) is of order 1), so one bf16 ulp of the whole update is the most a bf16
//    flip's changed gradients can shift a weight; fp32 order alone gives ~1e-6 of that. A missing
//    or wrong gradient sum makes a rank follow its own gradients: differences of the order of the
//    update itself, hundreds of times this bound, and the test checks that training moved the
//    weights 50 times further than the bound.
TEST_F(GpuDistributed, RanksMatchOneRankWithTheSameGlobalBatch) {
  const fs::path rec =
      recipe("kd", kd_extra() + "\n[profile]\nenabled = true\nwait = 1\nwarmup = 1\nactive = 2\n");
  Result one = train(0, rec, "one", "--set train.grad_accum=" + std::to_string(ranks_));
  ASSERT_EQ(one.status, 0) << one.output;
  Result many = train(ranks_, rec, "many", "--set train.grad_accum=1");
  ASSERT_EQ(many.status, 0) << many.output;
  EXPECT_NE(many.output.find("data parallel: " + std::to_string(ranks_) + " ranks"),
            std::string::npos)
      << many.output;
  // The gradients went through NCCL: one all-reduce per step on every rank.
  EXPECT_GE(count_of(many.output, "AllReduce"), size_t(6 * ranks_)) << many.output;
  // ... in the profile's comm phase (rank 0's profile.json)
  const std::string prof = bytes_of(dir_ / "many" / "profile.json");
  EXPECT_NE(prof.find("\"comm_grads\""), std::string::npos) << prof.substr(0, 2000);

  const StepLog l1 = read_log(dir_ / "one" / "log.jsonl");
  const StepLog ln = read_log(dir_ / "many" / "log.jsonl");
  ASSERT_EQ(l1.loss.size(), 6u);
  ASSERT_EQ(ln.loss.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    std::printf("step %zu: loss 1 rank %.9f, %d ranks %.9f; norm %.9f, %.9f\n", i + 1, l1.loss[i],
                ranks_, ln.loss[i], l1.norm[i], ln.norm[i]);
    EXPECT_NEAR(ln.loss[i], l1.loss[i], 1e-4 * l1.loss[i]) << "step " << i + 1;
    EXPECT_NEAR(ln.norm[i], l1.norm[i], 1e-4 * l1.norm[i]) << "step " << i + 1;
  }

  const kd::GPT2 a = kd::load_model((dir_ / "one" / "final").string());
  const kd::GPT2 b = kd::load_model((dir_ / "many" / "final").string());
  ASSERT_EQ(a.params.size(), b.params.size());
  kd::GPT2 start(a.config());
  start.init_random(3);
  ASSERT_EQ(start.params.size(), a.params.size());
  double max_diff = 0, moved = 0;
  size_t differ = 0;
  for (size_t i = 0; i < a.params.size(); ++i) {
    max_diff = std::max(max_diff, double(std::fabs(a.params[i] - b.params[i])));
    moved = std::max(moved, double(std::fabs(a.params[i] - start.params[i])));
    differ += a.params[i] != b.params[i];
  }
  // Learning rates of the 6 steps, as logged.
  double lr_sum = 0;
  {
    std::ifstream f(dir_ / "one" / "log.jsonl");
    std::string line;
    while (std::getline(f, line))
      if (const kd::Json* lr = kd::Json::parse(line).find("lr")) lr_sum += lr->as_number();
  }
  ASSERT_GT(lr_sum, 0);
  const double tol = std::ldexp(lr_sum, -8);
  std::printf(
      "max |w(1 rank) - w(%d ranks)| = %.3g (%zu of %zu weights differ); bound 2^-8 x sum(lr) = "
      "%.3g; max movement %.3g\n",
      ranks_, max_diff, differ, a.params.size(), tol, moved);
  EXPECT_LE(max_diff, tol);
  EXPECT_GT(moved, 50 * tol) << "training did not move the weights beyond the tolerance";
}

TEST_F(GpuDistributed, RanksAreBitwiseReproducible) {
  const fs::path rec = recipe("r");
  for (const char* o : {"a", "b"}) {
    Result r = train(ranks_, rec, o);
    ASSERT_EQ(r.status, 0) << r.output;
  }
  for (const char* f : {"model.safetensors", "optimizer.safetensors"}) {
    const std::string x = bytes_of(dir_ / "a" / "final" / f),
                      y = bytes_of(dir_ / "b" / "final" / f);
    EXPECT_FALSE(x.empty());
    EXPECT_TRUE(x == y) << f << " differs between two identical " << ranks_ << "-rank runs";
  }
  const StepLog a = read_log(dir_ / "a" / "log.jsonl"), b = read_log(dir_ / "b" / "log.jsonl");
  EXPECT_EQ(a.loss.size(), 6u);
  EXPECT_EQ(a.loss, b.loss);
  EXPECT_EQ(a.norm, b.norm);
}

// One more rank than the node has GPUs: every rank stops before allocating, naming the counts.
TEST_F(GpuDistributed, MoreRanksThanGpusIsAClearError) {
  const fs::path rec = recipe("r");
  Result r = train(ranks_ + 1, rec, "o");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("ranks 0 and " + std::to_string(ranks_) +
                          " would share one GPU: " + std::to_string(ranks_ + 1) +
                          " ranks on their node but " + std::to_string(ranks_) + " GPUs visible"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dir_ / "o" / "final"));
}

}  // namespace
