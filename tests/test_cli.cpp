// The kdengine command line as a user meets it: exit codes (2 bad input, 1 any other failure, 130
// interrupted), error messages for bad recipes, --help, and Ctrl-C (SIGINT) leaving a loadable
// checkpoint.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "engine/base/rng.h"
#include "model/checkpoint.h"

namespace fs = std::filesystem;

namespace {

const std::string kBin = KD_KDENGINE_BIN;

struct Result {
  int status = -1;
  std::string output;  // stdout and stderr together
};

Result run(const std::string& args) {
  Result r;
  const std::string cmd = kBin + " " + args + " 2>&1";
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.output.append(buf.data(), n);
  const int st = ::pclose(p);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

class CliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        fs::temp_directory_path() /
        ("kd_cli_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) +
         "_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::string text;
    kd::Rng rng(1);
    const char* words[] = {"alpha ", "beta ", "gamma ", "delta\n", "epsilon, ", "zeta. "};
    while (text.size() < 40000) text += words[rng.below(6)];
    std::ofstream(dir_ / "corpus.txt") << text;
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path write(const std::string& name, const std::string& body) {
    const fs::path p = dir_ / name;
    std::ofstream(p) << body;
    return p;
  }
  std::string good_recipe(int steps = 4) {
    return "[run]\nname = \"t\"\nout_dir = \"" + (dir_ / "out").string() +
           "\"\ndevice = \"cpu\"\n\n[data]\ntrain = \"corpus.txt\"\n\n"
           "[student]\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 16\n\n"
           "[train]\nmicro_batch = 2\nseq_len = 16\nmax_steps = " +
           std::to_string(steps) + "\neval_every = 0\neval_batches = 1\n\n[log]\nevery = 1\n";
  }
  fs::path dir_;
};

TEST_F(CliTest, HelpOnEveryCommand) {
  for (const char* c : {"--help", "train --help", "check --help", "eval --help", "sample --help"}) {
    Result r = run(c);
    EXPECT_EQ(r.status, 0) << c;
    EXPECT_NE(r.output.find("usage"), std::string::npos) << c << ": " << r.output;
  }
  EXPECT_EQ(run("").status, 2);
  EXPECT_EQ(run("frobnicate").status, 2);
}

TEST_F(CliTest, UnknownKeyIsReportedWithLocationAndSuggestion) {
  const std::string body = good_recipe() + "\n[optim]\nlerning_rate = 0.1\n";
  const auto line = std::count(body.begin(), body.begin() + body.find("lerning"), '\n') + 1;
  const fs::path p = write("r.toml", body);
  Result r = run("check " + p.string());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find(p.string() + ":" + std::to_string(line) +
                          ":1: error: unknown key 'lerning_rate' in [optim]; did you mean 'lr'?"),
            std::string::npos)
      << r.output;
}

TEST_F(CliTest, EveryRecipeErrorIsReportedAtOnce) {
  std::string body = good_recipe();
  body.replace(body.find("max_steps = 4"), 13, "max_steps = \"100\"");
  body += "\n[loss]\ntemperature = -1\ndivergence = \"kl\"\n";
  const fs::path p = write("r.toml", body);
  Result r = run("train " + p.string());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("max_steps"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("temperature"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("divergence"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir_ / "out")) << "nothing may run after a bad recipe";
}

TEST_F(CliTest, ContradictionsAndMissingFiles) {
  std::string body = good_recipe();
  body.replace(body.find("seq_len = 16"), 12, "seq_len = 64");  // > block_size
  body += "\n[teacher]\ncheckpoint = \"no_such_dir\"\n";
  Result r = run("check " + write("r.toml", body).string());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("seq_len"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("no_such_dir"), std::string::npos) << r.output;
}

TEST_F(CliTest, TrainCheckEvalSample) {
  const fs::path p = write("r.toml", good_recipe());
  Result c = run("check " + p.string());
  EXPECT_EQ(c.status, 0) << c.output;
  EXPECT_NE(c.output.find("memory plan"), std::string::npos) << c.output;
  Result t = run("train " + p.string());
  ASSERT_EQ(t.status, 0) << t.output;
  EXPECT_NE(t.output.find("step 4/4"), std::string::npos) << t.output;
  Result e = run("eval " + (dir_ / "out" / "final").string() + " --data " +
                 (dir_ / "corpus.txt").string() + " --batches 2");
  EXPECT_EQ(e.status, 0) << e.output;
  EXPECT_NE(e.output.find("perplexity"), std::string::npos) << e.output;
  Result s = run("sample " + (dir_ / "out" / "final").string() + " --prompt alpha --tokens 20");
  EXPECT_EQ(s.status, 0) << s.output;
  EXPECT_EQ(s.output.rfind("alpha", 0), 0u) << s.output;
  Result bad =
      run("eval " + (dir_ / "nowhere").string() + " --data " + (dir_ / "corpus.txt").string());
  EXPECT_EQ(bad.status, 2) << bad.output;
}

// A failure that is not bad input (here the run diverges) exits 1 with "error: " and the reason.
TEST_F(CliTest, FailureThatIsNotBadInputExits1) {
  const fs::path p = write("r.toml", good_recipe(40));
  Result r = run("train " + p.string() +
                 " --set optim.lr=1e30 --set optim.grad_clip=0 --set schedule.warmup_steps=0"
                 " --set schedule.min_lr=0");
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_NE(r.output.find("error: step "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("stopping"), std::string::npos) << r.output;
}

TEST_F(CliTest, SigintWritesACheckpointAndExits130) {
  const fs::path p = write("r.toml", good_recipe(100000));
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    const std::string log = (dir_ / "run.log").string();
    std::freopen(log.c_str(), "w", stdout);
    std::freopen(log.c_str(), "a", stderr);
    ::execl(kBin.c_str(), kBin.c_str(), "train", p.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  // Wait until a few steps have run.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  bool started = false;
  while (std::chrono::steady_clock::now() < deadline && !started) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::ifstream f(dir_ / "run.log");
    std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    started = s.find("step 3/") != std::string::npos;
  }
  ASSERT_TRUE(started) << "training did not start";
  ::kill(pid, SIGINT);
  int st = 0;
  ::waitpid(pid, &st, 0);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 130);
  const fs::path final_dir = dir_ / "out" / "final";
  ASSERT_TRUE(fs::exists(final_dir / "trainer_state.json"));
  kd::GPT2 m = kd::load_model(final_dir.string());
  EXPECT_EQ(m.config().n_embd, 16);
}

}  // namespace
