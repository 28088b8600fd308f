// The recipe: one TOML file that describes a training run (data, student, teacher, loss, optimizer,
// schedule, checkpoints, logging, profiling). The reader is strict: unknown keys, wrong types,
// out-of-range values, missing files and contradictions are all errors, reported together in
// compiler style (`file:line:col: error: message`, one per line) as one kd::InputError.
// docs/recipes.md lists every key with its type, default and allowed range.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kd {

struct Recipe {
  struct Run {
    std::string name = "run";
    std::string out_dir;  // default: <recipe dir>/runs/<name>
    int64_t seed = 1337;
    std::string device = "auto";  // "auto" | "cpu" | "cuda"
    bool operator==(const Run&) const = default;
  };
  struct Data {
    std::string train;          // a text file, a directory of text files or a token shard .bin
    std::string val;            // empty: hold out val_fraction of train
    double val_fraction = 0.1;  // in (0, 0.5]
    std::string tokenizer = "bytes";  // "bytes" | "gpt2"
    std::string encoder;              // gpt2 only: encoder.json
    std::string vocab_bpe;            // gpt2 only: vocab.bpe
    std::string cache_dir;            // default: <out_dir>/cache
    bool operator==(const Data&) const = default;
  };
  struct Student {
    std::string
        init;  // a checkpoint directory; when set, the dimensions below are 0 (unknown here)
    int n_layer = 0;
    int n_head = 0;
    int n_embd = 0;
    int block_size = 0;
    int vocab_size = 0;  // from the tokenizer: bytes 256, gpt2 50257
    bool operator==(const Student&) const = default;
  };
  struct Teacher {
    std::string checkpoint;  // empty: no teacher, plain CE pretraining
    bool operator==(const Teacher&) const = default;
  };
  struct Loss {
    double ce_weight = 1.0;  // default 1.0 without a teacher, 0.5 with one
    double kd_weight = 0.0;  // default 0.0 without a teacher, 0.5 with one
    double temperature = 2.0;
    std::string divergence = "forward_kl";  // "forward_kl" | "reverse_kl" | "jsd"
    double beta = 0.5;                      // jsd mixture weight, in [0, 1]
    bool t2_scaling = true;                 // multiply the KD term by T^2
    bool operator==(const Loss&) const = default;
  };
  struct Train {
    int micro_batch = 8;
    int seq_len = 0;  // default: student.block_size
    int grad_accum = 1;
    int max_steps = 0;  // required
    int eval_every = 50;
    int eval_batches = 8;
    bool operator==(const Train&) const = default;
  };
  struct Optim {
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.95;
    double eps = 1e-8;
    double weight_decay = 0.1;
    double grad_clip = 1.0;
    bool operator==(const Optim&) const = default;
  };
  struct Schedule {
    int warmup_steps = 0;
    std::string decay = "cosine";  // "cosine" | "linear" | "constant"
    double min_lr = 0.0;           // default: lr / 10
    bool operator==(const Schedule&) const = default;
  };
  struct Checkpoint {
    int every = 0;  // 0: only at the end
    int keep_last = 2;
    bool resume = false;
    bool operator==(const Checkpoint&) const = default;
  };
  struct Log {
    int every = 10;
    bool tensorboard = true;
    bool operator==(const Log&) const = default;
  };
  struct Profile {
    bool enabled = false;
    int wait = 2;
    int warmup = 1;
    int active = 3;
    bool operator==(const Profile&) const = default;
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
// text). A key present in only one recipe shows "(unset)" on the other side.
std::vector<std::string> recipe_diff(const Recipe& a, const Recipe& b);

}  // namespace kd
