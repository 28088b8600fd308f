// Data-parallel training over MPI (docs/distributed.md), run as a user runs it: `mpirun -np 2
// kdengine train`, CPU ranks with one thread each. Skipped when mpirun is not installed.
//
// What must hold: 2 ranks with grad_accum A give the loss curve and final weights of 1 rank with
// grad_accum 2A (the same global batch, the same sequences); 2 ranks are bitwise reproducible; a
// run saved at 2 ranks resumes at 1 and one saved at 1 at 2; ZeRO-1 (the default with several
// ranks: [distributed] shard_optimizer) agrees with unsharded training, and its checkpoints hold
// the whole gathered moments; different recipes on the ranks are refused; a killed rank ends the
// job within a bounded time and the last checkpoint stays loadable.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/base/json.h"
#include "engine/base/rng.h"
#include "engine/io/safetensors.h"
#include "engine/train/backend.h"
#include "engine/train/trainer.h"
#include "model/checkpoint.h"
#include "tests/shell_util.h"

namespace fs = std::filesystem;

namespace {

const std::string kBin = KD_KDENGINE_BIN;

using kd::testing::Result;
using kd::testing::sh;

bool have_mpirun() {
  return sh("command -v mpirun").status == 0;
}

// mpirun as root needs its consent variables; --oversubscribe lets 2 ranks share fewer cores.
// `timeout` bounds every launch so a hang fails the test instead of stalling the suite.
std::string mpirun(int np) {
  return "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 timeout 120 "
         "mpirun -np " +
         std::to_string(np) + " --oversubscribe -x OMP_NUM_THREADS ";
}

std::string bytes_of(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<double> losses(const fs::path& log) {
  std::vector<double> v;
  std::ifstream f(log);
  std::string line;
  while (std::getline(f, line)) {
    kd::Json j = kd::Json::parse(line);
    if (const kd::Json* l = j.find("loss")) v.push_back(l->as_number());
  }
  return v;
}

// The shard rule every backend uses (backend.h): ceil(n / ranks) rounded up to 16 floats; the
// ranges tile [0, n) in rank order.
TEST(ShardRule, CeilOverRanksRoundedUpToSixteenFloats) {
  EXPECT_EQ(kd::shard_floats(100, 3), 48u);  // ceil(100 / 3) = 34 -> 48
  EXPECT_EQ(kd::shard_floats(32, 2), 16u);
  EXPECT_EQ(kd::shard_floats(33, 2), 32u);  // 17 -> 32
  EXPECT_EQ(kd::shard_floats(5, 1), 16u);
  EXPECT_EQ(kd::shard_range(20, 4, 1).begin, 16u);  // shard 16: [0,16) [16,20) [20,20) [20,20)
  EXPECT_EQ(kd::shard_range(20, 4, 1).end, 20u);
  EXPECT_EQ(kd::shard_range(20, 4, 3).size(), 0u);
  for (size_t n : {1, 17, 100, 1000, 12345})
    for (int ranks = 1; ranks <= 5; ++ranks) {
      const size_t shard = kd::shard_floats(n, ranks);
      EXPECT_EQ(shard % 16, 0u);
      EXPECT_GE(shard * ranks, n);
      size_t next = 0;
      for (int r = 0; r < ranks; ++r) {
        const kd::ShardRange s = kd::shard_range(n, ranks, r);
        EXPECT_EQ(s.begin, next) << n << " " << ranks << " " << r;
        EXPECT_LE(s.size(), shard);
        next = s.end;
      }
      EXPECT_EQ(next, n);
    }
}

// The split the trainer uses at several ranks: rank r evaluates batches r, r + N, ...; the shares'
// sums add up to the whole evaluation (means weighted by tokens, up to double rounding), and each
// share has its own batches' tokens (every target of these windows is supervised).
TEST(EvalSplit, SharesAddUpToTheWholeEvaluation) {
  kd::GPT2Config sc{2, 2, 32, 64, 16}, tc{2, 2, 48, 64, 16};
  kd::GPT2 student(sc), teacher(tc);
  student.init_random(5);
  teacher.init_random(6);
  kd::Rng rng(9);
  std::vector<uint16_t> tokens(3000);
  for (auto& t : tokens) t = uint16_t(rng.below(64));
  const int B = 2, T = 16, batches = 5;
  const kd::EvalResult all =
      kd::evaluate_model(student, &teacher, tokens, B, T, batches, 2.0f, 0, 1);
  EXPECT_EQ(all.tokens, int64_t(batches) * B * T);
  for (int ranks : {2, 3}) {
    double loss = 0, kl = 0, teacher_loss = 0;
    int64_t n = 0;
    for (int r = 0; r < ranks; ++r) {
      const kd::EvalResult part =
          kd::evaluate_model(student, &teacher, tokens, B, T, batches, 2.0f, r, ranks);
      const int mine = (batches - r + ranks - 1) / ranks;  // batches r, r + ranks, ...
      EXPECT_EQ(part.tokens, int64_t(mine) * B * T) << ranks << " ranks, rank " << r;
      loss += part.loss * double(part.tokens);
      kl += part.kl * double(part.tokens);
      teacher_loss += part.teacher_loss * double(part.tokens);
      n += part.tokens;
    }
    EXPECT_EQ(n, all.tokens);
    EXPECT_NEAR(loss / double(n), all.loss, 1e-12 * all.loss);
    EXPECT_NEAR(kl / double(n), all.kl, 1e-12 * all.kl);
    EXPECT_NEAR(teacher_loss / double(n), all.teacher_loss, 1e-12 * all.teacher_loss);
  }
}

class DistributedTest : public ::testing::Test {
 protected:
  void SetUp() override {
#ifdef KD_BUILT_WITHOUT_MPI
    GTEST_SKIP() << "kdengine is built without MPI (KD_MPI=OFF or no MPI found)";
#endif
    if (!have_mpirun()) GTEST_SKIP() << "mpirun not installed (openmpi-bin)";
    dir_ =
        fs::temp_directory_path() /
        ("kd_dist_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
         "_" + std::to_string(::getpid()));
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

  // A small student; with_teacher adds a teacher (trained here once, single process) and KD.
  fs::path recipe(const std::string& name, const std::string& extra = "") {
    const fs::path p = dir_ / (name + ".toml");
    std::ofstream(p)
        << "[run]\nname = \"t\"\nout_dir = \"" << (dir_ / "out").string()
        << "\"\ndevice = \"cpu\"\nseed = 3\nthreads = 1\n\n[data]\ntrain = \"corpus.txt\"\n\n"
           "[student]\nn_layer = 2\nn_head = 2\nn_embd = 32\nblock_size = 16\n\n"
           "[train]\nmicro_batch = 2\nseq_len = 16\nmax_steps = 6\neval_every = 0\n"
           "eval_batches = 1\n\n[log]\nevery = 1\n"
        << extra;
    return p;
  }
  fs::path teacher() {
    const fs::path t = dir_ / "teacher";
    Result r = sh(kBin + " train " + recipe("teacher").string() + " --set run.out_dir='\"" +
                  t.string() + "\"' --set run.seed=11 --set train.max_steps=3");
    EXPECT_EQ(r.status, 0) << r.output;
    return t / "final";
  }
  std::string kd_extra(const fs::path& teacher_ckpt) {
    return "\n[teacher]\ncheckpoint = \"" + teacher_ckpt.string() +
           "\"\n\n[loss]\nce_weight = 0.5\nkd_weight = 0.5\ntemperature = 2.0\n";
  }
  // Runs `np` ranks (np = 0: a plain process, no mpirun) into dir_/out_name.
  Result train(int np, const fs::path& rec, const std::string& out_name,
               const std::string& sets = "") {
    const std::string cmd = (np == 0 ? "" : mpirun(np)) + kBin + " train " + rec.string() +
                            " --set run.out_dir='\"" + (dir_ / out_name).string() + "\"' " + sets;
    return sh(cmd);
  }
  void resume_across(int before, int after);
  fs::path dir_;
};

// Same global batch (micro_batch 2 x grad_accum 2 x 1 rank = 2 x 1 x 2 ranks), same sequences.
// The gradients differ only in fp32 summation order: one rank adds micro-batch 1's backward into
// the buffer that already holds micro-batch 0's, two ranks sum two separate buffers. That is about
// one ulp per gradient element per step (the loss sums are doubles: ~1e-8 relative in the logged
// loss). AdamW divides by sqrt(v), so tiny gradient differences become weight differences of a few
// ulps of lr-sized updates: measured 4e-7 to 7e-7 of max |w| after 6 steps (up to 1e-6 in the
// resume tests below), so 1e-5 relative leaves a 10x margin. A sampling or normalisation mistake
// (another sequence, a per-rank token count) moves the loss by 1e-2 or more and fails this.
//
// Evaluation (3 batches, so 2 on rank 0 and 1 on rank 1) is split over the ranks and summed: the
// teacher's held-out loss (the same weights on every rank) equals one rank's up to the order of
// double additions; the student's final one to the weights' tolerance.
TEST_F(DistributedTest, TwoRanksMatchOneRankWithTheSameGlobalBatch) {
  const fs::path rec = recipe("kd", kd_extra(teacher()));
  Result one = train(0, rec, "one", "--set train.grad_accum=2 --set train.eval_batches=3");
  ASSERT_EQ(one.status, 0) << one.output;
  Result two = train(2, rec, "two", "--set train.grad_accum=1 --set train.eval_batches=3");
  ASSERT_EQ(two.status, 0) << two.output;
  const auto eval_record = [](const fs::path& log) {
    std::ifstream f(log);
    std::string line;
    kd::Json last;
    while (std::getline(f, line)) {
      kd::Json j = kd::Json::parse(line);
      if (j.find("val_loss")) last = j;
    }
    return last;
  };
  const kd::Json e1 = eval_record(dir_ / "one" / "log.jsonl");
  const kd::Json e2 = eval_record(dir_ / "two" / "log.jsonl");
  const double t1 = e1.at("teacher_val_loss").as_number(),
               t2 = e2.at("teacher_val_loss").as_number();
  std::printf("teacher held-out loss: 1 rank %.17g, 2 ranks %.17g\n", t1, t2);
  EXPECT_NEAR(t2, t1, 1e-12 * t1);
  EXPECT_NEAR(e2.at("val_loss").as_number(), e1.at("val_loss").as_number(),
              1e-5 * e1.at("val_loss").as_number());
  EXPECT_NEAR(e2.at("val_kl").as_number(), e1.at("val_kl").as_number(),
              1e-4 * e1.at("val_kl").as_number());
  EXPECT_NE(two.output.find("data parallel: 2 ranks"), std::string::npos) << two.output;
  // rank 0 alone prints: one "done:" line
  EXPECT_EQ(std::count(two.output.begin(), two.output.end(), '\n'),
            std::count(one.output.begin(), one.output.end(), '\n') + 1)
      << two.output;

  const std::vector<double> l1 = losses(dir_ / "one" / "log.jsonl");
  const std::vector<double> l2 = losses(dir_ / "two" / "log.jsonl");
  ASSERT_EQ(l1.size(), 6u);
  ASSERT_EQ(l2.size(), 6u);
  for (size_t i = 0; i < l1.size(); ++i) EXPECT_NEAR(l2[i], l1[i], 1e-5 * l1[i]) << "step " << i;

  const kd::GPT2 a = kd::load_model((dir_ / "one" / "final").string());
  const kd::GPT2 b = kd::load_model((dir_ / "two" / "final").string());
  ASSERT_EQ(a.params.size(), b.params.size());
  double max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < a.params.size(); ++i) {
    max_diff = std::max(max_diff, double(std::fabs(a.params[i] - b.params[i])));
    max_abs = std::max(max_abs, double(std::fabs(a.params[i])));
  }
  std::printf("max |w(1 rank) - w(2 ranks)| = %.3g, relative to max |w| %.3g\n", max_diff,
              max_diff / max_abs);
  for (size_t i = 0; i < l1.size(); ++i)
    std::printf("step %zu loss: 1 rank %.9f, 2 ranks %.9f\n", i + 1, l1[i], l2[i]);
  EXPECT_LE(max_diff, 1e-5 * max_abs) << "max |w1 - w2| = " << max_diff;
  // and training moved the weights far beyond that tolerance, so the comparison means something
  const kd::GPT2 start = [&] {
    kd::GPT2 g(a.config());
    g.init_random(3);
    return g;
  }();
  double moved = 0;
  for (size_t i = 0; i < a.params.size(); ++i)
    moved = std::max(moved, double(std::fabs(a.params[i] - start.params[i])));
  EXPECT_GT(moved, 100 * 1e-5 * max_abs);
}

TEST_F(DistributedTest, TwoRanksAreBitwiseReproducible) {
  const fs::path rec = recipe("r");
  for (const char* o : {"a", "b"}) {
    Result r = train(2, rec, o);
    ASSERT_EQ(r.status, 0) << r.output;
  }
  for (const char* f : {"model.safetensors", "optimizer.safetensors"}) {
    const std::string x = bytes_of(dir_ / "a" / "final" / f),
                      y = bytes_of(dir_ / "b" / "final" / f);
    EXPECT_FALSE(x.empty());
    EXPECT_TRUE(x == y) << f << " differs between two identical 2-rank runs";
  }
  EXPECT_EQ(losses(dir_ / "a" / "log.jsonl"), losses(dir_ / "b" / "log.jsonl"));
}

// Largest |a - b| relative to the largest |a|.
double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double diff = 0, top = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff = std::max(diff, double(std::fabs(a[i] - b[i])));
    top = std::max(top, double(std::fabs(a[i])));
  }
  return top > 0 ? diff / top : diff;
}

// A checkpoint's AdamW moments, m then v, each in the parameter table's layout.
std::pair<std::vector<float>, std::vector<float>> moments(const fs::path& ckpt) {
  const kd::GPT2 g = kd::load_model(ckpt.string());
  kd::SafetensorsFile f((ckpt / "optimizer.safetensors").string());
  std::vector<float> m(g.params.size()), v(g.params.size());
  for (const auto& p : g.table()) {
    f.read_f32(*f.find("m." + p.name), m.data() + p.offset);
    f.read_f32(*f.find("v." + p.name), v.data() + p.offset);
  }
  return {m, v};
}

// The optimizer-moment bytes the profiler's memory report shows (rank 0's backend).
uint64_t reported_moment_bytes(const fs::path& profile_json) {
  const kd::Json prof = kd::Json::parse(bytes_of(profile_json));
  return uint64_t(
      prof.at("memory").at("categories").at("optimizer_moments").at("current_bytes").as_number());
}

// ZeRO-1 against every rank holding everything, both at 2 ranks: at 2 ranks a reduce-scatter sums
// the same two values as an all-reduce (a + b), so the gradients are the same bits; only the
// global norm is added in another order (two shards' squares, then their sum), which can move the
// clipping factor by an ulp. So the runs agree to fp32 rounding (1e-5 relative, as above), the
// checkpoint holds the whole moments (rank 1's shard gathered: a zero there would differ from the
// unsharded run by the moments' own size), and rank 0's memory report shows its shard of the
// moments: 2 x shard_floats(P, 2) floats instead of 2 x P. grad_accum = 2 here: the per-layer
// buckets must start only in the last micro-batch's backward (a bucket sent after the first would
// miss the second's gradients), which the 1-rank run with grad_accum 4 checks.
TEST_F(DistributedTest, ShardedOptimizerAgreesWithUnsharded) {
  const fs::path rec =
      recipe("z", "\n[profile]\nenabled = true\nwait = 1\nwarmup = 1\nactive = 2\n");
  Result on =
      train(2, rec, "on", "--set distributed.shard_optimizer=true --set train.grad_accum=2");
  ASSERT_EQ(on.status, 0) << on.output;
  Result off =
      train(2, rec, "off", "--set distributed.shard_optimizer=false --set train.grad_accum=2");
  ASSERT_EQ(off.status, 0) << off.output;
  Result one = train(0, rec, "one", "--set train.grad_accum=4");
  ASSERT_EQ(one.status, 0) << one.output;
  const std::vector<double> l_one = losses(dir_ / "one" / "log.jsonl");
  const kd::GPT2 w_one = kd::load_model((dir_ / "one" / "final").string());
  EXPECT_NE(on.output.find("optimizer state sharded (ZeRO-1)"), std::string::npos) << on.output;
  EXPECT_EQ(off.output.find("ZeRO-1"), std::string::npos) << off.output;

  const std::vector<double> l_on = losses(dir_ / "on" / "log.jsonl");
  const std::vector<double> l_off = losses(dir_ / "off" / "log.jsonl");
  ASSERT_EQ(l_on.size(), 6u);
  ASSERT_EQ(l_off.size(), 6u);
  for (size_t i = 0; i < l_on.size(); ++i)
    EXPECT_NEAR(l_on[i], l_off[i], 1e-5 * l_off[i]) << "step " << i;
  const kd::GPT2 a = kd::load_model((dir_ / "off" / "final").string());
  const kd::GPT2 b = kd::load_model((dir_ / "on" / "final").string());
  const double dw = max_rel_diff(a.params, b.params);
  const auto [m_off, v_off] = moments(dir_ / "off" / "final");
  const auto [m_on, v_on] = moments(dir_ / "on" / "final");
  const double dm = max_rel_diff(m_off, m_on), dv = max_rel_diff(v_off, v_on);
  std::printf("sharded vs unsharded: weights %.3g, m %.3g, v %.3g (max diff / max)\n", dw, dm, dv);
  EXPECT_LE(dw, 1e-5);
  EXPECT_LE(dm, 1e-5);
  EXPECT_LE(dv, 1e-5);
  ASSERT_EQ(l_one.size(), 6u);
  for (size_t i = 0; i < l_one.size(); ++i)
    EXPECT_NEAR(l_on[i], l_one[i], 1e-5 * l_one[i]) << "step " << i;
  const double d1 = max_rel_diff(w_one.params, b.params);
  std::printf("sharded 2 x grad_accum 2 vs 1 rank x grad_accum 4: weights %.3g\n", d1);
  EXPECT_LE(d1, 1e-5);
  // rank 1's shard (the end of the buffer: the last layers and ln_f) was trained and gathered
  const size_t P = a.params.size();
  const kd::ShardRange r1 = kd::shard_range(P, 2, 1);
  ASSERT_GT(r1.size(), 0u);
  size_t nonzero = 0;
  for (size_t i = r1.begin; i < r1.end; ++i) nonzero += m_on[i] != 0.0f;
  EXPECT_GT(nonzero, r1.size() / 2);

  EXPECT_EQ(reported_moment_bytes(dir_ / "on" / "profile.json"),
            2 * kd::shard_floats(P, 2) * sizeof(float));
  EXPECT_EQ(reported_moment_bytes(dir_ / "off" / "profile.json"), 2 * P * sizeof(float));
}

// Compares `resumed` with `straight` (loss curves and final weights, the tolerance of the test
// above).
void expect_same_run(const fs::path& straight, const fs::path& resumed) {
  const std::vector<double> ls = losses(straight / "log.jsonl");
  const std::vector<double> lr = losses(resumed / "log.jsonl");
  ASSERT_EQ(ls.size(), 6u);
  ASSERT_EQ(lr.size(), 6u);
  for (size_t i = 0; i < ls.size(); ++i) EXPECT_NEAR(lr[i], ls[i], 1e-5 * ls[i]) << "step " << i;
  const kd::GPT2 a = kd::load_model((straight / "final").string());
  const kd::GPT2 b = kd::load_model((resumed / "final").string());
  ASSERT_EQ(a.params.size(), b.params.size());
  double max_diff = 0, max_abs = 0;
  for (size_t i = 0; i < a.params.size(); ++i) {
    max_diff = std::max(max_diff, double(std::fabs(a.params[i] - b.params[i])));
    max_abs = std::max(max_abs, double(std::fabs(a.params[i])));
  }
  std::printf("max |w(straight) - w(resumed)| = %.3g, relative to max |w| %.3g\n", max_diff,
              max_diff / max_abs);
  EXPECT_LE(max_diff, 1e-5 * max_abs);
  // and the optimizer state (a resume from a ZeRO-1 checkpoint needs every shard's moments)
  const auto [ms, vs] = moments(straight / "final");
  const auto [mr, vr] = moments(resumed / "final");
  EXPECT_LE(max_rel_diff(ms, mr), 1e-5);
  EXPECT_LE(max_rel_diff(vs, vr), 1e-5);
}

// 3 steps at `before` ranks, then 3 more at `after` ranks (np 0: a plain process), the global batch
// kept at 4 sequences by grad_accum, against 6 steps of one plain process. The first run goes all 6
// steps with a checkpoint at step 3 and the later one is removed, as if the job had stopped there
// (max_steps stays 6: the learning-rate schedule depends on it).
void DistributedTest::resume_across(int before, int after) {
  const fs::path rec = recipe("r", "\n[checkpoint]\nresume = true\n");
  auto accum = [](int np) { return " --set train.grad_accum=" + std::to_string(np == 2 ? 1 : 2); };
  Result straight = train(0, rec, "straight", accum(0));
  ASSERT_EQ(straight.status, 0) << straight.output;
  Result first = train(before, rec, "resumed",
                       accum(before) + " --set checkpoint.every=3 --set checkpoint.keep_last=2");
  ASSERT_EQ(first.status, 0) << first.output;
  if (before == 2) {  // the 2-rank side trains with ZeRO-1 (the default)
    EXPECT_NE(first.output.find("sharded (ZeRO-1)"), std::string::npos) << first.output;
  }
  ASSERT_TRUE(fs::exists(dir_ / "resumed" / "step_000003" / "trainer_state.json"));
  fs::remove_all(dir_ / "resumed" / "step_000006");
  fs::remove_all(dir_ / "resumed" / "final");
  Result second = train(after, rec, "resumed", accum(after));
  ASSERT_EQ(second.status, 0) << second.output;
  if (after == 2) {
    EXPECT_NE(second.output.find("sharded (ZeRO-1)"), std::string::npos) << second.output;
  }
  EXPECT_NE(second.output.find("resume: from"), std::string::npos) << second.output;
  expect_same_run(dir_ / "straight", dir_ / "resumed");
}

TEST_F(DistributedTest, ResumeFromTwoRanksToOne) {
  resume_across(2, 0);
}
TEST_F(DistributedTest, ResumeFromOneRankToTwo) {
  resume_across(0, 2);
}

// Rank 0's profile shows the time of the collectives as their own phase.
TEST_F(DistributedTest, ProfilerShowsTheCommunication) {
  const fs::path rec =
      recipe("p", "\n[profile]\nenabled = true\nwait = 1\nwarmup = 1\nactive = 2\n");
  Result r = train(2, rec, "p");
  ASSERT_EQ(r.status, 0) << r.output;
  const kd::Json prof = kd::Json::parse(bytes_of(dir_ / "p" / "profile.json"));
  const std::string text = prof.dump();
  EXPECT_NE(text.find("\"comm_grads\""), std::string::npos) << text.substr(0, 2000);
  EXPECT_NE(text.find("\"comm\""), std::string::npos) << text.substr(0, 2000);
}

TEST_F(DistributedTest, DifferentRecipesOnTheRanksAreRefused) {
  const fs::path rec = recipe("r");
  const std::string out = " --set run.out_dir='\"" + (dir_ / "o").string() + "\"'";
  Result r =
      sh("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 mpirun "
         "--oversubscribe -np 1 " +
         kBin + " train " + rec.string() + out + " : -np 1 " + kBin + " train " + rec.string() +
         out + " --set optim.lr=0.5");
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.status, 124) << "timed out: " << r.output;
  EXPECT_NE(r.output.find("rank 1 runs a different recipe than rank 0"), std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(dir_ / "o" / "final"));
}

// A rank running another build (kd_other_build: the same trainer under another build identity)
// is refused at start, before anything is written, with the same recipe on both ranks.
TEST_F(DistributedTest, DifferentBuildsOnTheRanksAreRefused) {
  const fs::path rec = recipe("r");
  const std::string out = " --set run.out_dir='\"" + (dir_ / "o").string() + "\"'";
  Result r =
      sh("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 mpirun "
         "--oversubscribe -np 1 " +
         kBin + " train " + rec.string() + out + " : -np 1 " + std::string(KD_OTHER_BUILD_BIN) +
         " " + rec.string() + out);
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.status, 124) << "timed out: " << r.output;
  EXPECT_NE(r.output.find("rank 1 runs a different kdengine build than rank 0"), std::string::npos)
      << r.output;
  EXPECT_NE(r.output.find("0.0.0-other"), std::string::npos) << "rank 1 names its build\n"
                                                             << r.output;
  EXPECT_FALSE(fs::exists(dir_ / "o" / "final"));
  // The same two programs with the same build identity would train: kd_other_build alone runs.
  Result alone = sh(std::string(KD_OTHER_BUILD_BIN) + " " + rec.string() + " --set " +
                    "run.out_dir='\"" + (dir_ / "alone").string() + "\"'");
  EXPECT_EQ(alone.status, 0) << alone.output;
}

// The pid of the kdengine process that is rank `rank` of a job whose command line mentions `tag`.
int find_rank_pid(const std::string& tag, int rank) {
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmd = bytes_of(e.path() / "cmdline");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (cmd.find(kBin) != 0 || cmd.find(tag) == std::string::npos) continue;
    std::string env = bytes_of(e.path() / "environ");
    std::replace(env.begin(), env.end(), '\0', '\n');
    if (env.find("\nOMPI_COMM_WORLD_RANK=" + std::to_string(rank) + "\n") != std::string::npos)
      return std::stoi(name);
  }
  return -1;
}

// Rank 1 is killed mid-run while rank 0 waits in an all-reduce: the launcher must end the job
// (non-zero, well before the 120 s timeout), and the last checkpoint rank 0 wrote stays loadable.
TEST_F(DistributedTest, AKilledRankEndsTheJob) {
  const fs::path rec = recipe("kill");
  Result r;
  std::thread job(
      [&] { r = train(2, rec, "k", "--set train.max_steps=1000000 --set checkpoint.every=2"); });
  // Any complete checkpoint will do (keep_last prunes the early ones within milliseconds).
  const auto t0 = std::chrono::steady_clock::now();
  int pid = -1;
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(90)) {
    if (!kd::latest_checkpoint((dir_ / "k").string()).empty() &&
        (pid = find_rank_pid(rec.string(), 1)) > 0)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (pid <= 0) {  // end the job so that its thread can be joined, then fail
    const int p0 = find_rank_pid(rec.string(), 0);
    if (p0 > 0) ::kill(p0, SIGKILL);
    job.join();
    FAIL() << "rank 1 not found running after a checkpoint: " << r.output;
  }
  const auto killed = std::chrono::steady_clock::now();
  ::kill(pid, SIGKILL);
  job.join();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - killed).count();
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.status, 124) << "the job hung until the timeout: " << r.output;
  EXPECT_LT(secs, 30.0) << r.output;
  const std::string last = dir_ / "k" / "final";
  const kd::GPT2 g = kd::load_model(last);  // the newest complete checkpoint loads
  EXPECT_GT(g.params.size(), 0u);
}

// Rank 1 is stopped (SIGSTOP: alive, holding its MPI connections, never arriving) mid-run. Rank 0
// must give up after [distributed] timeout_s (10 s here: long enough that no legitimate wait on
// two busy cores reaches it) and end the job non-zero, naming rank 1 and the last complete
// checkpoint, which stays loadable.
TEST_F(DistributedTest, AStoppedRankIsNamedAndEndsTheJob) {
  const fs::path rec = recipe("hang");
  Result r;
  std::thread job([&] {
    r = train(2, rec, "h",
              "--set train.max_steps=1000000 --set checkpoint.every=2 "
              "--set distributed.timeout_s=10");
  });
  const auto t0 = std::chrono::steady_clock::now();
  int pid = -1;
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(90)) {
    if (!kd::latest_checkpoint((dir_ / "h").string()).empty() &&
        (pid = find_rank_pid(rec.string(), 1)) > 0)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (pid <= 0) {
    const int p0 = find_rank_pid(rec.string(), 0);
    if (p0 > 0) ::kill(p0, SIGKILL);
    job.join();
    FAIL() << "rank 1 not found running after a checkpoint: " << r.output;
  }
  const auto stopped = std::chrono::steady_clock::now();
  ::kill(pid, SIGSTOP);
  job.join();
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - stopped).count();
  if (find_rank_pid(rec.string(), 1) == pid) ::kill(pid, SIGKILL);  // in case the launcher left it
  std::printf("the job ended %.1f s after rank 1 stopped\n", secs);
  EXPECT_NE(r.status, 0) << r.output;
  EXPECT_NE(r.status, 124) << "the job hung until the timeout: " << r.output;
  EXPECT_GE(secs, 9.5) << "ended before the deadline: not by the timeout? " << r.output;
  EXPECT_LT(secs, 60.0) << r.output;
  EXPECT_NE(r.output.find("rank 0: rank 1 "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("timeout_s = 10 s"), std::string::npos) << r.output;
  const size_t at = r.output.find("last complete checkpoint: ");
  ASSERT_NE(at, std::string::npos) << r.output;
  const std::string named = r.output.substr(at + 26, r.output.find('\n', at) - at - 26);
  EXPECT_EQ(named, kd::latest_checkpoint((dir_ / "h").string()));
  const kd::GPT2 g = kd::load_model(named);  // complete and loadable
  EXPECT_GT(g.params.size(), 0u);
  EXPECT_TRUE(fs::exists(fs::path(named) / "optimizer.safetensors"));
}

// The pid of the mpirun whose command line mentions `tag`.
int find_mpirun_pid(const std::string& tag) {
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::string cmd = bytes_of(e.path() / "cmdline");
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    if (cmd.rfind("mpirun ", 0) == 0 && cmd.find(tag) != std::string::npos) return std::stoi(name);
  }
  return -1;
}

// Ctrl-C reaches only mpirun (Open MPI puts each rank in its own process group). Open MPI 4.1 does
// not forward SIGINT; it sends every rank SIGCONT, then SIGTERM after odls_base_sigkill_timeout
// seconds, then SIGKILL after as many more. kdengine treats SIGTERM as it treats SIGINT, so the
// ranks stop together after the current step and rank 0 writes a checkpoint within that grace
// time (3 s here; the default is 1 s). Quiet logging (log.every): after its SIGINT mpirun stops
// forwarding the ranks' output, and rank 0 printing a line every millisecond (this tiny model
// with log.every = 1) fills the pipe and blocks before it reaches the checkpoint.
TEST_F(DistributedTest, SigintToMpirunStopsGracefullyWithACheckpoint) {
  const fs::path rec = recipe("int");
  Result r;
  std::thread job([&] {
    r = sh(
        "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 timeout 120 "
        "mpirun -np 2 --oversubscribe --mca odls_base_sigkill_timeout 3 " +
        kBin + " train " + rec.string() + " --set run.out_dir='\"" + (dir_ / "i").string() +
        "\"' --set train.max_steps=1000000 --set checkpoint.every=50 --set log.every=1000");
  });
  const auto t0 = std::chrono::steady_clock::now();
  int pid = -1;
  while (std::chrono::steady_clock::now() - t0 < std::chrono::seconds(90)) {
    if (!kd::latest_checkpoint((dir_ / "i").string()).empty() &&
        (pid = find_mpirun_pid(rec.string())) > 0)
      break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (pid <= 0) {
    const int p0 = find_rank_pid(rec.string(), 0);
    if (p0 > 0) ::kill(p0, SIGKILL);
    job.join();
    FAIL() << "the job was not found running: " << r.output;
  }
  ::kill(pid, SIGINT);
  job.join();
  EXPECT_NE(r.status, 124) << r.output;
  const size_t at = r.output.find("interrupted: writing a checkpoint at step ");
  ASSERT_NE(at, std::string::npos) << r.output;
  const int64_t step = std::stoll(r.output.substr(at + 42));
  const kd::Json summary = kd::Json::parse(bytes_of(dir_ / "i" / "summary.json"));
  EXPECT_TRUE(summary.at("interrupted").as_bool());
  EXPECT_EQ(summary.at("steps").as_int(), step);
  char name[32];
  std::snprintf(name, sizeof name, "step_%06lld", static_cast<long long>(step));
  EXPECT_EQ(kd::latest_checkpoint((dir_ / "i").string()), (dir_ / "i" / name).string());
  const kd::GPT2 g = kd::load_model((dir_ / "i" / name).string());
  EXPECT_GT(g.params.size(), 0u);
}

}  // namespace
