// Checkpoints carry their tokenizer (model/checkpoint_tokenizer.h): the files written and read
// back, HF's tokenizer.json recognised, the old kdengine layout still loading, `final` a real
// directory, and teacher/student tokenizer identity enforced by train, check and eval --teacher
// (run through the kdengine binary, so the exit status is checked too).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "engine/base/error.h"
#include "engine/base/json.h"
#include "engine/base/rng.h"
#include "engine/io/recipe.h"
#include "engine/io/tokenizer.h"
#include "engine/train/trainer.h"
#include "model/checkpoint.h"
#include "model/checkpoint_tokenizer.h"
#include "tests/shell_util.h"

namespace fs = std::filesystem;

namespace {

const std::string kBin = KD_KDENGINE_BIN;
const fs::path kBpeDir = fs::path(KD_SHARED_DATA) / "gpt2-bpe";
const fs::path kShakespeare = fs::path(KD_SHARED_DATA) / "tinyshakespeare" / "input.txt";

bool have_gpt2_files() {
  return fs::exists(kBpeDir / "encoder.json") && fs::exists(kBpeDir / "vocab.bpe");
}

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

using kd::testing::Result;

Result run(const std::string& args) {
  return kd::testing::sh(kBin + " " + args);
}

size_t count(const std::string& hay, const std::string& needle) {
  size_t n = 0;
  for (size_t i = hay.find(needle); i != std::string::npos; i = hay.find(needle, i + 1)) ++n;
  return n;
}

std::set<std::string> files_of(const fs::path& dir) {
  std::set<std::string> s;
  for (const auto& e : fs::directory_iterator(dir)) s.insert(e.path().filename().string());
  return s;
}

// A small random GPT-2 of the given vocabulary, saved with the tokenizer's files (none when null).
void write_checkpoint(const fs::path& dir, int vocab, const kd::Tokenizer* tok, uint64_t seed = 4) {
  kd::GPT2Config c;
  c.n_layer = 1;
  c.n_head = 2;
  c.n_embd = 16;
  c.vocab_size = vocab;
  c.block_size = 32;
  kd::GPT2 m(c);
  m.init_random(seed);
  fs::create_directories(dir);
  kd::save_model(dir.string(), m);
  if (tok) kd::save_tokenizer_files(dir.string(), *tok, c.block_size);
}

class CkptTokTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("kd_ckpttok_" +
            std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()) + "_" +
            std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    std::string text;
    kd::Rng rng(7);
    const char* words[] = {"Romeo ", "Juliet ", "the night ", "is long.\n", "O, ", "swear "};
    while (text.size() < 30000) text += words[rng.below(6)];
    std::ofstream(dir_ / "corpus.txt") << text;
  }
  void TearDown() override { fs::remove_all(dir_); }

  fs::path write(const std::string& name, const std::string& body) {
    const fs::path p = dir_ / name;
    std::ofstream(p) << body;
    return p;
  }

  // A tiny training recipe; gpt2 uses encoder.json / vocab.bpe from `bpe` (default: shared data).
  std::string recipe(const std::string& out, bool gpt2, const std::string& extra = "",
                     const fs::path& bpe = kBpeDir) {
    std::string r = "[run]\nout_dir = \"" + (dir_ / out).string() +
                    "\"\ndevice = \"cpu\"\n\n[data]\ntrain = \"" + (dir_ / "corpus.txt").string() +
                    "\"\n";
    if (gpt2)
      r += "tokenizer = \"gpt2\"\nencoder = \"" + (bpe / "encoder.json").string() +
           "\"\nvocab_bpe = \"" + (bpe / "vocab.bpe").string() + "\"\n";
    else
      r += "tokenizer = \"bytes\"\n";
    if (extra.find("[student]") == std::string::npos)
      r += "\n[student]\nn_layer = 1\nn_head = 2\nn_embd = 16\nblock_size = 32\n";
    r += "\n[train]\nmicro_batch = 2\nseq_len = 16\nmax_steps = 2\neval_every = 0\n"
         "eval_batches = 1\n\n[log]\ntensorboard = false\n\n" +
         extra;
    return r;
  }

  fs::path dir_;
};

// ---- the files ------------------------------------------------------------------------------

TEST_F(CkptTokTest, ByteCheckpointRecordsItsKindUnderItsOwnName) {
  kd::ByteTokenizer bytes;
  kd::save_tokenizer_files(dir_.string(), bytes, 32);
  EXPECT_EQ(files_of(dir_), (std::set<std::string>{"corpus.txt", "kdengine_tokenizer.json"}));
  kd::Json rec = kd::Json::parse(slurp(dir_ / "kdengine_tokenizer.json"));
  EXPECT_EQ(rec.at("kind").as_string(), "bytes");
  EXPECT_EQ(rec.at("vocab_size").as_int(), 256);
  std::ostringstream note;
  kd::CheckpointTokenizer ct = kd::load_checkpoint_tokenizer(dir_.string(), note);
  ASSERT_TRUE(ct.tok);
  EXPECT_EQ(ct.tok->name(), "bytes");
  EXPECT_EQ(ct.tok->vocab_hash(), bytes.vocab_hash());
  EXPECT_EQ(note.str(), "");
}

TEST_F(CkptTokTest, Gpt2FilesAreHfsFormatAndReadBackToTheSameTokenizer) {
  if (!have_gpt2_files()) GTEST_SKIP() << "GPT-2 vocabulary files not found under " << kBpeDir;
  kd::Gpt2Tokenizer orig((kBpeDir / "encoder.json").string(), (kBpeDir / "vocab.bpe").string());
  kd::save_tokenizer_files(dir_.string(), orig, 64);
  EXPECT_EQ(files_of(dir_), (std::set<std::string>{
                                "corpus.txt", "kdengine_tokenizer.json", "vocab.json", "merges.txt",
                                "tokenizer_config.json", "special_tokens_map.json"}));
  // vocab.json holds what encoder.json holds (compared as parsed JSON: the formatting differs),
  // and merges.txt the same merges as vocab.bpe, line for line.
  kd::Json a = kd::Json::parse(slurp(dir_ / "vocab.json"));
  kd::Json b = kd::Json::parse(slurp(kBpeDir / "encoder.json"));
  ASSERT_EQ(a.size(), b.size());
  for (const auto& [k, v] : b.members()) {
    const kd::Json* x = a.find(k);
    ASSERT_TRUE(x) << k;
    ASSERT_EQ(x->as_int(), v.as_int()) << k;
  }
  EXPECT_EQ(slurp(dir_ / "merges.txt"), slurp(kBpeDir / "vocab.bpe"));
  kd::Json cfg = kd::Json::parse(slurp(dir_ / "tokenizer_config.json"));
  EXPECT_EQ(cfg.at("tokenizer_class").as_string(), "GPT2Tokenizer");
  EXPECT_EQ(cfg.at("model_max_length").as_int(), 64);
  EXPECT_EQ(cfg.at("eos_token").as_string(), "<|endoftext|>");

  std::ostringstream note;
  kd::CheckpointTokenizer ct = kd::load_checkpoint_tokenizer(dir_.string(), note);
  ASSERT_TRUE(ct.tok);
  EXPECT_EQ(ct.tok->name(), "gpt2");
  EXPECT_EQ(ct.tok->vocab_hash(), orig.vocab_hash());
  EXPECT_NE(ct.tok->fingerprint(), orig.fingerprint());  // the file bytes differ, the identity not
  EXPECT_EQ(ct.tok->eot(), 50256);
  const std::string text = slurp(kShakespeare).substr(0, 20000) + " naïve 🙂 \t\r\n  x";
  EXPECT_EQ(ct.tok->encode(text), orig.encode(text));
}

TEST_F(CkptTokTest, TheHashTellsVocabulariesApart) {
  if (!have_gpt2_files()) GTEST_SKIP() << "GPT-2 vocabulary files not found under " << kBpeDir;
  const std::string enc = slurp(kBpeDir / "encoder.json"), bpe = slurp(kBpeDir / "vocab.bpe");
  kd::Gpt2Tokenizer full(kd::Gpt2Tokenizer::FromText{}, enc, bpe, "e", "b");
  // The same merges but the last one dropped: same vocabulary, different encoding.
  std::string fewer = bpe;
  fewer.pop_back();
  fewer.erase(fewer.rfind('\n') + 1);
  kd::Gpt2Tokenizer less(kd::Gpt2Tokenizer::FromText{}, enc, fewer, "e", "b");
  EXPECT_NE(full.vocab_hash(), less.vocab_hash());
  // Two token strings swapped: the same merges, different ids.
  std::string swapped = enc;
  const size_t p1 = swapped.find("\"!\": 0"), p2 = swapped.find("\"\\\"\": 1");
  ASSERT_NE(p1, std::string::npos);
  ASSERT_NE(p2, std::string::npos);
  swapped.replace(p1, 6, "\"!\": 1");
  swapped.replace(p2, 7, "\"\\\"\": 0");
  kd::Gpt2Tokenizer sw(kd::Gpt2Tokenizer::FromText{}, swapped, bpe, "e", "b");
  EXPECT_NE(full.vocab_hash(), sw.vocab_hash());
  EXPECT_NE(full.vocab_hash(), kd::ByteTokenizer().vocab_hash());
}

TEST_F(CkptTokTest, EditedTokenizerFilesAreRefused) {
  if (!have_gpt2_files()) GTEST_SKIP() << "GPT-2 vocabulary files not found under " << kBpeDir;
  kd::Gpt2Tokenizer orig((kBpeDir / "encoder.json").string(), (kBpeDir / "vocab.bpe").string());
  kd::save_tokenizer_files(dir_.string(), orig, 32);
  std::string m = slurp(dir_ / "merges.txt");
  m.pop_back();
  m.erase(m.rfind('\n') + 1);
  std::ofstream(dir_ / "merges.txt", std::ios::trunc) << m;
  std::ostringstream note;
  try {
    kd::load_checkpoint_tokenizer(dir_.string(), note);
    FAIL() << "expected an error";
  } catch (const kd::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("kdengine_tokenizer.json"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("changed"), std::string::npos) << e.what();
  }
}

// HF's tokenizers file, both spellings of a merge ("a b" and ["a", "b"]), is read as GPT-2 BPE;
// one that would encode differently is refused, naming the file.
TEST_F(CkptTokTest, HfTokenizerJsonIsRecognised) {
  if (!have_gpt2_files()) GTEST_SKIP() << "GPT-2 vocabulary files not found under " << kBpeDir;
  kd::Gpt2Tokenizer orig((kBpeDir / "encoder.json").string(), (kBpeDir / "vocab.bpe").string());
  for (bool pairs : {false, true}) {
    kd::Json merges = kd::Json::array();
    std::istringstream in(slurp(kBpeDir / "vocab.bpe"));
    std::string line;
    std::getline(in, line);  // #version
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      if (!pairs) {
        merges.push_back(line);
      } else {
        kd::Json p = kd::Json::array();
        p.push_back(line.substr(0, line.find(' ')));
        p.push_back(line.substr(line.find(' ') + 1));
        merges.push_back(std::move(p));
      }
    }
    kd::Json model = kd::Json::object();
    model["type"] = "BPE";
    model["dropout"] = kd::Json();
    model["unk_token"] = kd::Json();
    model["continuing_subword_prefix"] = "";
    model["end_of_word_suffix"] = "";
    model["fuse_unk"] = false;
    model["byte_fallback"] = false;
    model["vocab"] = kd::Json::parse(slurp(kBpeDir / "encoder.json"));
    model["merges"] = std::move(merges);
    kd::Json pre = kd::Json::object();
    pre["type"] = "ByteLevel";
    pre["add_prefix_space"] = false;
    pre["trim_offsets"] = true;
    pre["use_regex"] = true;
    kd::Json eot = kd::Json::object();
    eot["id"] = 50256;
    eot["content"] = "<|endoftext|>";
    eot["special"] = true;
    kd::Json added = kd::Json::array();
    added.push_back(std::move(eot));
    kd::Json j = kd::Json::object();
    j["version"] = "1.0";
    j["added_tokens"] = std::move(added);
    j["normalizer"] = kd::Json();
    j["pre_tokenizer"] = pre;
    j["model"] = std::move(model);
    const fs::path d = dir_ / (pairs ? "pairs" : "strings");
    fs::create_directories(d);
    std::ofstream(d / "tokenizer.json") << j.dump();
    std::ostringstream note;
    kd::CheckpointTokenizer ct = kd::load_checkpoint_tokenizer(d.string(), note);
    ASSERT_TRUE(ct.tok);
    EXPECT_EQ(ct.tok->name(), "gpt2");
    EXPECT_EQ(ct.tok->vocab_hash(), orig.vocab_hash()) << (pairs ? "pairs" : "strings");
    EXPECT_EQ(note.str(), "");  // not the old layout

    pre["add_prefix_space"] = true;
    j["pre_tokenizer"] = pre;
    std::ofstream(d / "tokenizer.json", std::ios::trunc) << j.dump();
    try {
      kd::load_checkpoint_tokenizer(d.string(), note);
      FAIL() << "a prefix space encodes differently";
    } catch (const kd::InputError& e) {
      EXPECT_NE(std::string(e.what()).find((d / "tokenizer.json").string()), std::string::npos);
      EXPECT_NE(std::string(e.what()).find("add_prefix_space"), std::string::npos) << e.what();
    }
  }
}

TEST_F(CkptTokTest, HfVocabAndMergesWithoutKdengineRecordAreGpt2) {
  if (!have_gpt2_files()) GTEST_SKIP() << "GPT-2 vocabulary files not found under " << kBpeDir;
  fs::copy_file(kBpeDir / "encoder.json", dir_ / "vocab.json");
  fs::copy_file(kBpeDir / "vocab.bpe", dir_ / "merges.txt");
  std::ostringstream note;
  kd::CheckpointTokenizer ct = kd::load_checkpoint_tokenizer(dir_.string(), note);
  ASSERT_TRUE(ct.tok);
  EXPECT_EQ(ct.tok->name(), "gpt2");
  EXPECT_EQ(ct.tok->vocab_size(), 50257);
}

// `final` is a directory of hard links to the newest checkpoint's files, swapped in whole; it
// replaces the symbolic link older runs left.
TEST_F(CkptTokTest, PublishedCopyIsARealDirectory) {
  const fs::path a = dir_ / "step_000001", b = dir_ / "step_000002", fin = dir_ / "final";
  kd::ByteTokenizer bytes;
  write_checkpoint(a, 256, &bytes, 1);
  write_checkpoint(b, 256, &bytes, 2);
  std::ofstream(a / "only_in_a.txt") << "x";
  fs::create_directory_symlink("step_000001", fin);  // the old layout
  kd::publish_checkpoint_copy(a.string(), fin.string());
  EXPECT_FALSE(fs::is_symlink(fin));
  EXPECT_TRUE(fs::exists(fin / "only_in_a.txt"));
  kd::publish_checkpoint_copy(b.string(), fin.string());
  EXPECT_FALSE(fs::is_symlink(fin));
  EXPECT_EQ(files_of(fin), files_of(b));
  EXPECT_TRUE(fs::equivalent(fin / "model.safetensors", b / "model.safetensors"));  // a link
  EXPECT_EQ(slurp(fin / "model.safetensors"), slurp(b / "model.safetensors"));
  for (const auto& e : fs::directory_iterator(dir_))
    EXPECT_NE(e.path().filename().string().rfind(".tmp", 0), 0u) << e.path();
  // Removing the step directory (pruning) leaves final whole.
  fs::remove_all(b);
  kd::GPT2 m = kd::load_model(fin.string());
  EXPECT_EQ(m.config().vocab_size, 256);
}

// ---- the command line: tokenizer identity -----------------------------------------------------

TEST_F(CkptTokTest, Gpt2TeacherAndByteStudentIsExit2ForTrainCheckAndEval) {
  if (!have_gpt2_files()) GTEST_SKIP() << "GPT-2 vocabulary files not found under " << kBpeDir;
  kd::Gpt2Tokenizer gpt2((kBpeDir / "encoder.json").string(), (kBpeDir / "vocab.bpe").string());
  const fs::path teacher = dir_ / "gpt2_teacher";
  write_checkpoint(teacher, 50257, &gpt2);
  // A byte-level student, trained by kdengine.
  Result s = run("train " + write("student.toml", recipe("student", false)).string());
  ASSERT_EQ(s.status, 0) << s.output;
  const fs::path student = dir_ / "student" / "final";

  const std::string teach = "[teacher]\ncheckpoint = \"" + teacher.string() + "\"\n";
  const std::string init = "[student]\ninit = \"" + student.string() + "\"\n";
  const fs::path fresh = write("fresh.toml", recipe("fresh", false, teach));
  const fs::path cont = write("cont.toml", recipe("cont", false, init + teach));
  for (const char* cmd : {"check", "train"}) {
    for (const fs::path& p : {fresh, cont}) {
      Result r = run(std::string(cmd) + " " + p.string());
      EXPECT_EQ(r.status, 2) << cmd << " " << p << "\n" << r.output;
      EXPECT_NE(r.output.find("tokenizer mismatch"), std::string::npos) << r.output;
      EXPECT_NE(r.output.find(teacher.string()), std::string::npos) << r.output;
      EXPECT_NE(r.output.find("GPT-2 BPE (50257 tokens"), std::string::npos) << r.output;
      EXPECT_NE(r.output.find("bytes (256 byte values)"), std::string::npos) << r.output;
      if (p == cont) {
        EXPECT_NE(r.output.find(student.string()), std::string::npos) << r.output;
      }
    }
  }
  EXPECT_FALSE(fs::exists(dir_ / "fresh" / "final")) << "nothing may be trained";
  EXPECT_FALSE(fs::exists(dir_ / "cont" / "final")) << "nothing may be trained";

  Result e = run("eval " + student.string() + " --data " + (dir_ / "corpus.txt").string() +
                 " --teacher " + teacher.string() + " --batches 1");
  EXPECT_EQ(e.status, 2) << e.output;
  EXPECT_NE(e.output.find(teacher.string()), std::string::npos) << e.output;
  EXPECT_NE(e.output.find(student.string()), std::string::npos) << e.output;
  EXPECT_NE(e.output.find("GPT-2 BPE"), std::string::npos) << e.output;
  EXPECT_NE(e.output.find("bytes (256"), std::string::npos) << e.output;
  EXPECT_EQ(e.output.find("KL"), std::string::npos) << "no KL may be reported: " << e.output;

  // A GPT-2 [student] init under a byte-level run: the same refusal.
  Result g =
      run("check " +
          write("g.toml", recipe("g", false, "[student]\ninit = \"" + teacher.string() + "\"\n"))
              .string());
  EXPECT_EQ(g.status, 2) << g.output;
  EXPECT_NE(g.output.find(teacher.string()), std::string::npos) << g.output;
  EXPECT_NE(g.output.find("[data] tokenizer = \"bytes\""), std::string::npos) << g.output;
}

// The same GPT-2 BPE on both sides, the teacher's vocabulary padded to a multiple of 64: sliced
// to the student's 50257 as before, for train and eval --teacher.
TEST_F(CkptTokTest, PaddedTeacherWithTheSameTokenizerStillWorks) {
  if (!have_gpt2_files()) GTEST_SKIP() << "GPT-2 vocabulary files not found under " << kBpeDir;
  kd::Gpt2Tokenizer gpt2((kBpeDir / "encoder.json").string(), (kBpeDir / "vocab.bpe").string());
  const fs::path teacher = dir_ / "padded_teacher";
  write_checkpoint(teacher, 50304, &gpt2);
  const std::string teach = "[teacher]\ncheckpoint = \"" + teacher.string() + "\"\n";
  Result t = run("train " + write("kd.toml", recipe("kd", true, teach)).string());
  ASSERT_EQ(t.status, 0) << t.output;
  EXPECT_NE(t.output.find("using its first 50257 logits"), std::string::npos) << t.output;
  EXPECT_NE(t.output.find("teacher and student both use GPT-2 BPE (50257 tokens"),
            std::string::npos)
      << t.output;
  Result e =
      run("eval " + (dir_ / "kd" / "final").string() + " --data " + (dir_ / "corpus.txt").string() +
          " --teacher " + teacher.string() + " --batches 1");
  EXPECT_EQ(e.status, 0) << e.output;
  EXPECT_NE(e.output.find("KL(teacher||student)"), std::string::npos) << e.output;
}

// A teacher checkpoint without tokenizer files: refused with the recipe key to declare it; with
// the key it runs; a declaration that contradicts the run's tokenizer is a mismatch.
TEST_F(CkptTokTest, TeacherWithoutTokenizerNeedsTheRecipeToDeclareIt) {
  const fs::path teacher = dir_ / "bare_teacher";
  write_checkpoint(teacher, 320, nullptr);  // 256 bytes + 64 padding rows, no tokenizer files
  const std::string teach = "[teacher]\ncheckpoint = \"" + teacher.string() + "\"\n";
  for (const char* cmd : {"check", "train"}) {
    Result r = run(std::string(cmd) + " " + write("a.toml", recipe("a", false, teach)).string());
    EXPECT_EQ(r.status, 2) << r.output;
    EXPECT_NE(r.output.find(teacher.string()), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("carries no tokenizer"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("[teacher] tokenizer = \"bytes\""), std::string::npos) << r.output;
  }
  Result ok = run("train " +
                  write("b.toml", recipe("b", false, teach + "tokenizer = \"bytes\"\n")).string());
  EXPECT_EQ(ok.status, 0) << ok.output;
  EXPECT_NE(ok.output.find("using its first 256 logits"), std::string::npos) << ok.output;
  Result wrong = run(
      "check " + write("c.toml", recipe("c", false, teach + "tokenizer = \"gpt2\"\n")).string());
  EXPECT_EQ(wrong.status, 2) << wrong.output;
  EXPECT_NE(wrong.output.find("tokenizer mismatch"), std::string::npos) << wrong.output;
  // eval --teacher has no recipe: it says which files to add.
  Result e = run("eval " + (dir_ / "b" / "final").string() + " --data " +
                 (dir_ / "corpus.txt").string() + " --teacher " + teacher.string());
  EXPECT_EQ(e.status, 2) << e.output;
  EXPECT_NE(e.output.find("kdengine_tokenizer.json"), std::string::npos) << e.output;
  EXPECT_NE(e.output.find("vocab.json"), std::string::npos) << e.output;
  // A key that contradicts the teacher's own files is refused too.
  kd::ByteTokenizer bytes;
  kd::save_tokenizer_files(teacher.string(), bytes, 32);
  Result contra = run("check " + (dir_ / "c.toml").string());
  EXPECT_EQ(contra.status, 2) << contra.output;
  EXPECT_NE(contra.output.find("[teacher] tokenizer = \"gpt2\""), std::string::npos)
      << contra.output;
}

// A GPT-2 BPE run whose encoder files live in a folder that is later deleted; its `final`, copied
// with `cp -r` to a fresh place, samples and evaluates exactly as before.
TEST_F(CkptTokTest, MovedCheckpointStillSamples) {
  if (!have_gpt2_files()) GTEST_SKIP() << "GPT-2 vocabulary files not found under " << kBpeDir;
  const fs::path bpe = dir_ / "bpe";
  fs::create_directories(bpe);
  fs::copy_file(kBpeDir / "encoder.json", bpe / "encoder.json");
  fs::copy_file(kBpeDir / "vocab.bpe", bpe / "vocab.bpe");
  Result t = run("train " + write("g.toml", recipe("g", true, "", bpe)).string());
  ASSERT_EQ(t.status, 0) << t.output;
  const std::string sample_args = " --prompt \"Romeo, Romeo\" --tokens 12 --temperature 0";
  Result before = run("sample " + (dir_ / "g" / "final").string() + sample_args);
  ASSERT_EQ(before.status, 0) << before.output;

  const fs::path moved = dir_ / "elsewhere" / "model";
  fs::create_directories(moved.parent_path());
  ASSERT_EQ(
      std::system(("cp -r " + (dir_ / "g" / "final").string() + " " + moved.string()).c_str()), 0);
  fs::remove_all(bpe);
  fs::remove_all(dir_ / "g");
  Result after = run("sample " + moved.string() + sample_args);
  EXPECT_EQ(after.status, 0) << after.output;
  EXPECT_EQ(after.output, before.output);
  EXPECT_EQ(after.output.rfind("Romeo, Romeo", 0), 0u) << after.output;
  Result e =
      run("eval " + moved.string() + " --data " + (dir_ / "corpus.txt").string() + " --batches 1");
  EXPECT_EQ(e.status, 0) << e.output;
  // Training goes on from the moved folder alone: [student] init is the folder, and the run's
  // [data] encoder / vocab_bpe are its vocab.json / merges.txt (the same formats).
  std::string r = recipe("i", true, "[student]\ninit = \"" + moved.string() + "\"\n", bpe);
  for (const auto& [from, to] : {std::pair{bpe / "encoder.json", moved / "vocab.json"},
                                 std::pair{bpe / "vocab.bpe", moved / "merges.txt"}}) {
    const size_t at = r.find(from.string());
    ASSERT_NE(at, std::string::npos);
    r.replace(at, from.string().size(), to.string());
  }
  Result i = run("train " + write("i.toml", r).string());
  EXPECT_EQ(i.status, 0) << i.output;
  EXPECT_TRUE(fs::exists(dir_ / "i" / "final" / "vocab.json"));
}

// A checkpoint of the layout before this one (tokenizer.json = {kind, encoder, vocab_bpe}) loads,
// with one note; once the files it names are gone, the error says how to repair it.
TEST_F(CkptTokTest, OldLayoutLoadsWithANote) {
  if (!have_gpt2_files()) GTEST_SKIP() << "GPT-2 vocabulary files not found under " << kBpeDir;
  const fs::path bpe = dir_ / "bpe";
  fs::create_directories(bpe);
  fs::copy_file(kBpeDir / "encoder.json", bpe / "encoder.json");
  fs::copy_file(kBpeDir / "vocab.bpe", bpe / "vocab.bpe");
  kd::Gpt2Tokenizer gpt2((kBpeDir / "encoder.json").string(), (kBpeDir / "vocab.bpe").string());
  const fs::path old = dir_ / "old";
  write_checkpoint(old, 50257, nullptr);
  kd::Json j = kd::Json::object();
  j["kind"] = "gpt2";
  j["encoder"] = (bpe / "encoder.json").string();
  j["vocab_bpe"] = (bpe / "vocab.bpe").string();
  std::ofstream(old / "tokenizer.json") << j.dump(2) << "\n";

  Result s = run("sample " + old.string() + " --prompt Romeo --tokens 4");
  EXPECT_EQ(s.status, 0) << s.output;
  EXPECT_EQ(count(s.output, "old checkpoint layout"), 1u) << s.output;
  // Both sides of eval are the same old checkpoint: still one note.
  Result e = run("eval " + old.string() + " --data " + (dir_ / "corpus.txt").string() +
                 " --teacher " + old.string() + " --batches 1");
  EXPECT_EQ(e.status, 0) << e.output;
  EXPECT_EQ(count(e.output, "old checkpoint layout"), 1u) << e.output;
  // As a teacher of a GPT-2 run (the same vocabulary, so it passes the identity check).
  Result c =
      run("check " +
          write("c.toml", recipe("c", true, "[teacher]\ncheckpoint = \"" + old.string() + "\"\n"))
              .string());
  EXPECT_EQ(c.status, 0) << c.output;
  EXPECT_EQ(count(c.output, "old checkpoint layout"), 1u) << c.output;

  // The byte kind of the old layout.
  const fs::path old_bytes = dir_ / "old_bytes";
  write_checkpoint(old_bytes, 256, nullptr);
  std::ofstream(old_bytes / "tokenizer.json")
      << R"({"kind": "bytes", "encoder": "", "vocab_bpe": ""})";
  Result b = run("sample " + old_bytes.string() + " --prompt abc --tokens 4");
  EXPECT_EQ(b.status, 0) << b.output;
  EXPECT_EQ(count(b.output, "old checkpoint layout"), 1u) << b.output;

  fs::remove_all(bpe);
  Result gone = run("sample " + old.string() + " --prompt Romeo --tokens 4");
  EXPECT_EQ(gone.status, 2) << gone.output;
  EXPECT_NE(gone.output.find((bpe / "encoder.json").string()), std::string::npos) << gone.output;
  EXPECT_NE(gone.output.find("vocab.json"), std::string::npos) << gone.output;
}

TEST_F(CkptTokTest, CheckpointWithoutTokenizerCannotSample) {
  const fs::path bare = dir_ / "bare";
  write_checkpoint(bare, 256, nullptr);
  Result s = run("sample " + bare.string() + " --prompt abc --tokens 4");
  EXPECT_EQ(s.status, 2) << s.output;
  EXPECT_NE(s.output.find("carries no tokenizer"), std::string::npos) << s.output;
  EXPECT_NE(s.output.find("kdengine_tokenizer.json"), std::string::npos) << s.output;
  // Following the message's advice makes it usable.
  std::ofstream(bare / "kdengine_tokenizer.json") << R"({"kind": "bytes"})";
  Result ok = run("sample " + bare.string() + " --prompt abc --tokens 4");
  EXPECT_EQ(ok.status, 0) << ok.output;
}

TEST_F(CkptTokTest, TokenizerLargerThanTheModelIsRefused) {
  if (!have_gpt2_files()) GTEST_SKIP() << "GPT-2 vocabulary files not found under " << kBpeDir;
  kd::Gpt2Tokenizer gpt2((kBpeDir / "encoder.json").string(), (kBpeDir / "vocab.bpe").string());
  const fs::path small = dir_ / "small";
  write_checkpoint(small, 256, &gpt2);
  Result s = run("sample " + small.string() + " --prompt abc --tokens 4");
  EXPECT_EQ(s.status, 2) << s.output;
  EXPECT_NE(s.output.find("vocab_size 256"), std::string::npos) << s.output;
}

// ---- HF's AutoTokenizer (ctest hf_tokenizer_python_check) -------------------------------------

// Leaves a GPT-2 BPE checkpoint written by a real training run, and kdengine's ids for a set of
// texts (read back through the checkpoint's own tokenizer files), in $KD_KEEP_HF_TOKENIZER_DIR for
// tools/check_hf_tokenizer.py, which encodes the same texts with transformers.AutoTokenizer.
TEST_F(CkptTokTest, CheckpointForHfAutoTokenizer) {
  const char* keep = std::getenv("KD_KEEP_HF_TOKENIZER_DIR");
  if (!keep || !*keep)
    GTEST_SKIP() << "set KD_KEEP_HF_TOKENIZER_DIR (ctest's hf_tokenizer_checkpoint does)";
  if (!have_gpt2_files() || !fs::exists(kShakespeare))
    GTEST_SKIP() << "GPT-2 vocabulary files or TinyShakespeare not found under " << KD_SHARED_DATA;
  const fs::path out(keep);
  fs::remove_all(out);
  const std::string shakespeare = slurp(kShakespeare);
  std::ofstream(dir_ / "corpus.txt", std::ios::trunc) << shakespeare.substr(0, 30000);
  std::ostringstream sink;
  kd::train(kd::load_recipe(write("hf.toml", recipe("run", true)).string(),
                            {"run.out_dir=\"" + out.string() + "/run\""}),
            sink);
  const fs::path ckpt = out / "run" / "final";
  std::ostringstream note;
  auto tok = kd::require_checkpoint_tokenizer(ckpt.string(), 50257, note);

  std::vector<std::string> texts = {
      shakespeare.substr(0, 4000),
      shakespeare.substr(500000, 3000),
      "naïve café résumé Ångström Straße ÆØÅ ﬁ ǅ",
      "日本語のテキスト、中文文本。한국어 텍스트",
      "emoji 🙂👍🏽 👨‍👩‍👧 🇫🇷 and ZWJ\u200dsequences",
      "combining e\u0301 a\u0308 o\u0302 and math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∀x∈ℝ: x²≥0",
      "  leading, trailing   \t\ttabs\t, \r\nCRLF\r\n\n\n  \u00a0nbsp\u00a0 \u3000ideographic "
      "space\u2028line sep \u2009thin   ",
      "it's they're we'll I'd 'tis DON'T 's  've x'LL",
      "numbers 3.14159 1,000,000 ٣٤٥ ৭৮৯ Ⅻ ¾ 2024-05-20",
      "code: for (int i = 0; i < n; ++i) { x[i] += y[i] * 2; }  // done\n\tif(a&&b||!c) return;",
      "the literal <|endoftext|> inside a text is ordinary text for kdengine",
      "",
      " ",
      "\n",
  };
  // The hand-picked cases of the tokenizer tests (checked there against tiktoken).
  const kd::Json tricky = kd::Json::parse(
      slurp(fs::path(KD_SOURCE_DIR) / "tests" / "fixtures" / "tokenizer_tricky.json"));
  for (const kd::Json& c : tricky.items()) texts.push_back(c.at("text").as_string());

  kd::Json cases = kd::Json::array();
  for (const std::string& t : texts) {
    kd::Json c = kd::Json::object();
    c["text"] = t;
    kd::Json ids = kd::Json::array();
    for (int32_t id : tok->encode(t)) ids.push_back(id);
    c["ids"] = std::move(ids);
    cases.push_back(std::move(c));
  }
  kd::Json j = kd::Json::object();
  j["checkpoint"] = ckpt.string();
  j["eot"] = tok->eot();
  j["vocab_size"] = tok->vocab_size();
  j["cases"] = std::move(cases);
  std::ofstream(out / "expected_ids.json") << j.dump(1) << "\n";
  EXPECT_GT(tricky.size(), 10u);
}

// Reads the checkpoint as transformers saved it (ctest hf_tokenizer_json_read, after
// hf_tokenizer_python_check): HF's tokenizer.json is the only tokenizer file, and kdengine reads it
// as the same GPT-2 BPE, encoding every text of the check to the same ids, and samples from it.
TEST_F(CkptTokTest, ReadsTokenizerJsonSavedByHf) {
  const char* saved = std::getenv("KD_HF_SAVED_DIR");
  const char* expected = std::getenv("KD_HF_EXPECTED_IDS");
  if (!saved || !expected || !fs::exists(fs::path(saved) / "tokenizer.json"))
    GTEST_SKIP() << "needs the folder hf_tokenizer_python_check saves (transformers installed)";
  if (!have_gpt2_files()) GTEST_SKIP() << "GPT-2 vocabulary files not found under " << kBpeDir;
  const fs::path dir(saved);
  ASSERT_FALSE(fs::exists(dir / "vocab.json"));  // so tokenizer.json is what gets read
  ASSERT_FALSE(fs::exists(dir / "kdengine_tokenizer.json"));
  std::ostringstream note;
  kd::CheckpointTokenizer ct = kd::load_checkpoint_tokenizer(dir.string(), note);
  ASSERT_TRUE(ct.tok);
  EXPECT_EQ(ct.tok->name(), "gpt2");
  EXPECT_NE(ct.source.find("tokenizer.json"), std::string::npos) << ct.source;
  EXPECT_EQ(note.str(), "");
  kd::Gpt2Tokenizer ref((kBpeDir / "encoder.json").string(), (kBpeDir / "vocab.bpe").string());
  EXPECT_EQ(ct.tok->vocab_hash(), ref.vocab_hash());
  EXPECT_EQ(ct.tok->eot(), 50256);
  const kd::Json exp = kd::Json::parse(slurp(expected));
  size_t n = 0;
  for (const kd::Json& c : exp.at("cases").items()) {
    std::vector<int32_t> ids;
    for (const kd::Json& i : c.at("ids").items()) ids.push_back(int32_t(i.as_int()));
    EXPECT_EQ(ct.tok->encode(c.at("text").as_string()), ids) << c.at("text").as_string();
    ++n;
  }
  EXPECT_GT(n, 40u);
  Result s = run("sample " + dir.string() + " --prompt \"ROMEO:\" --tokens 8");
  EXPECT_EQ(s.status, 0) << s.output;
  EXPECT_EQ(s.output.rfind("ROMEO:", 0), 0u) << s.output;
}

}  // namespace
