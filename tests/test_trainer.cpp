// The trainer end to end on the CPU: bitwise resume, the learning-rate schedule, checkpoints that
// are complete or absent, NaN stops, and a small distillation run that lowers the held-out loss.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "engine/base/error.h"
#include "engine/base/json.h"
#include "engine/base/rng.h"
#include "engine/io/recipe.h"
#include "engine/io/tokenizer.h"
#include "engine/train/student_init.h"
#include "engine/train/trainer.h"
#include "model/checkpoint.h"
#include "model/checkpoint_tokenizer.h"

namespace fs = std::filesystem;

namespace {

// A learnable synthetic corpus: sentences from a small grammar, deterministic in the seed.
std::string make_corpus(size_t bytes, uint64_t seed) {
  const char* subj[] = {"the cat", "a dog", "my friend", "the old king", "her brother", "we"};
  const char* verb[] = {"sees", "likes", "finds", "keeps", "follows", "remembers"};
  const char* obj[] = {"the river", "a small house", "bright stars", "the long road", "bread"};
  kd::Rng rng(seed);
  std::string s;
  while (s.size() < bytes) {
    s += subj[rng.below(6)];
    s += ' ';
    s += verb[rng.below(6)];
    s += ' ';
    s += obj[rng.below(5)];
    s += rng.below(4) == 0 ? ".\n" : ". ";
  }
  return s;
}

class TrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("kd_trainer_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
            std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::ofstream(dir_ / "corpus.txt") << make_corpus(60000, 3);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A tiny CE recipe; extra is appended (sections may be repeated only if not already present).
  fs::path write_recipe(const std::string& name, const std::string& extra, int steps = 20) {
    std::ostringstream r;
    r << "[run]\nname = \"" << name << "\"\nout_dir = \"" << (dir_ / name).string()
      << "\"\nseed = 5\ndevice = \"cpu\"\n\n"
      << "[data]\ntrain = \"" << (dir_ / "corpus.txt").string()
      << "\"\nval_fraction = 0.1\ntokenizer = \"bytes\"\n\n"
      << "[train]\nmicro_batch = 4\nseq_len = 32\ngrad_accum = 2\nmax_steps = " << steps
      << "\neval_every = 10\neval_batches = 2\n\n"
      << "[optim]\nlr = 3e-3\n\n[schedule]\nwarmup_steps = 3\ndecay = \"cosine\"\nmin_lr = 3e-4\n\n"
      << "[log]\nevery = 1\ntensorboard = false\n\n"
      << extra;
    const fs::path p = dir_ / (name + ".toml");
    std::ofstream(p) << r.str();
    return p;
  }
  static std::string student(int layers = 2, int embd = 32) {
    return "[student]\nn_layer = " + std::to_string(layers) +
           "\nn_head = 2\nn_embd = " + std::to_string(embd) + "\nblock_size = 32\n\n";
  }

  // The loss records of log.jsonl (timing fields dropped).
  static std::vector<std::string> loss_log(const fs::path& run) {
    std::ifstream f(run / "log.jsonl");
    std::vector<std::string> out;
    std::string line;
    while (std::getline(f, line)) {
      kd::Json j = kd::Json::parse(line);
      kd::Json k = kd::Json::object();
      for (const auto& [key, v] : j.members())
        if (key != "tokens_per_s" && key != "step_time_ms" && key != "peak_mem_bytes") k[key] = v;
      out.push_back(k.dump());
    }
    return out;
  }

  fs::path dir_;
};

TEST_F(TrainerTest, TwentyStepsEqualTenPlusResumePlusTen) {
  std::ostringstream sink;
  kd::Recipe a = kd::load_recipe(
      write_recipe("straight", student() + "[checkpoint]\nevery = 10\nkeep_last = 3\n").string());
  kd::train(a, sink);

  // The same run, "crashed" right after its step-10 checkpoint: the step-20 checkpoint is removed
  // (the log still holds records past step 10, which the resume must drop), then resumed.
  kd::Recipe b = kd::load_recipe(
      write_recipe("resumed", student() + "[checkpoint]\nevery = 10\nkeep_last = 3\n").string());
  kd::train(b, sink);
  fs::remove_all(dir_ / "resumed" / "step_000020");
  fs::remove_all(dir_ / "resumed" / "final");
  kd::Recipe c = kd::load_recipe((dir_ / "resumed.toml").string(),
                                 {"checkpoint.resume=true", "checkpoint.keep_last=4"});
  std::ostringstream resumed_out;
  kd::train(c, resumed_out);
  EXPECT_NE(resumed_out.str().find("at step 10"), std::string::npos) << resumed_out.str();
  EXPECT_NE(resumed_out.str().find("checkpoint.keep_last: 3 -> 4"), std::string::npos)
      << resumed_out.str();
  // Switching resume on is how the run continues, not a change of the run.
  EXPECT_EQ(resumed_out.str().find("checkpoint.resume"), std::string::npos) << resumed_out.str();

  kd::GPT2 x = kd::load_model((dir_ / "straight" / "step_000020").string());
  kd::GPT2 y = kd::load_model((dir_ / "resumed" / "step_000020").string());
  ASSERT_EQ(x.params.size(), y.params.size());
  EXPECT_EQ(0, std::memcmp(x.params.data(), y.params.data(), x.params.size() * sizeof(float)))
      << "weights differ after resume";
  const auto la = loss_log(dir_ / "straight"), lb = loss_log(dir_ / "resumed");
  EXPECT_EQ(la.size(), 20u + 2u);  // 20 steps and 2 evaluations
  EXPECT_EQ(la, lb);
}

TEST_F(TrainerTest, CheckpointsAreCompleteAndPruned) {
  std::ostringstream sink;
  kd::Recipe r = kd::load_recipe(
      write_recipe("ckpt", student() + "[checkpoint]\nevery = 5\nkeep_last = 2\n").string());
  kd::TrainSummary s = kd::train(r, sink);
  std::vector<std::string> dirs;
  for (const auto& e : fs::directory_iterator(dir_ / "ckpt"))
    if (e.path().filename().string().rfind("step_", 0) == 0 && !e.is_symlink())
      dirs.push_back(e.path().filename().string());
  std::sort(dirs.begin(), dirs.end());
  EXPECT_EQ(dirs, (std::vector<std::string>{"step_000015", "step_000020"}));
  for (const auto& d : dirs)
    for (const char* f : {"model.safetensors", "config.json", "optimizer.safetensors",
                          "trainer_state.json", "kdengine_tokenizer.json"})
      EXPECT_TRUE(fs::exists(dir_ / "ckpt" / d / f)) << d << "/" << f;
  // kdengine's own metadata never sits under one of HF's file names.
  EXPECT_FALSE(fs::exists(dir_ / "ckpt" / "step_000020" / "tokenizer.json"));
  // `final` is a real directory holding the newest checkpoint's files (hard links to them).
  const fs::path fin = dir_ / "ckpt" / "final";
  EXPECT_FALSE(fs::is_symlink(fin));
  ASSERT_TRUE(fs::is_directory(fin));
  size_t n = 0;
  for (const auto& e : fs::directory_iterator(dir_ / "ckpt" / "step_000020")) {
    ++n;
    EXPECT_TRUE(fs::equivalent(e.path(), fin / e.path().filename())) << e.path();
  }
  EXPECT_EQ(n, size_t(std::distance(fs::directory_iterator(fin), fs::directory_iterator())));
  EXPECT_EQ(s.steps_done, 20);
  // Nothing temporary is left behind.
  for (const auto& e : fs::directory_iterator(dir_ / "ckpt"))
    EXPECT_NE(e.path().filename().string().rfind(".tmp", 0), 0u) << e.path();
}

// The token cache: by default one shard named after the tokenizer's kind under out_dir/cache;
// cache_dir = "" writes none and trains on the same tokens. The checkpoint's tokenizer.json says
// the same kind, and sampling rebuilds the tokenizer from it.
TEST_F(TrainerTest, EmptyCacheDirTurnsTheCacheOff) {
  std::ostringstream sink;
  kd::train(kd::load_recipe(write_recipe("cached", student(), 4).string()), sink);
  std::vector<std::string> cached;
  for (const auto& e : fs::directory_iterator(dir_ / "cached" / "cache"))
    cached.push_back(e.path().filename().string());
  ASSERT_EQ(cached.size(), 1u);
  EXPECT_EQ(cached[0].rfind("tokens-bytes-", 0), 0u) << cached[0];

  kd::Recipe r =
      kd::load_recipe(write_recipe("uncached", student(), 4).string(), {"data.cache_dir=\"\""});
  ASSERT_EQ(r.data.cache_dir, "");
  kd::train(r, sink);
  EXPECT_FALSE(fs::exists(dir_ / "uncached" / "cache"));
  EXPECT_EQ(loss_log(dir_ / "uncached"), loss_log(dir_ / "cached"));

  const fs::path ckpt = dir_ / "uncached" / "final";
  std::stringstream tok_json;
  tok_json << std::ifstream(ckpt / "kdengine_tokenizer.json").rdbuf();
  EXPECT_EQ(kd::Json::parse(tok_json.str()).at("kind").as_string(), "bytes");
  EXPECT_EQ(kd::sample_text(ckpt.string(), "the ", 4, 1.0, 5, 1).rfind("the ", 0), 0u);
}

TEST_F(TrainerTest, LearningRateSchedule) {
  kd::Recipe r = kd::load_recipe(write_recipe("lr", student(), 100).string());
  EXPECT_NEAR(kd::learning_rate(r, 0), 3e-3 / 3, 1e-12);
  EXPECT_NEAR(kd::learning_rate(r, 2), 3e-3, 1e-12);
  EXPECT_NEAR(kd::learning_rate(r, 3), 3e-3, 1e-9);    // start of the decay
  EXPECT_NEAR(kd::learning_rate(r, 100), 3e-4, 1e-9);  // the end: min_lr
  const double mid = kd::learning_rate(r, 3 + 97 / 2);
  EXPECT_NEAR(mid, 3e-4 + 0.5 * (3e-3 - 3e-4) * (1 + std::cos(M_PI * (48.0 / 97.0))), 1e-9);
  for (int s = 3; s < 100; ++s) EXPECT_LE(kd::learning_rate(r, s + 1), kd::learning_rate(r, s));
}

TEST_F(TrainerTest, NaNStopsAndKeepsTheLastGoodCheckpoint) {
  std::ostringstream sink;
  // An absurd learning rate blows the weights up within a few steps.
  kd::Recipe r = kd::load_recipe(
      write_recipe("nan", student() + "[checkpoint]\nevery = 1\nkeep_last = 50\n", 40).string(),
      {"optim.lr=1e30", "optim.grad_clip=0", "schedule.warmup_steps=0", "schedule.min_lr=0"});
  try {
    kd::train(r, sink);
    FAIL() << "expected the run to stop on a non-finite loss";
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("stopping"), std::string::npos) << msg;
    EXPECT_NE(msg.find("Last good checkpoint: " + (dir_ / "nan").string()), std::string::npos)
        << msg;
  }
  const std::string last = kd::latest_checkpoint((dir_ / "nan").string());
  ASSERT_FALSE(last.empty());
  kd::GPT2 m = kd::load_model(last);  // loads: complete, never half-written
  for (float p : m.params) ASSERT_TRUE(std::isfinite(p));
}

TEST_F(TrainerTest, UnwritableOutDirIsBadInput) {
  std::ofstream(dir_ / "a_file") << "x";
  std::ostringstream sink;
  kd::Recipe r = kd::load_recipe(write_recipe("ro", student()).string(),
                                 {"run.out_dir=\"" + (dir_ / "a_file" / "sub").string() + "\""});
  EXPECT_THROW(kd::train(r, sink), kd::InputError);
}

TEST_F(TrainerTest, DistillationOnTinyShakespeareLowersHeldOutLoss) {
  const fs::path corpus = fs::path(KD_SHARED_DATA) / "tinyshakespeare" / "input.txt";
  if (!fs::exists(corpus)) GTEST_SKIP() << "TinyShakespeare not found at " << corpus;
  fs::copy_file(corpus, dir_ / "corpus.txt", fs::copy_options::overwrite_existing);
  std::ostringstream sink;
  kd::Recipe t = kd::load_recipe(write_recipe("teacher", student(2, 48), 60).string());
  kd::TrainSummary ts = kd::train(t, sink);
  kd::Recipe k = kd::load_recipe(
      write_recipe("kd",
                   student(1, 16) + "[teacher]\ncheckpoint = \"" +
                       (dir_ / "teacher" / "final").string() +
                       "\"\n\n[loss]\nce_weight = 0.5\nkd_weight = 0.5\ntemperature = 2.0\n",
                   40)
          .string());
  kd::TrainSummary ks = kd::train(k, sink);
  // The first evaluation line of the student's log vs its last one.
  std::ifstream f(dir_ / "kd" / "log.jsonl");
  std::string line;
  std::vector<double> val;
  while (std::getline(f, line)) {
    kd::Json j = kd::Json::parse(line);
    if (j.find("val_loss")) val.push_back(j.at("val_loss").as_number());
  }
  ASSERT_GE(val.size(), 2u);
  EXPECT_LT(val.back(), val.front());
  EXPECT_LT(ks.final_val_loss, std::log(256.0));  // better than uniform over bytes
  EXPECT_TRUE(std::isfinite(ks.teacher_val_loss));
  EXPECT_LT(ts.final_val_loss, std::log(256.0));
}

}  // namespace

namespace {

// A teacher checkpoint of a given vocabulary, made directly (random weights).
void write_teacher(const fs::path& dir, int vocab) {
  kd::GPT2Config c;
  c.n_layer = 1;
  c.n_head = 2;
  c.n_embd = 16;
  c.vocab_size = vocab;
  c.block_size = 32;
  kd::GPT2 t(c);
  t.init_random(4);
  fs::create_directories(dir);
  kd::save_model(dir.string(), t);
  kd::save_tokenizer_files(dir.string(), kd::ByteTokenizer(), c.block_size);
}

TEST_F(TrainerTest, TeacherVocabularySmallerThanStudentsIsBadInput) {
  write_teacher(dir_ / "small_teacher", 200);  // the byte tokenizer needs 256
  std::ostringstream sink;
  kd::Recipe r = kd::load_recipe(write_recipe("vocab",
                                              student() + "[teacher]\ncheckpoint = \"" +
                                                  (dir_ / "small_teacher").string() + "\"\n",
                                              3)
                                     .string());
  try {
    kd::train(r, sink);
    FAIL() << "expected a vocabulary error";
  } catch (const kd::InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("200"), std::string::npos) << msg;
    EXPECT_NE(msg.find("256"), std::string::npos) << msg;
  }
}

TEST_F(TrainerTest, PaddedTeacherVocabularyIsSliced) {
  write_teacher(dir_ / "padded_teacher", 320);  // 256 real ids + 64 padding rows
  std::ostringstream out;
  kd::Recipe r = kd::load_recipe(write_recipe("padded",
                                              student() + "[teacher]\ncheckpoint = \"" +
                                                  (dir_ / "padded_teacher").string() + "\"\n",
                                              3)
                                     .string());
  kd::TrainSummary s = kd::train(r, out);
  EXPECT_EQ(s.steps_done, 3);
  EXPECT_NE(out.str().find("using its first 256 logits"), std::string::npos) << out.str();
  EXPECT_TRUE(std::isfinite(s.final_val_loss));
}

}  // namespace

namespace {

// A full disk during a checkpoint: a small tmpfs as out_dir (needs root and mount; skipped
// otherwise). The write fails with an error, the previous checkpoint stays complete and loadable,
// and no temporary directory is left behind.
TEST_F(TrainerTest, FullDiskNeverDamagesTheLastCheckpoint) {
  const fs::path mnt = dir_ / "small_disk";
  fs::create_directories(mnt);
  const std::string cmd = "mount -t tmpfs -o size=700k tmpfs " + mnt.string() + " 2>/dev/null";
  if (std::system(cmd.c_str()) != 0) GTEST_SKIP() << "cannot mount a small tmpfs here";
  struct Unmount {
    std::string path;
    ~Unmount() { std::system(("umount " + path + " 2>/dev/null").c_str()); }
  } unmount{mnt.string()};
  std::ostringstream sink;
  // Checkpoints of about 0.4 MB every 5 steps, none pruned: the second one cannot fit.
  kd::Recipe r = kd::load_recipe(
      write_recipe("full", student() + "[checkpoint]\nevery = 5\nkeep_last = 10\n", 20).string(),
      {"run.out_dir=\"" + (mnt / "run").string() + "\"",
       "data.cache_dir=\"" + (dir_ / "cache").string() + "\""});
  EXPECT_THROW(kd::train(r, sink), std::runtime_error);
  const std::string last = kd::latest_checkpoint((mnt / "run").string());
  ASSERT_FALSE(last.empty()) << "the first checkpoint should have fit";
  kd::GPT2 m = kd::load_model(last);
  EXPECT_GT(m.params.size(), 0u);
  for (const auto& e : fs::directory_iterator(mnt / "run"))
    EXPECT_NE(e.path().filename().string().rfind(".tmp", 0), 0u) << "left behind: " << e.path();
}

// A logged training record holds the means over its logging window, not the last step's values:
// with [log] every = 5 the record at step 5 equals the mean of the five records [log] every = 1
// writes for steps 1..5 (every step has the same number of supervised tokens). A run without a
// teacher logs no kd, kl or teacher_entropy at all.
TEST_F(TrainerTest, LoggedLossIsTheMeanOverTheLoggingWindow) {
  std::ostringstream sink;
  kd::train(kd::load_recipe(write_recipe("teacher", student(2, 32), 6).string()), sink);
  const std::string teacher = "[teacher]\ncheckpoint = \"" + (dir_ / "teacher" / "final").string() +
                              "\"\n\n[loss]\ntemperature = 2.0\n\n";
  kd::train(kd::load_recipe(write_recipe("every1", student(1, 32) + teacher, 10).string()), sink);
  kd::train(kd::load_recipe(write_recipe("every5", student(1, 32) + teacher, 10).string(),
                            {"log.every=5"}),
            sink);
  auto train_records = [](const fs::path& run) {
    std::vector<kd::Json> out;
    std::ifstream f(run / "log.jsonl");
    for (std::string line; std::getline(f, line);) {
      kd::Json j = kd::Json::parse(line);
      if (j.find("loss")) out.push_back(j);
    }
    return out;
  };
  const auto one = train_records(dir_ / "every1"), five = train_records(dir_ / "every5");
  ASSERT_EQ(one.size(), 10u);
  ASSERT_EQ(five.size(), 2u);
  for (int w = 0; w < 2; ++w) {
    const kd::Json& rec = five[w];
    EXPECT_EQ(rec.at("step").as_int(), 5 * (w + 1));
    for (const char* key : {"loss", "ce", "kd", "kl", "teacher_entropy", "student_entropy"}) {
      double mean = 0;
      for (int i = 0; i < 5; ++i) mean += one[5 * w + i].at(key).as_number() / 5;
      EXPECT_NEAR(rec.at(key).as_number(), mean, 1e-9 * std::max(1.0, std::fabs(mean)))
          << key << " at step " << 5 * (w + 1);
    }
    // The last step's lr and gradient norm, not means.
    EXPECT_EQ(rec.at("lr").as_number(), one[5 * w + 4].at("lr").as_number());
    EXPECT_EQ(rec.at("grad_norm").as_number(), one[5 * w + 4].at("grad_norm").as_number());
  }
  // The steps within a window differ, so a mean is not the last value.
  EXPECT_NE(five[0].at("ce").as_number(), one[4].at("ce").as_number());
  // No teacher: no KD terms logged.
  for (const kd::Json& rec : train_records(dir_ / "teacher")) {
    EXPECT_TRUE(rec.find("ce") && rec.find("student_entropy"));
    for (const char* key : {"kd", "kl", "teacher_entropy"})
      EXPECT_EQ(rec.find(key), nullptr) << key << " logged without a teacher";
  }
}

// [student] teacher_layers: the student's layer i is the teacher's layer layers[i], embeddings and
// the final layernorm are the teacher's; checked tensor by tensor, and a student given every layer
// of the teacher computes the teacher's logits bit for bit.
TEST(StudentInit, CopiesTheChosenTeacherLayers) {
  kd::GPT2Config tc;
  tc.n_layer = 4;
  tc.n_head = 2;
  tc.n_embd = 32;
  tc.block_size = 32;
  tc.vocab_size = 260;  // padded beyond the student's 256
  kd::GPT2 teacher(tc);
  teacher.init_random(11);
  kd::GPT2Config sc = tc;
  sc.n_layer = 2;
  sc.vocab_size = 256;
  sc.block_size = 16;
  kd::GPT2 student(sc);
  student.init_random(12);
  kd::init_from_teacher_layers(student, teacher, {0, 2}, "t");
  auto tensor = [](const kd::GPT2& m, const std::string& name) {
    for (const auto& p : m.table())
      if (p.name == name)
        return std::vector<float>(m.params.begin() + p.offset,
                                  m.params.begin() + p.offset + p.numel);
    ADD_FAILURE() << "no " << name;
    return std::vector<float>();
  };
  int compared = 0;
  for (const auto& p : student.table()) {
    std::string tname = p.name;
    if (tname.rfind("h.0.", 0) == 0) tname = "h.0." + tname.substr(4);
    if (tname.rfind("h.1.", 0) == 0) tname = "h.2." + tname.substr(4);
    std::vector<float> want = tensor(teacher, tname);
    want.resize(p.numel);  // wte, wpe: the first rows
    EXPECT_EQ(tensor(student, p.name), want) << p.name << " <- " << tname;
    ++compared;
  }
  EXPECT_EQ(compared, 4 + 12 * 2);

  // Every layer in order: the teacher itself (on the student's vocabulary and block size).
  kd::GPT2Config fc = tc;
  fc.vocab_size = 256;
  kd::GPT2 full(fc);
  kd::init_from_teacher_layers(full, teacher, {0, 1, 2, 3}, "t");
  kd::Rng rng(5);
  std::vector<int32_t> tokens(2 * 32);
  for (auto& t : tokens) t = int32_t(rng.below(256));
  std::vector<float> a(size_t(2) * 32 * 256), b(size_t(2) * 32 * 260);
  full.forward_inference(a.data(), tokens.data(), 2, 32);
  teacher.forward_inference(b.data(), tokens.data(), 2, 32);
  for (size_t row = 0; row < 64; ++row)
    for (size_t v = 0; v < 256; ++v)
      ASSERT_EQ(a[row * 256 + v], b[row * 260 + v]) << row << " " << v;

  // What does not fit is an InputError naming the key.
  auto error_of = [&](kd::GPT2& s, std::vector<int> layers) {
    try {
      kd::init_from_teacher_layers(s, teacher, layers, "teacher_dir");
    } catch (const kd::InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(error_of(student, {0, 4})
                .find("[student] teacher_layers: teacher teacher_dir has layers "
                      "0..3; there is no layer 4"),
            std::string::npos);
  kd::GPT2Config nc = sc;
  nc.n_embd = 64;
  kd::GPT2 narrow(nc);
  EXPECT_NE(error_of(narrow, {0, 2}).find("must have the same"), std::string::npos);
}

// In a recipe: a distillation run starts from the teacher's layers; a layer the teacher does not
// have is a bad-input error before training.
TEST_F(TrainerTest, TeacherLayersInARecipe) {
  std::ostringstream sink;
  kd::train(kd::load_recipe(write_recipe("teacher", student(2, 32), 3).string()), sink);
  const std::string teacher =
      "[teacher]\ncheckpoint = \"" + (dir_ / "teacher" / "final").string() + "\"\n\n";
  const std::string s1 = "[student]\nn_layer = 1\nn_head = 2\nn_embd = 32\nblock_size = 32\n";
  kd::TrainSummary r = kd::train(
      kd::load_recipe(write_recipe("from1", s1 + "teacher_layers = [1]\n\n" + teacher, 3).string()),
      sink);
  EXPECT_EQ(r.steps_done, 3);
  try {
    kd::train(kd::load_recipe(
                  write_recipe("from5", s1 + "teacher_layers = [5]\n\n" + teacher, 3).string()),
              sink);
    FAIL() << "expected an InputError";
  } catch (const kd::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("there is no layer 5"), std::string::npos) << e.what();
  }
}

}  // namespace
