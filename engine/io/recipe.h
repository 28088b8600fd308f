// The recipe: one TOML file that describes a training run (data, student, teacher, loss, optimizer,
// schedule, checkpoints, logging, profiling). The reader is strict: unknown keys, wrong types,
// out-of-range values, missing files and contradictions are all errors, reported together in
// compiler style (`file:line:col: error: message`, one per line) as one kd::InputError.
// docs/recipes.md lists every key with its type, default and allowed range.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/base/choice.h"
#include "engine/base/divergence.h"  // the loss's own enum is the recipe's choice
#include "engine/io/tokenizer.h"

namespace kd {

enum class Device { Auto, Cpu, Cuda };
enum class Decay { Cosine, Linear, Constant };

template <>
struct ChoiceNames<Device> {
  static constexpr std::array names{"auto", "cpu", "cuda"};
};
template <>
struct ChoiceNames<Decay> {
  static constexpr std::array names{"cosine", "linear", "constant"};
};

// The values of a run. Every field but student.vocab_size is a recipe key, declared with its
// default, its check and its documentation in the key table in recipe.cpp (fields here start
// zeroed; load_recipe fills each from the recipe or its default). docs/recipes.md lists them.
struct Recipe {
  struct Run {
    std::string name;
    std::string out_dir;
    int64_t seed{};
    Device device{};
    int threads{};     // CPU threads for the ops; 0: the cores available to the process
    bool overwrite{};  // a fresh run may delete a previous run's outputs in out_dir
    bool operator==(const Run&) const = default;
  };
  struct Data {
    std::string train;
    std::string val;  // empty: hold out val_fraction of train
    double val_fraction{};
    TokenizerKind tokenizer{};
    std::string encoder;    // gpt2 only
    std::string vocab_bpe;  // gpt2 only
    std::string cache_dir;  // empty: no token cache
    bool operator==(const Data&) const = default;
  };
  struct Student {
    std::string
        init;  // a checkpoint directory; when set, the dimensions below are 0 (unknown here)
    int n_layer{};
    int n_head{};
    int n_embd{};
    int block_size{};
    int vocab_size{};  // not a key: from the tokenizer (bytes 256, gpt2 50257)
    // Start from these layers of the teacher (one per student layer, in order), with its
    // embeddings and final layernorm: the student must have the teacher's width. Empty: random.
    std::vector<int> teacher_layers;
    bool operator==(const Student&) const = default;
  };
  struct Teacher {
    std::string checkpoint;  // empty: no teacher, plain CE pretraining
    // "bytes" | "gpt2": declares the tokenizer of a teacher checkpoint that carries no tokenizer
    // files (empty: not declared; the checkpoint's own files decide).
    std::string tokenizer;
    bool operator==(const Teacher&) const = default;
  };
  struct Loss {
    double ce_weight{};
    double kd_weight{};
    double temperature{};
    Divergence divergence{};
    double beta{};
    bool t2_scaling{};
    bool operator==(const Loss&) const = default;
  };
  struct Train {
    int micro_batch{};
    int seq_len{};
    int grad_accum{};
    int loss_chunk{};  // rows per chunk of lm_head_kd_loss (both backends); 0: automatic
    int max_steps{};
    int eval_every{};
    int eval_batches{};
    bool operator==(const Train&) const = default;
  };
  struct Optim {
    double lr{};
    double beta1{};
    double beta2{};
    double eps{};
    double weight_decay{};
    double grad_clip{};
    bool operator==(const Optim&) const = default;
  };
  struct Schedule {
    int warmup_steps{};
    Decay decay{};
    double min_lr{};
    bool operator==(const Schedule&) const = default;
  };
  struct Checkpoint {
    int every{};
    int keep_last{};
    bool resume{};
    bool operator==(const Checkpoint&) const = default;
  };
  struct Log {
    int every{};
    bool tensorboard{};
    bool operator==(const Log&) const = default;
  };
  struct Profile {
    bool enabled{};
    int wait{};
    int warmup{};
    int active{};
    bool operator==(const Profile&) const = default;
  };

  struct Distributed {
    bool shard_optimizer{};
    double timeout_s{};
    bool operator==(const Distributed&) const = default;
  };

  Run run;
  Data data;
  Student student;
  Teacher teacher;
  Loss loss;
  Train train;
  Optim optim;
  Schedule schedule;
  Checkpoint checkpoint;
  Log log;
  Profile profile;
  Distributed distributed;

  bool has_teacher() const { return !teacher.checkpoint.empty(); }
  bool operator==(const Recipe&) const = default;
};

// Reads and validates the recipe at `path`. `overrides` are `section.key=value` strings (from
// `--set`); the value is TOML (`optim.lr=1e-3`, `run.device="cpu"`), and for string keys a bare
// word is taken as the string itself (`run.device=cpu`). Relative paths, in the file or in an
// override, are resolved against the recipe file's directory; the returned paths are absolute.
// Throws kd::InputError listing every problem, one `location: error: message` per line.
Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides = {});

// The fully resolved recipe as TOML, every key written (defaults included); load_recipe reads it
// back to an equal Recipe.
std::string recipe_to_toml(const Recipe& r);

// A stable hex hash of the resolved recipe (FNV-1a 64 of recipe_to_toml), 16 hex digits.
std::string recipe_hash(const Recipe& r);

// "section.key: old -> new" for every key whose value differs, in recipe order (values as TOML
// text). A key present in only one recipe shows "(unset)" on the other side. Keys that say how to
// start the run rather than what it computes (checkpoint.resume, run.overwrite) are left out.
std::vector<std::string> recipe_diff(const Recipe& a, const Recipe& b);

// Every key of the table, in recipe order, as docs/recipes.md shows it (a test holds the two
// equal): type ("integer", "float", "boolean", "string", "path"), default ("`1337`", "required",
// "none", or how it follows from other keys), the start of the "allowed" column, and the meaning.
struct RecipeKeyDoc {
  std::string section, name, type, default_value, allowed, doc;
};
std::vector<RecipeKeyDoc> recipe_keys();

}  // namespace kd
