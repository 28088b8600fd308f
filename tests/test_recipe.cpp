// The recipe reader: values, defaults, every class of error with its location, overrides, the
// TOML round trip, hashing and diffs, the documentation table and the shipped recipes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/io/recipe.h"

namespace fs = std::filesystem;

namespace {

class RecipeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ =
        fs::temp_directory_path() / ("kd_recipe_" + std::to_string(getpid()) + "_" + info->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "data");
    write("data/input.txt", "hello world\n");
    write("data/val.txt", "goodbye\n");
    write("bpe/encoder.json", "{}");
    write("bpe/vocab.bpe", "#version: 0.2\n");
    make_checkpoint("teacher_ckpt");
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write(const std::string& name, const std::string& text) {
    const fs::path p = dir_ / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p) << text;
    return p.string();
  }
  void make_checkpoint(const std::string& name) {
    write(name + "/config.json", "{}");
    write(name + "/model.safetensors", "");
  }
  std::string abs(const std::string& rel) const { return (dir_ / rel).lexically_normal().string(); }

  // The error text of loading `path`; fails the test when it loads.
  static std::string errors_of(const std::string& path, const std::vector<std::string>& set = {}) {
    try {
      kd::load_recipe(path, set);
    } catch (const kd::InputError& e) {
      return e.what();
    }
    ADD_FAILURE() << "expected an InputError from " << path;
    return "";
  }
  static std::vector<std::string> lines(const std::string& s) {
    std::vector<std::string> out;
    std::istringstream in(s);
    for (std::string l; std::getline(in, l);) out.push_back(l);
    return out;
  }

  fs::path dir_;
};

const char* kMinimal = R"([data]
train = "data/input.txt"

[student]
n_layer = 2
n_head = 2
n_embd = 32
block_size = 64

[train]
max_steps = 10
)";

const char* kFull = R"(# every key, none at its default
[run]
name = "full"
out_dir = "out/full"
seed = 7
device = "cpu"

[data]
train = "data/input.txt"
val = "data/val.txt"
tokenizer = "gpt2"
encoder = "bpe/encoder.json"
vocab_bpe = "bpe/vocab.bpe"
cache_dir = "cache"

[student]
n_layer = 3
n_head = 4
n_embd = 64
block_size = 32

[teacher]
checkpoint = "teacher_ckpt"

[loss]
ce_weight = 0.25
kd_weight = 0.75
temperature = 4
divergence = "jsd"
beta = 0.3
t2_scaling = false

[train]
micro_batch = 5
seq_len = 16
grad_accum = 3
max_steps = 120
eval_every = 30
eval_batches = 2

[optim]
lr = 3e-4
beta1 = 0.8
beta2 = 0.99
eps = 1e-6
weight_decay = 0.05
grad_clip = 0.5

[schedule]
warmup_steps = 12
decay = "linear"
min_lr = 1e-5

[checkpoint]
every = 40
keep_last = 3
resume = true

[log]
every = 4
tensorboard = false

[profile]
enabled = true
wait = 1
warmup = 2
active = 4
)";

TEST_F(RecipeTest, FullRecipeLoadsEveryValue) {
  const kd::Recipe r = kd::load_recipe(write("full.toml", kFull));
  EXPECT_EQ(r.run.name, "full");
  EXPECT_EQ(r.run.out_dir, abs("out/full"));
  EXPECT_EQ(r.run.seed, 7);
  EXPECT_EQ(r.run.device, kd::Device::Cpu);
  EXPECT_EQ(r.data.train, abs("data/input.txt"));
  EXPECT_EQ(r.data.val, abs("data/val.txt"));
  EXPECT_EQ(r.data.tokenizer, kd::TokenizerKind::Gpt2);
  EXPECT_EQ(r.data.encoder, abs("bpe/encoder.json"));
  EXPECT_EQ(r.data.vocab_bpe, abs("bpe/vocab.bpe"));
  EXPECT_EQ(r.data.cache_dir, abs("cache"));
  EXPECT_EQ(r.student.init, "");
  EXPECT_EQ(r.student.n_layer, 3);
  EXPECT_EQ(r.student.n_head, 4);
  EXPECT_EQ(r.student.n_embd, 64);
  EXPECT_EQ(r.student.block_size, 32);
  EXPECT_EQ(r.student.vocab_size, 50257);
  EXPECT_TRUE(r.has_teacher());
  EXPECT_EQ(r.teacher.checkpoint, abs("teacher_ckpt"));
  EXPECT_EQ(r.loss.ce_weight, 0.25);
  EXPECT_EQ(r.loss.kd_weight, 0.75);
  EXPECT_EQ(r.loss.temperature, 4.0);
  EXPECT_EQ(r.loss.divergence, kd::Divergence::JSD);
  EXPECT_EQ(r.loss.beta, 0.3);
  EXPECT_FALSE(r.loss.t2_scaling);
  EXPECT_EQ(r.train.micro_batch, 5);
  EXPECT_EQ(r.train.seq_len, 16);
  EXPECT_EQ(r.train.grad_accum, 3);
  EXPECT_EQ(r.train.max_steps, 120);
  EXPECT_EQ(r.train.eval_every, 30);
  EXPECT_EQ(r.train.eval_batches, 2);
  EXPECT_EQ(r.optim.lr, 3e-4);
  EXPECT_EQ(r.optim.beta1, 0.8);
  EXPECT_EQ(r.optim.beta2, 0.99);
  EXPECT_EQ(r.optim.eps, 1e-6);
  EXPECT_EQ(r.optim.weight_decay, 0.05);
  EXPECT_EQ(r.optim.grad_clip, 0.5);
  EXPECT_EQ(r.schedule.warmup_steps, 12);
  EXPECT_EQ(r.schedule.decay, kd::Decay::Linear);
  EXPECT_EQ(r.schedule.min_lr, 1e-5);
  EXPECT_EQ(r.checkpoint.every, 40);
  EXPECT_EQ(r.checkpoint.keep_last, 3);
  EXPECT_TRUE(r.checkpoint.resume);
  EXPECT_EQ(r.log.every, 4);
  EXPECT_FALSE(r.log.tensorboard);
  EXPECT_TRUE(r.profile.enabled);
  EXPECT_EQ(r.profile.wait, 1);
  EXPECT_EQ(r.profile.warmup, 2);
  EXPECT_EQ(r.profile.active, 4);
}

TEST_F(RecipeTest, DefaultsWithoutTeacher) {
  const kd::Recipe r = kd::load_recipe(write("min.toml", kMinimal));
  EXPECT_EQ(r.run.name, "run");
  EXPECT_EQ(r.run.out_dir, abs("runs/run"));
  EXPECT_EQ(r.run.seed, 1337);
  EXPECT_EQ(r.run.device, kd::Device::Auto);
  EXPECT_EQ(r.data.val, "");
  EXPECT_EQ(r.data.val_fraction, 0.1);
  EXPECT_EQ(r.data.tokenizer, kd::TokenizerKind::Bytes);
  EXPECT_EQ(r.data.encoder, "");
  EXPECT_EQ(r.data.cache_dir, abs("runs/run/cache"));
  EXPECT_EQ(r.student.vocab_size, 256);
  EXPECT_FALSE(r.has_teacher());
  EXPECT_EQ(r.loss.ce_weight, 1.0);
  EXPECT_EQ(r.loss.kd_weight, 0.0);
  EXPECT_EQ(r.loss.temperature, 2.0);
  EXPECT_EQ(r.loss.divergence, kd::Divergence::ForwardKL);
  EXPECT_EQ(r.loss.beta, 0.5);
  EXPECT_TRUE(r.loss.t2_scaling);
  EXPECT_EQ(r.train.micro_batch, 8);
  EXPECT_EQ(r.train.seq_len, 64);  // the student's block_size
  EXPECT_EQ(r.train.grad_accum, 1);
  EXPECT_EQ(r.train.eval_every, 50);
  EXPECT_EQ(r.train.eval_batches, 8);
  EXPECT_EQ(r.optim.lr, 1e-3);
  EXPECT_EQ(r.optim.beta1, 0.9);
  EXPECT_EQ(r.optim.beta2, 0.95);
  EXPECT_EQ(r.optim.eps, 1e-8);
  EXPECT_EQ(r.optim.weight_decay, 0.1);
  EXPECT_EQ(r.optim.grad_clip, 1.0);
  EXPECT_EQ(r.schedule.warmup_steps, 0);
  EXPECT_EQ(r.schedule.decay, kd::Decay::Cosine);
  EXPECT_DOUBLE_EQ(r.schedule.min_lr, 1e-4);  // lr / 10
  EXPECT_EQ(r.checkpoint.every, 0);
  EXPECT_EQ(r.checkpoint.keep_last, 2);
  EXPECT_FALSE(r.checkpoint.resume);
  EXPECT_EQ(r.log.every, 10);
  EXPECT_TRUE(r.log.tensorboard);
  EXPECT_FALSE(r.profile.enabled);
  EXPECT_EQ(r.profile.wait, 2);
  EXPECT_EQ(r.profile.warmup, 1);
  EXPECT_EQ(r.profile.active, 3);
}

TEST_F(RecipeTest, DefaultsFollowOtherValues) {
  const kd::Recipe r = kd::load_recipe(
      write("t.toml", std::string(kMinimal) +
                          "[run]\nname = \"abc\"\n[optim]\nlr = 0.02\n[teacher]\ncheckpoint = "
                          "\"teacher_ckpt\"\n"));
  EXPECT_EQ(r.run.out_dir, abs("runs/abc"));
  EXPECT_EQ(r.data.cache_dir, abs("runs/abc/cache"));
  EXPECT_DOUBLE_EQ(r.schedule.min_lr, 0.002);
  EXPECT_EQ(r.loss.ce_weight, 0.5);  // with a teacher
  EXPECT_EQ(r.loss.kd_weight, 0.5);
}

TEST_F(RecipeTest, DocumentationListsEveryKey) {
  std::ifstream in(std::string(KD_SOURCE_DIR) + "/docs/recipes.md");
  ASSERT_TRUE(in) << "docs/recipes.md is missing";
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string doc = ss.str();
  // The full recipe writes every key; each must have a table row under its section's heading.
  kd::Recipe r = kd::load_recipe(write("full.toml", kFull));
  r.data.val.clear();  // so that val_fraction is written too
  std::string section;
  size_t begin = 0, end = 0;
  int rows = 0;
  for (const std::string& l : lines(kd::recipe_to_toml(r))) {
    if (l.empty() || l[0] == '#') continue;
    if (l[0] == '[') {
      section = l;
      begin = doc.find("## " + section);
      ASSERT_NE(begin, std::string::npos) << "no heading for " << section;
      end = doc.find("\n## ", begin + 1);
      continue;
    }
    const std::string key = l.substr(0, l.find(' '));
    const size_t row = doc.find("| `" + key + "` |", begin);
    EXPECT_TRUE(row != std::string::npos && row < end) << section << " " << key << " undocumented";
    ++rows;
  }
  EXPECT_GE(rows, 40);
  for (const char* key : {"init", "val"})
    EXPECT_NE(doc.find("| `" + std::string(key) + "` |"), std::string::npos);
}

// docs/recipes.md has a "## [section]" heading per section and under it a row per key:
// | `key` | type | default | allowed | meaning |. The rows are exactly the key table's keys, with
// its type, default and meaning, and an "allowed" column that starts with the table's range or
// choices (the docs may add the rules between keys after it).
TEST_F(RecipeTest, DocsListExactlyTheTableKeys) {
  std::ifstream in(std::string(KD_SOURCE_DIR) + "/docs/recipes.md");
  ASSERT_TRUE(in) << "docs/recipes.md is missing";
  std::stringstream ss;
  ss << in.rdbuf();
  std::map<std::string, std::vector<std::string>> rows;  // "section.key" -> its cells
  std::set<std::string> headings;
  std::string section;
  for (const std::string& l : lines(ss.str())) {
    if (l.rfind("## ", 0) == 0) {
      const bool is_section = l.rfind("## [", 0) == 0 && l.back() == ']';
      section = is_section ? l.substr(4, l.size() - 5) : "";
      if (is_section) {
        EXPECT_TRUE(headings.insert(section).second) << l << " twice";
      }
      continue;
    }
    if (section.empty() || l.rfind("| `", 0) != 0) continue;
    std::vector<std::string> cells;
    std::string cell;
    for (char c : l.substr(1)) {
      if (c != '|') {
        cell += c;
        continue;
      }
      const size_t b = cell.find_first_not_of(' '), e = cell.find_last_not_of(' ');
      cells.push_back(b == std::string::npos ? "" : cell.substr(b, e - b + 1));
      cell.clear();
    }
    ASSERT_EQ(cells.size(), 5u) << l;
    const std::string id = section + "." + cells[0].substr(1, cells[0].size() - 2);
    EXPECT_TRUE(rows.emplace(id, cells).second) << id << " listed twice";
  }

  const std::vector<kd::RecipeKeyDoc> keys = kd::recipe_keys();
  EXPECT_GE(keys.size(), 47u);
  std::set<std::string> sections;
  for (const kd::RecipeKeyDoc& k : keys) {
    sections.insert(k.section);
    const std::string id = k.section + "." + k.name;
    const std::string row = "| `" + k.name + "` | " + k.type + " | " + k.default_value + " | " +
                            k.allowed + " | " + k.doc + " |";
    const auto it = rows.find(id);
    if (it == rows.end()) {
      ADD_FAILURE() << id << " is missing from docs/recipes.md; under ## [" << k.section
                    << "] add\n"
                    << row;
      continue;
    }
    const std::vector<std::string>& c = it->second;
    EXPECT_EQ(c[1], k.type) << id;
    EXPECT_EQ(c[2], k.default_value) << id;
    EXPECT_EQ(c[3].rfind(k.allowed, 0), 0u) << id << ": allowed should start with " << k.allowed;
    EXPECT_EQ(c[4], k.doc) << id;
    rows.erase(it);
  }
  for (const auto& [id, cells] : rows) ADD_FAILURE() << id << " is documented but not a key";
  EXPECT_EQ(headings, sections);
}

// Each choice is one enum, its words declared once: reading, --set and the writer agree.
TEST_F(RecipeTest, ChoicesAreEnumsWithOneSpelling) {
  const std::string p = write("r.toml", kMinimal);
  auto check = [&](const char* key, auto all, auto field) {
    std::set<std::string> words;
    for (auto v : all) {
      const std::string word = kd::to_string(v);
      EXPECT_TRUE(words.insert(word).second) << word << " twice";
      EXPECT_EQ(kd::parse_choice<decltype(v)>(word), v) << word;
      const kd::Recipe r = kd::load_recipe(p, {std::string(key) + "=" + word});
      EXPECT_EQ(field(r), v) << key << "=" << word;
      const std::string dotted = key;
      const std::string line = dotted.substr(dotted.find('.') + 1) + " = \"" + word + "\"\n";
      EXPECT_NE(kd::recipe_to_toml(r).find(line), std::string::npos) << line;
    }
  };
  check("run.device", std::array{kd::Device::Auto, kd::Device::Cpu, kd::Device::Cuda},
        [](const kd::Recipe& r) { return r.run.device; });
  check("schedule.decay", std::array{kd::Decay::Cosine, kd::Decay::Linear, kd::Decay::Constant},
        [](const kd::Recipe& r) { return r.schedule.decay; });
  check("loss.divergence",
        std::array{kd::Divergence::ForwardKL, kd::Divergence::ReverseKL, kd::Divergence::JSD},
        [](const kd::Recipe& r) { return r.loss.divergence; });
  check("data.tokenizer", std::array{kd::TokenizerKind::Bytes},
        [](const kd::Recipe& r) { return r.data.tokenizer; });
  EXPECT_FALSE(kd::parse_choice<kd::Device>("gpu").has_value());
  EXPECT_FALSE(kd::parse_choice<kd::Decay>("Cosine").has_value());
}

// cache_dir = "" turns the token cache off; every other path must be non-empty.
TEST_F(RecipeTest, EmptyCacheDirMeansNoCache) {
  const std::string p = write("r.toml", std::string(kMinimal).substr(0, 32) + "cache_dir = \"\"\n" +
                                            std::string(kMinimal).substr(32));
  const kd::Recipe r = kd::load_recipe(p);
  EXPECT_EQ(r.data.cache_dir, "");
  EXPECT_NE(kd::recipe_to_toml(r).find("\ncache_dir = \"\"\n"), std::string::npos);
  EXPECT_EQ(kd::load_recipe(write("again.toml", kd::recipe_to_toml(r))), r);
  // A bare empty --set says the same; the diff shows the change.
  const kd::Recipe d = kd::load_recipe(write("d.toml", kMinimal));
  const kd::Recipe off = kd::load_recipe(write("d.toml", kMinimal), {"data.cache_dir="});
  EXPECT_EQ(off.data.cache_dir, "");
  EXPECT_EQ(
      kd::recipe_diff(d, off),
      (std::vector<std::string>{"data.cache_dir: \"" + abs("runs/run/cache") + "\" -> \"\""}));
  EXPECT_EQ(errors_of(p, {"run.out_dir="}),
            "--set run.out_dir: error: [run] out_dir must not be empty");
}

TEST_F(RecipeTest, UnknownKeySuggestsTheClosest) {
  const std::string p = write("r.toml", std::string(kMinimal) + "[optim]\nlerning_rate = 1e-3\n");
  EXPECT_EQ(errors_of(p),
            p + ":13:1: error: unknown key 'lerning_rate' in [optim]; did you mean 'lr'?");
  const std::string q = write("q.toml", std::string(kMinimal) + "  max_stepz = 3\n");
  EXPECT_EQ(errors_of(q),
            q + ":12:3: error: unknown key 'max_stepz' in [train]; did you mean 'max_steps'?");
  const std::string far = write("f.toml", std::string(kMinimal) + "colour = 3\n");
  EXPECT_EQ(errors_of(far), far + ":12:1: error: unknown key 'colour' in [train]");
  const std::string other = write("o.toml", std::string(kMinimal) + "lr = 3\n");
  EXPECT_EQ(errors_of(other),
            other + ":12:1: error: unknown key 'lr' in [train]; it belongs in [optim]");
}

// A near match in the same section comes before a key of the same name elsewhere: `warmup` in
// [schedule] is most likely warmup_steps, though [profile] has a `warmup`.
TEST_F(RecipeTest, UnknownKeyPrefersANearMatchInItsOwnSection) {
  const std::string p = write("r.toml", std::string(kMinimal) + "[schedule]\nwarmup = 25\n");
  EXPECT_EQ(errors_of(p), p + ":13:1: error: unknown key 'warmup' in [schedule]; did you mean "
                              "'warmup_steps'? ([profile] has a key 'warmup')");
  // A misspelling close to a key of the section, with no such key elsewhere.
  const std::string q = write("q.toml", std::string(kMinimal) + "[schedule]\nwarmup_step = 25\n");
  EXPECT_EQ(errors_of(q), q + ":13:1: error: unknown key 'warmup_step' in [schedule]; did you mean "
                              "'warmup_steps'?");
  // Nothing near in [log]: the other section is named alone.
  const std::string o = write("o.toml", std::string(kMinimal) + "[log]\nwarmup = 25\n");
  EXPECT_EQ(errors_of(o),
            o + ":13:1: error: unknown key 'warmup' in [log]; it belongs in [profile]");
}

// A value the TOML parser cannot read says what the key expects, with an example, instead of the
// parser's "could not determine value type".
TEST_F(RecipeTest, UnparsableOverrideSaysWhatWasExpected) {
  const std::string p = write("r.toml", kMinimal);
  EXPECT_EQ(errors_of(p, {"train.max_steps=abc"}),
            "--set train.max_steps: error: cannot read 'abc' as a TOML value; [train] max_steps "
            "expects an integer, e.g. --set train.max_steps=100");
  EXPECT_EQ(errors_of(p, {"loss.t2_scaling=yes"}),
            "--set loss.t2_scaling: error: cannot read 'yes' as a TOML value; [loss] t2_scaling "
            "expects true or false, e.g. --set loss.t2_scaling=true");
  const std::string e = errors_of(p, {"run.name=\"open"});
  EXPECT_NE(e.find("[run] name expects a string"), std::string::npos) << e;
  EXPECT_EQ(e.find("could not determine"), std::string::npos) << e;
}

TEST_F(RecipeTest, UnknownSectionAndTopLevelKey) {
  const std::string p = write("r.toml", std::string(kMinimal) + "[optimizer]\nlr = 1\n");
  EXPECT_EQ(errors_of(p), p + ":12:2: error: unknown section [optimizer]; did you mean [optim]?");
  const std::string q = write("q.toml", "seed = 3\n" + std::string(kMinimal));
  EXPECT_EQ(errors_of(q),
            q + ":1:1: error: key 'seed' is outside any section; it belongs in [run]");
  const std::string t = write("t.toml", std::string(kMinimal) + "[[log]]\nevery = 1\n");
  EXPECT_EQ(errors_of(t), t + ":12:3: error: [log] must be a table, got an array");
}

TEST_F(RecipeTest, WrongTypeIsAnErrorNotADefault) {
  const std::string p = write("r.toml", R"([data]
train = "data/input.txt"
[student]
n_layer = 2
n_head = 2
n_embd = 32
block_size = 64
[train]
max_steps = "100"
micro_batch = 2.0
[optim]
lr = "fast"
[log]
tensorboard = 1
)");
  EXPECT_EQ(errors_of(p),
            p + ":9:13: error: [train] max_steps: expected an integer, got a string\n" + p +
                ":10:15: error: [train] micro_batch: expected an integer, got a float\n" + p +
                ":12:6: error: [optim] lr: expected a number, got a string\n" + p +
                ":14:15: error: [log] tensorboard: expected a boolean, got an integer");
}

TEST_F(RecipeTest, OutOfRangeValues) {
  const std::string q = write("q.toml", std::string(kMinimal) + R"(eval_batches = 0
[loss]
temperature = -1
beta = 1.5
[optim]
beta2 = 1.0
)");
  EXPECT_EQ(errors_of(q), q + ":12:16: error: [train] eval_batches must be >= 1, got 0\n" + q +
                              ":14:15: error: [loss] temperature must be > 0, got -1\n" + q +
                              ":15:8: error: [loss] beta must be in [0, 1], got 1.5\n" + q +
                              ":17:9: error: [optim] beta2 must be in [0, 1), got 1");
  const std::string v = write("v.toml", "[data]\ntrain = \"data/input.txt\"\nval_fraction = 0.6\n" +
                                            std::string(kMinimal).substr(32));
  EXPECT_EQ(errors_of(v), v + ":3:16: error: [data] val_fraction must be in (0, 0.5], got 0.6");
  const std::string big = write("b.toml", std::string(kMinimal) + "micro_batch = 3000000000\n");
  EXPECT_EQ(errors_of(big),
            big + ":12:15: error: [train] micro_batch must be <= 2147483647, got 3000000000");
}

TEST_F(RecipeTest, EnumValuesListTheAllowedOnes) {
  const std::string p = write(
      "r.toml", std::string(kMinimal) + "[run]\ndevice = \"gpu\"\n[loss]\ndivergence = \"kl\"\n");
  EXPECT_EQ(
      errors_of(p),
      p + ":13:10: error: [run] device must be one of \"auto\", \"cpu\", \"cuda\", got \"gpu\"\n" +
          p +
          ":15:14: error: [loss] divergence must be one of \"forward_kl\", \"reverse_kl\", "
          "\"jsd\", got \"kl\"");
}

TEST_F(RecipeTest, MissingRequiredKeys) {
  // [train] exists without max_steps: reported at the section's header.
  const std::string p =
      write("r.toml", std::string(kMinimal).substr(0, 95) + "[train]\nseq_len = 8\n");
  EXPECT_EQ(errors_of(p), p + ":10:1: error: missing required key 'max_steps' in [train]");
  // No [data] section at all: line 1.
  const std::string q = write("q.toml", std::string(kMinimal).substr(32));
  EXPECT_EQ(errors_of(q), q + ":1:1: error: missing required key 'train' in [data]");
  // gpt2 needs its two files.
  const std::string g =
      write("g.toml", "[data]\ntrain = \"data/input.txt\"\ntokenizer = \"gpt2\"\n" +
                          std::string(kMinimal).substr(32));
  EXPECT_EQ(errors_of(g), g +
                              ":1:1: error: missing required key 'encoder' in [data] (tokenizer = "
                              "\"gpt2\" needs it)\n" +
                              g +
                              ":1:1: error: missing required key 'vocab_bpe' in [data] (tokenizer "
                              "= \"gpt2\" needs it)");
  // A partial student and an empty [teacher].
  const std::string s = write("s.toml",
                              "[data]\ntrain = \"data/input.txt\"\n[student]\nn_layer = 2\n"
                              "n_head = 2\n[teacher]\n[train]\nmax_steps = 3\nseq_len = 4\n");
  EXPECT_EQ(errors_of(s), s + ":3:1: error: missing required key 'n_embd' in [student]\n" + s +
                              ":3:1: error: missing required key 'block_size' in [student]\n" + s +
                              ":6:1: error: missing required key 'checkpoint' in [teacher]");
}

TEST_F(RecipeTest, MissingFilesAreResolvedAgainstTheRecipe) {
  fs::create_directories(dir_ / "sub");
  fs::create_directories(dir_ / "half_ckpt");
  write("half_ckpt/config.json", "{}");
  const std::string p = write("sub/r.toml", R"([data]
train = "../data/nope.txt"
val = "../data/input.txt"
[student]
init = "../half_ckpt"
[teacher]
checkpoint = "../data/input.txt"
[train]
max_steps = 3
seq_len = 8
)");
  EXPECT_EQ(errors_of(p),
            p + ":2:9: error: [data] train: no such file or directory: " + abs("data/nope.txt") +
                "\n" + p + ":5:8: error: [student] init: " + abs("half_ckpt") +
                " is not a checkpoint directory: it has no model.safetensors\n" + p +
                ":7:14: error: [teacher] checkpoint: " + abs("data/input.txt") +
                " is not a checkpoint directory");
  // With the files in place, the same recipe loads and resolves against sub/.
  write("data/nope.txt", "x");
  write("half_ckpt/model.safetensors", "");
  const std::string ok = write("sub/ok.toml", R"([data]
train = "../data/nope.txt"
[student]
init = "../half_ckpt"
[teacher]
checkpoint = "../teacher_ckpt"
[train]
max_steps = 3
seq_len = 8
)");
  const kd::Recipe r = kd::load_recipe(ok);
  EXPECT_EQ(r.data.train, abs("data/nope.txt"));
  EXPECT_EQ(r.student.init, abs("half_ckpt"));
  EXPECT_EQ(r.student.n_layer, 0);
  EXPECT_EQ(r.run.out_dir, abs("sub/runs/run"));
}

TEST_F(RecipeTest, Contradictions) {
  const std::string q = write("q.toml", R"([data]
train = "data/input.txt"
val = "data/val.txt"
val_fraction = 0.2
encoder = "bpe/encoder.json"
[student]
n_layer = 2
n_head = 3
n_embd = 32
block_size = 64
[loss]
kd_weight = 0.5
[train]
max_steps = 10
seq_len = 65
[schedule]
warmup_steps = 11
min_lr = 0.5
[profile]
enabled = true
active = 0
)");
  EXPECT_EQ(
      errors_of(q),
      q +
          ":4:16: error: [data] val_fraction has no effect when val is given; remove one of "
          "them\n" +
          q + ":5:11: error: [data] encoder is only used with tokenizer = \"gpt2\"\n" + q +
          ":9:10: error: [student] n_embd (32) must be divisible by n_head (3)\n" + q +
          ":12:13: error: [loss] kd_weight is 0.5 but there is no [teacher] section; add one "
          "or set kd_weight = 0\n" +
          q + ":15:11: error: [train] seq_len must be <= [student] block_size (64), got 65\n" + q +
          ":17:16: error: [schedule] warmup_steps must be <= [train] max_steps (10), got 11\n" + q +
          ":18:10: error: [schedule] min_lr must be <= [optim] lr (0.001), got 0.5\n" + q +
          ":21:10: error: [profile] active must be >= 1 when enabled = true, got 0");
  const std::string z = write("z.toml", std::string(kMinimal) + "[loss]\nce_weight = 0\n");
  EXPECT_EQ(
      errors_of(z),
      z + ":13:13: error: [loss] ce_weight and kd_weight are both 0: nothing would be trained");
  const std::string i = write("i.toml", R"([data]
train = "data/input.txt"
[student]
init = "teacher_ckpt"
n_layer = 2
[train]
max_steps = 10
)");
  EXPECT_EQ(errors_of(i),
            i +
                ":5:11: error: [student] n_layer cannot be given together with init (the "
                "checkpoint's config.json defines the model)\n" +
                i +
                ":6:1: error: missing required key 'seq_len' in [train] (needed when [student] "
                "init is used)");
  const std::string w =
      write("w.toml", std::string(kMinimal) + "[profile]\nenabled = true\nwait = 8\n");
  EXPECT_EQ(errors_of(w),
            w + ":12:1: error: [profile] the window wait + warmup + active = 12 does not "
                "fit in [train] max_steps = 10");
}

TEST_F(RecipeTest, SeveralErrorsAreAllReportedInFileOrder) {
  const std::string p = write("r.toml", R"([optim]
lerning_rate = 1e-3
[student]
n_layer = 0
n_head = 2
n_embd = 32
block_size = 64
[run]
device = "tpu"
[data]
train = "data/input.txt"
[train]
max_steps = 10
)");
  const std::vector<std::string> got = lines(errors_of(p));
  ASSERT_EQ(got.size(), 3u) << errors_of(p);
  EXPECT_EQ(got[0], p + ":2:1: error: unknown key 'lerning_rate' in [optim]; did you mean 'lr'?");
  EXPECT_EQ(got[1], p + ":4:11: error: [student] n_layer must be >= 1, got 0");
  EXPECT_EQ(
      got[2],
      p + ":9:10: error: [run] device must be one of \"auto\", \"cpu\", \"cuda\", got \"tpu\"");
}

TEST_F(RecipeTest, SyntaxErrorAndUnreadableFile) {
  const std::string p = write("r.toml", "[run]\nname = = 3\n");
  const std::string e = errors_of(p);
  EXPECT_EQ(e.rfind(p + ":2:", 0), 0u) << e;
  EXPECT_NE(e.find(": error: "), std::string::npos) << e;
  EXPECT_EQ(lines(e).size(), 1u);
  const std::string missing = abs("absent.toml");
  EXPECT_EQ(errors_of(missing), missing + ": error: cannot open the recipe file");
}

TEST_F(RecipeTest, OverridesReplaceAndAdd) {
  const std::string p = write("r.toml", kMinimal);
  const kd::Recipe r = kd::load_recipe(
      p, {"optim.lr=2e-3", "run.device=cpu", "run.name = \"quoted\"", "train.max_steps=7",
          "loss.t2_scaling=false", "data.val=data/val.txt", "schedule.min_lr=0"});
  EXPECT_EQ(r.optim.lr, 2e-3);
  EXPECT_EQ(r.run.device, kd::Device::Cpu);
  EXPECT_EQ(r.run.name, "quoted");
  EXPECT_EQ(r.train.max_steps, 7);
  EXPECT_FALSE(r.loss.t2_scaling);
  EXPECT_EQ(r.data.val, abs("data/val.txt"));
  EXPECT_EQ(r.schedule.min_lr, 0.0);
  // The last of two overrides of one key wins.
  EXPECT_EQ(kd::load_recipe(p, {"run.seed=1", "run.seed=2"}).run.seed, 2);
}

TEST_F(RecipeTest, BadOverridesNameTheirKey) {
  const std::string p = write("r.toml", kMinimal);
  EXPECT_EQ(errors_of(p, {"optim.lerning_rate=1"}),
            "--set optim.lerning_rate: error: unknown key 'lerning_rate' in [optim]; did you mean "
            "'lr'?");
  EXPECT_EQ(errors_of(p, {"optimizer.lr=1"}),
            "--set optimizer.lr: error: unknown section [optimizer]; did you mean [optim]?");
  EXPECT_EQ(errors_of(p, {"lr=1"}),
            "--set lr=1: error: malformed override 'lr=1'; expected section.key=value");
  EXPECT_EQ(errors_of(p, {"optim.lr"}),
            "--set optim.lr: error: malformed override 'optim.lr'; expected section.key=value");
  EXPECT_EQ(errors_of(p, {"optim.lr=fast"}),
            "--set optim.lr: error: cannot read 'fast' as a TOML value; [optim] lr expects a "
            "number, e.g. --set optim.lr=0.001");
  EXPECT_EQ(errors_of(p, {"optim.lr=-1"}), "--set optim.lr: error: [optim] lr must be > 0, got -1");
  EXPECT_EQ(errors_of(p, {"train.max_steps=\"9\""}),
            "--set train.max_steps: error: [train] max_steps: expected an integer, got a string");
  // Errors from overrides follow the order of the overrides, whatever their kind.
  const std::vector<std::string> ordered =
      lines(errors_of(p, {"log.every=0", "x.y=1", "optim.lr=1 2"}));
  ASSERT_EQ(ordered.size(), 3u);
  EXPECT_EQ(ordered[0], "--set log.every: error: [log] every must be >= 1, got 0");
  EXPECT_EQ(ordered[1], "--set x.y: error: unknown section [x]");
  EXPECT_EQ(ordered[2].rfind("--set optim.lr: error: cannot read '1 2' as a TOML value", 0), 0u)
      << ordered[2];
  // File errors come first, then the overrides' in the order given.
  const std::string q = write("q.toml", std::string(kMinimal) + "bogus = 1\n");
  EXPECT_EQ(errors_of(q, {"run.device=tpu", "log.every=0"}),
            q + ":12:1: error: unknown key 'bogus' in [train]\n" +
                "--set run.device: error: [run] device must be one of \"auto\", \"cpu\", \"cuda\", "
                "got \"tpu\"\n" +
                "--set log.every: error: [log] every must be >= 1, got 0");
}

TEST_F(RecipeTest, RoundTripThroughToml) {
  for (const char* text : {kFull, kMinimal}) {
    const kd::Recipe a = kd::load_recipe(write("a.toml", text));
    // Written elsewhere: the resolved paths are absolute, so the copy means the same files.
    const std::string copy = write("elsewhere/deeper/b.toml", kd::recipe_to_toml(a));
    const kd::Recipe b = kd::load_recipe(copy);
    EXPECT_EQ(a, b) << kd::recipe_to_toml(a);
    EXPECT_EQ(kd::recipe_to_toml(a), kd::recipe_to_toml(b));
    EXPECT_EQ(kd::recipe_hash(a), kd::recipe_hash(b));
    EXPECT_TRUE(kd::recipe_diff(a, b).empty());
  }
  // A student from a checkpoint round-trips too (no dimensions written).
  const kd::Recipe c = kd::load_recipe(
      write("c.toml",
            "[data]\ntrain = \"data\"\n[student]\ninit = \"teacher_ckpt\"\n[train]\n"
            "max_steps = 4\nseq_len = 16\n"));
  EXPECT_EQ(kd::recipe_to_toml(c).find("n_layer"), std::string::npos);
  EXPECT_EQ(kd::load_recipe(write("c2.toml", kd::recipe_to_toml(c))), c);
}

TEST_F(RecipeTest, HashIsStableHexAndTracksValues) {
  const std::string p = write("r.toml", kMinimal);
  const kd::Recipe a = kd::load_recipe(p);
  const std::string h = kd::recipe_hash(a);
  EXPECT_EQ(h.size(), 16u);
  EXPECT_EQ(h.find_first_not_of("0123456789abcdef"), std::string::npos);
  EXPECT_EQ(kd::recipe_hash(kd::load_recipe(p)), h);
  EXPECT_NE(kd::recipe_hash(kd::load_recipe(p, {"optim.lr=0.0011"})), h);
  EXPECT_NE(kd::recipe_hash(kd::load_recipe(p, {"run.seed=1338"})), h);
}

TEST_F(RecipeTest, DiffListsChangedKeys) {
  const std::string p = write("r.toml", kMinimal);
  const kd::Recipe a = kd::load_recipe(p);
  const kd::Recipe b =
      kd::load_recipe(p, {"optim.lr=2e-3", "run.device=cpu", "schedule.min_lr=1e-4"});
  EXPECT_EQ(kd::recipe_diff(a, b), (std::vector<std::string>{"run.device: \"auto\" -> \"cpu\"",
                                                             "optim.lr: 0.001 -> 0.002"}));
  EXPECT_EQ(kd::recipe_diff(b, a), (std::vector<std::string>{"run.device: \"cpu\" -> \"auto\"",
                                                             "optim.lr: 0.002 -> 0.001"}));
  const kd::Recipe t = kd::load_recipe(p, {"teacher.checkpoint=teacher_ckpt"});
  EXPECT_EQ(
      kd::recipe_diff(a, t),
      (std::vector<std::string>{"teacher.checkpoint: (unset) -> \"" + abs("teacher_ckpt") + "\"",
                                "loss.ce_weight: 1.0 -> 0.5", "loss.kd_weight: 0.0 -> 0.5"}));
}

// [student] teacher_layers: an array of layer indices, one per student layer, with a teacher.
TEST_F(RecipeTest, TeacherLayers) {
  const std::string teacher = "[teacher]\ncheckpoint = \"teacher_ckpt\"\n";
  const std::string p = write("r.toml", std::string(kMinimal) + teacher);
  const kd::Recipe r = kd::load_recipe(p, {"student.teacher_layers=[0, 3]"});
  EXPECT_EQ(r.student.teacher_layers, (std::vector<int>{0, 3}));
  EXPECT_NE(kd::recipe_to_toml(r).find("teacher_layers = [0, 3]"), std::string::npos);
  EXPECT_EQ(kd::load_recipe(write("rt.toml", kd::recipe_to_toml(r))), r);
  EXPECT_EQ(errors_of(p, {"student.teacher_layers=[1]"}),
            "--set student.teacher_layers: error: [student] teacher_layers lists 1 layer but "
            "n_layer = 2; give one teacher layer per student layer");
  EXPECT_EQ(errors_of(p, {"student.teacher_layers=[0, -1]"}),
            "--set student.teacher_layers: error: [student] teacher_layers: every entry must be "
            ">= 0, got -1");
  EXPECT_EQ(errors_of(p, {"student.teacher_layers=\"every_other\""}),
            "--set student.teacher_layers: error: [student] teacher_layers: expected an array of "
            "integers, got a string");
  const std::string q = write("q.toml", std::string(kMinimal));
  EXPECT_EQ(errors_of(q, {"student.teacher_layers=[0, 1]"}),
            "--set student.teacher_layers: error: [student] teacher_layers copies layers of the "
            "teacher, but there is no [teacher] section");
}

// checkpoint.resume and run.overwrite say how a run starts, not what it computes: a resume that
// only switches resume on reports no change of the run.
TEST_F(RecipeTest, DiffLeavesOutResumeAndOverwrite) {
  const std::string p = write("r.toml", kMinimal);
  const kd::Recipe a = kd::load_recipe(p);
  EXPECT_TRUE(kd::recipe_diff(a, kd::load_recipe(p, {"checkpoint.resume=true"})).empty());
  EXPECT_TRUE(kd::recipe_diff(a, kd::load_recipe(p, {"run.overwrite=true"})).empty());
  EXPECT_EQ(
      kd::recipe_diff(a, kd::load_recipe(p, {"checkpoint.resume=true", "train.max_steps=11"})),
      std::vector<std::string>{"train.max_steps: 10 -> 11"});
  // Both at once is a contradiction, named at overwrite.
  EXPECT_EQ(errors_of(p, {"checkpoint.resume=true", "run.overwrite=true"}),
            "--set run.overwrite: error: [run] overwrite = true deletes the previous run that "
            "[checkpoint] resume = true would continue; set only one of them");
}

// The shipped recipes load once the files they name exist. A distillation recipe's teacher is
// another run's output: point it at a stand-in checkpoint.
TEST_F(RecipeTest, ShippedRecipesLoad) {
  const fs::path data = fs::path(KD_SOURCE_DIR) / "data";  // where tools/get_data.sh puts them
  if (!fs::exists(data / "tinyshakespeare/input.txt") ||
      !fs::exists(data / "gpt2-bpe/encoder.json"))
    GTEST_SKIP() << "no corpora in " << data << "; run tools/get_data.sh";
  const std::string recipes = std::string(KD_SOURCE_DIR) + "/recipes/";
  const std::string stand_in = "teacher.checkpoint=" + abs("teacher_ckpt");
  const kd::Recipe t = kd::load_recipe(recipes + "tinyshakespeare_teacher.toml");
  EXPECT_FALSE(t.has_teacher());
  EXPECT_EQ(t.student.n_layer, 4);
  const kd::Recipe k = kd::load_recipe(recipes + "tinyshakespeare_kd.toml", {stand_in});
  EXPECT_EQ(k.student.n_embd, 64);
  EXPECT_EQ(k.data.train, t.data.train);
  const kd::Recipe g = kd::load_recipe(recipes + "gpt2_teacher_gpu.toml");
  EXPECT_EQ(g.student.vocab_size, 50257);
  EXPECT_EQ(g.train.seq_len, 1024);
  EXPECT_EQ(g.run.device, kd::Device::Cuda);
  const kd::Recipe gk = kd::load_recipe(recipes + "gpt2_kd_gpu.toml", {stand_in});
  EXPECT_EQ(gk.student.n_layer, 6);
  EXPECT_EQ(gk.student.n_embd, 384);
  EXPECT_EQ(gk.data.encoder, g.data.encoder);
  // They read data/ in the repository, nothing outside it.
  EXPECT_EQ(t.data.train, (data / "tinyshakespeare/input.txt").lexically_normal().string());
  EXPECT_EQ(g.data.encoder, (data / "gpt2-bpe/encoder.json").lexically_normal().string());
  EXPECT_EQ(g.data.vocab_bpe, (data / "gpt2-bpe/vocab.bpe").lexically_normal().string());
  // Each distillation recipe's teacher is its teacher recipe's out_dir/final: either it loads as
  // is (the teacher was trained) or that path is the one complaint.
  for (const auto& [kd_name, teacher] :
       {std::pair{"tinyshakespeare_kd.toml", t}, std::pair{"gpt2_kd_gpu.toml", g}}) {
    const std::string final_dir = (fs::path(teacher.run.out_dir) / "final").string();
    const std::string path = recipes + kd_name;
    if (fs::exists(fs::path(final_dir) / "model.safetensors")) {
      EXPECT_EQ(kd::load_recipe(path).teacher.checkpoint, final_dir);
    } else {
      const std::string e = errors_of(path);
      EXPECT_EQ(lines(e).size(), 1u) << e;
      EXPECT_NE(e.find("error: [teacher] checkpoint: no such file or directory: " + final_dir),
                std::string::npos)
          << e;
    }
  }
}

}  // namespace

namespace {

// [teacher] tokenizer declares the tokenizer of a teacher checkpoint that carries no tokenizer
// files (model/checkpoint_tokenizer.h): read, written back, validated and documented.
TEST_F(RecipeTest, TeacherTokenizerDeclaration) {
  const std::string teach = "[teacher]\ncheckpoint = \"teacher_ckpt\"\n";
  kd::Recipe plain = kd::load_recipe(write("a.toml", std::string(kMinimal) + teach));
  EXPECT_EQ(plain.teacher.tokenizer, "");
  EXPECT_EQ(kd::recipe_to_toml(plain).find("tokenizer = \"bytes\"\n[loss]"), std::string::npos);
  const std::string p = write("b.toml", std::string(kMinimal) + teach + "tokenizer = \"bytes\"\n");
  kd::Recipe r = kd::load_recipe(p);
  EXPECT_EQ(r.teacher.tokenizer, "bytes");
  const std::string toml = kd::recipe_to_toml(r);
  const size_t sec = toml.find("[teacher]");
  ASSERT_NE(sec, std::string::npos) << toml;
  EXPECT_NE(toml.find("tokenizer = \"bytes\"", sec), std::string::npos) << toml;
  EXPECT_EQ(kd::load_recipe(write("c.toml", toml)), r);
  const std::string q =
      write("d.toml", std::string(kMinimal) + teach + "tokenizer = \"sentencepiece\"\n");
  EXPECT_EQ(errors_of(q), q + ":14:13: error: [teacher] tokenizer must be one of \"bytes\", "
                              "\"gpt2\", got \"sentencepiece\"");
  std::ifstream in(std::string(KD_SOURCE_DIR) + "/docs/recipes.md");
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string doc = ss.str();
  const size_t head = doc.find("## [teacher]");
  ASSERT_NE(head, std::string::npos);
  const size_t row = doc.find("| `tokenizer` |", head);
  EXPECT_TRUE(row != std::string::npos && row < doc.find("\n## ", head + 1));
}

}  // namespace
