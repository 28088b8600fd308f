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
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/base/rng.h"
#include "model/checkpoint.h"
#include "tests/shell_util.h"

namespace fs = std::filesystem;

namespace {

const std::string kBin = KD_KDENGINE_BIN;

using kd::testing::Result;

Result run(const std::string& args) {
  return kd::testing::sh(kBin + " " + args);
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
  // The resolved recipe comes with one header line, not two.
  size_t headers = 0;
  for (size_t at = 0; (at = c.output.find("resolved recipe", at)) != std::string::npos; ++at)
    ++headers;
  EXPECT_EQ(headers, 1u) << c.output;
  Result t = run("train " + p.string());
  ASSERT_EQ(t.status, 0) << t.output;
  EXPECT_NE(t.output.find("step 4/4"), std::string::npos) << t.output;
  // Counts agree with their nouns: the test model has one layer.
  EXPECT_NE(t.output.find("student: 1 layer, 2 heads, 16 dims"), std::string::npos) << t.output;
  EXPECT_EQ(t.output.find("1 layers"), std::string::npos) << t.output;
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
  // eval_every = 0: no evaluation ran before Ctrl-C, and the summary says so instead of "nan".
  std::ifstream f(dir_ / "run.log");
  const std::string log((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_NE(log.find("no evaluation ran"), std::string::npos) << log;
  EXPECT_EQ(log.find("nan"), std::string::npos) << log;
  kd::GPT2 m = kd::load_model(final_dir.string());
  EXPECT_EQ(m.config().n_embd, 16);
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

size_t event_files(const fs::path& tb) {
  size_t n = 0;
  if (fs::is_directory(tb))
    for (const auto& e : fs::directory_iterator(tb))
      n += e.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
  return n;
}

// A fresh run into an out_dir that holds another run is refused with what to do, and the old run
// is left as it was; --overwrite removes it first; resume and overwrite together are a
// contradiction.
TEST_F(CliTest, FreshRunIntoAUsedOutDirIsRefusedUnlessOverwrite) {
  const fs::path p = write("r.toml", good_recipe(4) + "\n[checkpoint]\nevery = 2\nkeep_last = 3\n");
  ASSERT_EQ(run("train " + p.string()).status, 0);
  const fs::path out = dir_ / "out";
  ASSERT_TRUE(fs::exists(out / "step_000002" / "trainer_state.json"));
  const std::string weights = slurp(out / "step_000004" / "model.safetensors");
  const std::string log = slurp(out / "log.jsonl");
  ASSERT_EQ(event_files(out / "tb"), 1u);

  Result again = run("train " + p.string() + " --set train.max_steps=3");
  EXPECT_EQ(again.status, 2) << again.output;
  EXPECT_NE(again.output.find("[run] out_dir " + out.string() + " already holds a run"),
            std::string::npos)
      << again.output;
  EXPECT_NE(again.output.find("step_000002"), std::string::npos) << again.output;
  EXPECT_NE(again.output.find("resume = true"), std::string::npos) << again.output;
  EXPECT_NE(again.output.find("--overwrite"), std::string::npos) << again.output;
  // Nothing was touched.
  EXPECT_EQ(slurp(out / "step_000004" / "model.safetensors"), weights);
  EXPECT_EQ(slurp(out / "log.jsonl"), log);
  EXPECT_EQ(event_files(out / "tb"), 1u);

  // The same through the recipe key instead of the flag is accepted too; here: the flag.
  Result over = run("train " + p.string() + " --set train.max_steps=3 --overwrite");
  ASSERT_EQ(over.status, 0) << over.output;
  EXPECT_NE(over.output.find("overwrite: removed the previous run in " + out.string()),
            std::string::npos)
      << over.output;
  EXPECT_FALSE(fs::exists(out / "step_000004")) << "the old run's checkpoints must be gone";
  EXPECT_TRUE(fs::exists(out / "step_000003" / "trainer_state.json"));
  EXPECT_EQ(event_files(out / "tb"), 1u) << "one event file: the old one was removed";
  const std::string new_log = slurp(out / "log.jsonl");
  EXPECT_EQ(new_log.find("\"step\":4"), std::string::npos) << new_log;
  EXPECT_NE(new_log.find("\"step\":3"), std::string::npos) << new_log;

  // A run killed before its first checkpoint leaves only log.jsonl: that is a run too.
  fs::remove_all(dir_ / "out2");
  fs::create_directories(dir_ / "out2");
  std::ofstream(dir_ / "out2" / "log.jsonl") << "{\"step\":1,\"loss\":5}\n";
  Result partial =
      run("train " + p.string() + " --set run.out_dir=\"" + (dir_ / "out2").string() + "\"");
  EXPECT_EQ(partial.status, 2) << partial.output;
  EXPECT_NE(partial.output.find("log.jsonl"), std::string::npos) << partial.output;
  // A folder with only unrelated files (or the token cache) is not a run.
  fs::remove(dir_ / "out2" / "log.jsonl");
  std::ofstream(dir_ / "out2" / "notes.txt") << "mine\n";
  Result other =
      run("train " + p.string() + " --set run.out_dir=\"" + (dir_ / "out2").string() + "\"");
  EXPECT_EQ(other.status, 0) << other.output;
  EXPECT_TRUE(fs::exists(dir_ / "out2" / "notes.txt"));

  Result both = run("train " + p.string() + " --overwrite --set checkpoint.resume=true");
  EXPECT_EQ(both.status, 2) << both.output;
  EXPECT_NE(both.output.find("set only one of them"), std::string::npos) << both.output;
  EXPECT_TRUE(fs::exists(out / "step_000003" / "trainer_state.json"));
}

// The numbers of one table row: loss, perplexity[, KL] for the line that starts with `name `.
std::vector<double> row_of(const std::string& table, const std::string& name) {
  std::istringstream in(table);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(name + " ", 0) != 0) continue;
    std::istringstream f(line.substr(name.size()));
    std::vector<double> v;
    for (double x; f >> x;) v.push_back(x);
    return v;
  }
  return {};
}

// The value of `key` in the log.jsonl record with "step": step that has it.
double logged(const fs::path& log, int step, const std::string& key) {
  std::ifstream f(log);
  for (std::string line; std::getline(f, line);) {
    if (line.find("\"step\":" + std::to_string(step) + ",") == std::string::npos) continue;
    const auto at = line.find("\"" + key + "\":");
    if (at != std::string::npos) return std::stod(line.substr(at + key.size() + 3));
  }
  ADD_FAILURE() << "no " << key << " at step " << step << " in " << log;
  return NAN;
}

// eval --recipe evaluates on the recipe's held-out split exactly as the trainer does: each
// checkpoint's row equals the trainer's eval record at that step (student loss, KL at the recipe's
// temperature, the teacher's loss), several checkpoints go into one table, --batches 0 is refused.
TEST_F(CliTest, EvalOnTheRecipesHeldOutSplitMatchesTraining) {
  const fs::path t = write("teacher.toml", good_recipe(6));
  ASSERT_EQ(run("train " + t.string()).status, 0);
  std::string kd = good_recipe(4);
  kd.replace(kd.find(dir_.string() + "/out\""), (dir_ / "out").string().size() + 1,
             (dir_ / "kd").string() + "\"");
  kd.replace(kd.find("eval_every = 0"), 14, "eval_every = 2");
  kd.replace(kd.find("eval_batches = 1"), 16, "eval_batches = 3");
  kd += "\n[teacher]\ncheckpoint = \"" + (dir_ / "out" / "final").string() +
        "\"\n\n[loss]\ntemperature = 2.0\n\n[checkpoint]\nevery = 2\nkeep_last = 2\n";
  const fs::path k = write("kd.toml", kd);
  Result tr = run("train " + k.string());
  ASSERT_EQ(tr.status, 0) << tr.output;
  const fs::path log = dir_ / "kd" / "log.jsonl";
  const std::string s2 = (dir_ / "kd" / "step_000002").string();
  const std::string s4 = (dir_ / "kd" / "step_000004").string();
  Result e = run("eval " + s2 + " " + s4 + " --recipe " + k.string());
  ASSERT_EQ(e.status, 0) << e.output;
  EXPECT_NE(e.output.find("3 batches of 2 x 16 tokens"), std::string::npos) << e.output;
  for (const auto& [ckpt, step] : {std::pair{s2, 2}, std::pair{s4, 4}}) {
    const std::vector<double> row = row_of(e.output, ckpt);
    ASSERT_EQ(row.size(), 4u) << ckpt << "\n" << e.output;  // loss, perplexity, KL, tokens
    EXPECT_NEAR(row[0], logged(log, step, "val_loss"), 5e-5) << e.output;
    EXPECT_NEAR(row[1], std::exp(row[0]), 1e-3 * row[1]);
    EXPECT_NEAR(row[2], logged(log, step, "val_kl"), 5e-5) << e.output;
    EXPECT_EQ(row[3], 3 * 2 * 16);
  }
  const std::vector<double> teacher =
      row_of(e.output, "(teacher) " + (dir_ / "out" / "final").string());
  ASSERT_EQ(teacher.size(), 3u) << e.output;
  EXPECT_NEAR(teacher[0], logged(log, 4, "teacher_val_loss"), 5e-5) << e.output;

  Result zero = run("eval " + s4 + " --recipe " + k.string() + " --batches 0");
  EXPECT_EQ(zero.status, 2) << zero.output;
  EXPECT_NE(zero.output.find("--batches: expected an integer >= 1 or 'all', got '0'"),
            std::string::npos)
      << zero.output;
  Result neither = run("eval " + s4);
  EXPECT_EQ(neither.status, 2) << neither.output;
  EXPECT_NE(neither.output.find("--recipe"), std::string::npos) << neither.output;
  Result both =
      run("eval " + s4 + " --recipe " + k.string() + " --data " + (dir_ / "corpus.txt").string());
  EXPECT_EQ(both.status, 2) << both.output;
  // --batches all covers every window of the split once.
  Result all = run("eval " + s4 + " --recipe " + k.string() + " --batches all");
  ASSERT_EQ(all.status, 0) << all.output;
  EXPECT_NE(all.output.find("every window once"), std::string::npos) << all.output;
  // --data also takes several checkpoints.
  Result data = run("eval " + s2 + " " + s4 + " --data " + (dir_ / "corpus.txt").string());
  ASSERT_EQ(data.status, 0) << data.output;
  EXPECT_EQ(row_of(data.output, s2).size(), 3u) << data.output;
  EXPECT_EQ(row_of(data.output, s4).size(), 3u) << data.output;
}

// --version: the version, the commit the build was configured from (the source tree's HEAD) and
// whether CUDA is built in, matching how this test binary was built.
TEST_F(CliTest, VersionNamesCommitAndCuda) {
  Result v = run("--version");
  ASSERT_EQ(v.status, 0) << v.output;
  EXPECT_EQ(v.output.rfind("kdengine 0.", 0), 0u) << v.output;
#ifdef KD_WITH_CUDA
  EXPECT_NE(v.output.find("\nCUDA built in"), std::string::npos) << v.output;
#else
  EXPECT_NE(v.output.find("\nCUDA not built in"), std::string::npos) << v.output;
#endif
  // The commit: one of this repository's, HEAD or (when a commit was made since the last build)
  // an ancestor of it, checked with git itself where git and the repository are there.
  const auto at = v.output.find("\ncommit ");
  ASSERT_NE(at, std::string::npos) << v.output;
  std::string commit = v.output.substr(at + 8, v.output.find('\n', at + 1) - at - 8);
  if (commit.size() > 6 && commit.ends_with("-dirty")) commit.resize(commit.size() - 6);
  const std::string git = "git -C '" + std::string(KD_SOURCE_DIR) + "' ";
  if (std::system((git + "rev-parse --git-dir >/dev/null 2>&1").c_str()) != 0)
    GTEST_SKIP() << "no git repository here to compare the commit with";
  ASSERT_EQ(commit.size(), 12u) << v.output;
  EXPECT_EQ(commit.find_first_not_of("0123456789abcdef"), std::string::npos) << commit;
  EXPECT_EQ(std::system((git + "merge-base --is-ancestor " + commit + " HEAD").c_str()), 0)
      << commit << " is not HEAD or an ancestor of it";
}

}  // namespace
