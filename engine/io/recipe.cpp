// The strict recipe reader. Parsing is toml++'s; everything else is here: the schema (sections,
// keys, their types), a Reader that reads typed values and collects every problem with its
// location, the validation of each section, and the resolved recipe written back as TOML.
#include "engine/io/recipe.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string_view>

#include "engine/base/error.h"

namespace kd {
namespace {

namespace fs = std::filesystem;

// ---- schema ---------------------------------------------------------------------------------

enum class Kind { Int, Float, Bool, String };

struct KeySpec {
  const char* name;
  Kind kind;
};

struct SectionSpec {
  const char* name;
  std::vector<KeySpec> keys;
};

const std::vector<SectionSpec>& schema() {
  static const std::vector<SectionSpec> s = {
      {"run",
       {{"name", Kind::String},
        {"out_dir", Kind::String},
        {"seed", Kind::Int},
        {"device", Kind::String}}},
      {"data",
       {{"train", Kind::String},
        {"val", Kind::String},
        {"val_fraction", Kind::Float},
        {"tokenizer", Kind::String},
        {"encoder", Kind::String},
        {"vocab_bpe", Kind::String},
        {"cache_dir", Kind::String}}},
      {"student",
       {{"init", Kind::String},
        {"n_layer", Kind::Int},
        {"n_head", Kind::Int},
        {"n_embd", Kind::Int},
        {"block_size", Kind::Int}}},
      {"teacher", {{"checkpoint", Kind::String}}},
      {"loss",
       {{"ce_weight", Kind::Float},
        {"kd_weight", Kind::Float},
        {"temperature", Kind::Float},
        {"divergence", Kind::String},
        {"beta", Kind::Float},
        {"t2_scaling", Kind::Bool}}},
      {"train",
       {{"micro_batch", Kind::Int},
        {"seq_len", Kind::Int},
        {"grad_accum", Kind::Int},
        {"max_steps", Kind::Int},
        {"eval_every", Kind::Int},
        {"eval_batches", Kind::Int}}},
      {"optim",
       {{"lr", Kind::Float},
        {"beta1", Kind::Float},
        {"beta2", Kind::Float},
        {"eps", Kind::Float},
        {"weight_decay", Kind::Float},
        {"grad_clip", Kind::Float}}},
      {"schedule", {{"warmup_steps", Kind::Int}, {"decay", Kind::String}, {"min_lr", Kind::Float}}},
      {"checkpoint", {{"every", Kind::Int}, {"keep_last", Kind::Int}, {"resume", Kind::Bool}}},
      {"log", {{"every", Kind::Int}, {"tensorboard", Kind::Bool}}},
      {"profile",
       {{"enabled", Kind::Bool},
        {"wait", Kind::Int},
        {"warmup", Kind::Int},
        {"active", Kind::Int}}},
  };
  return s;
}

// Spellings used by other trainers, so that "did you mean" can bridge names that are far apart
// in edit distance (learning_rate -> lr). An empty section means a section-name alias.
struct Alias {
  const char* section;
  const char* alias;
  const char* target;
};

const std::vector<Alias>& aliases() {
  static const std::vector<Alias> a = {
      {"", "optimizer", "optim"},
      {"", "training", "train"},
      {"", "scheduler", "schedule"},
      {"", "lr_schedule", "schedule"},
      {"", "model", "student"},
      {"", "logging", "log"},
      {"", "profiler", "profile"},
      {"", "checkpoints", "checkpoint"},
      {"", "ckpt", "checkpoint"},
      {"run", "output_dir", "out_dir"},
      {"run", "random_seed", "seed"},
      {"data", "train_path", "train"},
      {"data", "train_file", "train"},
      {"data", "val_path", "val"},
      {"data", "validation", "val"},
      {"student", "num_layers", "n_layer"},
      {"student", "n_layers", "n_layer"},
      {"student", "num_heads", "n_head"},
      {"student", "n_heads", "n_head"},
      {"student", "hidden_size", "n_embd"},
      {"student", "d_model", "n_embd"},
      {"student", "n_positions", "block_size"},
      {"student", "n_ctx", "block_size"},
      {"student", "checkpoint", "init"},
      {"teacher", "init", "checkpoint"},
      {"teacher", "path", "checkpoint"},
      {"loss", "temp", "temperature"},
      {"loss", "tau", "temperature"},
      {"train", "batch_size", "micro_batch"},
      {"train", "steps", "max_steps"},
      {"train", "num_steps", "max_steps"},
      {"train", "max_iters", "max_steps"},
      {"train", "gradient_accumulation_steps", "grad_accum"},
      {"train", "context_length", "seq_len"},
      {"train", "eval_interval", "eval_every"},
      {"train", "eval_iters", "eval_batches"},
      {"optim", "learning_rate", "lr"},
      {"optim", "epsilon", "eps"},
      {"optim", "max_grad_norm", "grad_clip"},
      {"optim", "clip_grad_norm", "grad_clip"},
      {"schedule", "warmup", "warmup_steps"},
      {"schedule", "warmup_iters", "warmup_steps"},
      {"schedule", "min_learning_rate", "min_lr"},
      {"checkpoint", "save_every", "every"},
      {"checkpoint", "keep", "keep_last"},
      {"log", "log_every", "every"},
  };
  return a;
}

const SectionSpec* find_section(std::string_view name) {
  for (const auto& s : schema())
    if (name == s.name) return &s;
  return nullptr;
}

const KeySpec* find_key(const SectionSpec& sec, std::string_view key) {
  for (const auto& k : sec.keys)
    if (key == k.name) return &k;
  return nullptr;
}

// ---- suggestions ----------------------------------------------------------------------------

size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const bool same = std::tolower(static_cast<unsigned char>(a[i - 1])) ==
                        std::tolower(static_cast<unsigned char>(b[j - 1]));
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (same ? 0 : 1)});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// The closest candidate (name -> what to suggest) within edit distance (len+1)/3, or "".
std::string closest(std::string_view word,
                    const std::vector<std::pair<std::string, std::string>>& candidates) {
  const size_t limit = (word.size() + 1) / 3;
  std::string best;
  size_t best_d = limit + 1;
  for (const auto& [name, target] : candidates) {
    const size_t d = edit_distance(word, name);
    if (d < best_d) {
      best_d = d;
      best = target;
    }
  }
  return best;
}

std::string suggest_section(std::string_view word) {
  std::vector<std::pair<std::string, std::string>> c;
  for (const auto& s : schema()) c.emplace_back(s.name, s.name);
  for (const auto& a : aliases())
    if (std::string_view(a.section).empty()) c.emplace_back(a.alias, a.target);
  return closest(word, c);
}

// The one other section that has `key`, or "" (none, or several).
std::string section_owning(std::string_view key, std::string_view except) {
  std::string owner;
  int count = 0;
  for (const auto& s : schema()) {
    if (except == s.name || !find_key(s, key)) continue;
    owner = s.name;
    ++count;
  }
  return count == 1 ? owner : "";
}

std::string unknown_key_message(const SectionSpec& sec, std::string_view key) {
  std::string msg = "unknown key '" + std::string(key) + "' in [" + sec.name + "]";
  const std::string owner = section_owning(key, sec.name);
  if (!owner.empty()) return msg + "; it belongs in [" + owner + "]";
  std::vector<std::pair<std::string, std::string>> c;
  for (const auto& k : sec.keys) c.emplace_back(k.name, k.name);
  for (const auto& a : aliases())
    if (std::string_view(a.section) == sec.name) c.emplace_back(a.alias, a.target);
  const std::string s = closest(key, c);
  if (!s.empty()) msg += "; did you mean '" + s + "'?";
  return msg;
}

std::string unknown_section_message(std::string_view name) {
  std::string msg = "unknown section [" + std::string(name) + "]";
  const std::string s = suggest_section(name);
  if (!s.empty()) msg += "; did you mean [" + s + "]?";
  return msg;
}

// ---- formatting -----------------------------------------------------------------------------

// Shortest text that reads back to the same double.
std::string fmt_num(double v) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, res.ptr);
}

// A TOML float literal: fmt_num plus ".0" where it would otherwise read as an integer.
std::string toml_float(double v) {
  std::string s = fmt_num(v);
  if (s.find_first_of(".eEni") == std::string::npos) s += ".0";
  return s;
}

std::string toml_string(std::string_view s) {
  std::string out = "\"";
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out + "\"";
}

std::string type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::table:
      return "a table";
    case toml::node_type::array:
      return "an array";
    case toml::node_type::string:
      return "a string";
    case toml::node_type::integer:
      return "an integer";
    case toml::node_type::floating_point:
      return "a float";
    case toml::node_type::boolean:
      return "a boolean";
    case toml::node_type::date:
      return "a date";
    case toml::node_type::time:
      return "a time";
    case toml::node_type::date_time:
      return "a date-time";
    default:
      return "nothing";
  }
}

std::string trim(std::string_view s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string_view::npos) return "";
  const auto e = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(b, e - b + 1));
}

// ---- the reader -----------------------------------------------------------------------------

struct Diag {
  int group;  // 0: in the file, 1: from --set (reported after the file's, in the order given)
  uint32_t line, col;  // for --set: the override's index as line
  std::string text;
};

class Reader {
 public:
  Reader(std::string file, fs::path dir, toml::table& root)
      : file_(std::move(file)), dir_(std::move(dir)), root_(root) {}

  std::vector<Diag> diags;

  void apply_override(uint32_t index, const std::string& text);
  void check_structure();

  // Typed reads: false when the key is absent or has the wrong type (the latter is reported).
  bool get(const char* sec, const char* key, int64_t& out);
  bool get(const char* sec, const char* key, double& out);
  bool get(const char* sec, const char* key, bool& out);
  bool get(const char* sec, const char* key, std::string& out);

  // Integer in [lo, INT_MAX] stored into out; false when absent or invalid (invalid is reported).
  bool get_int(const char* sec, const char* key, int& out, int lo);
  // Number checked by a rule ("> 0", ">= 0", "in [0, 1)", ...) that `ok` decides.
  bool get_num(const char* sec, const char* key, double& out, bool (*ok)(double), const char* rule);
  bool get_enum(const char* sec, const char* key, std::string& out,
                const std::vector<std::string>& allowed);
  // A non-empty string resolved against the recipe's directory.
  bool get_path(const char* sec, const char* key, std::string& out);

  enum class Want { FileOrDir, File, Checkpoint };
  void check_exists(const char* sec, const char* key, const std::string& path, Want want);

  bool has(const char* sec, const char* key) { return node(sec, key) != nullptr; }
  bool has_section(const char* sec) { return root_[sec].is_table(); }

  void error(const char* sec, const char* key, const std::string& msg) {
    add(loc_key(sec, key), msg);
  }
  void missing(const char* sec, const char* key, const std::string& why = "") {
    add(loc_section(sec), "missing required key '" + std::string(key) + "' in [" + sec + "]" + why);
  }

  std::string resolve(const std::string& p) const {
    fs::path path(p);
    if (path.is_relative()) path = dir_ / path;
    path = path.lexically_normal();
    if (path.filename().empty() && path.has_parent_path() && path != path.root_path())
      path = path.parent_path();
    return path.string();
  }
  const fs::path& dir() const { return dir_; }

 private:
  struct Loc {
    int group;
    uint32_t line, col;
    std::string prefix;
  };

  const toml::node* node(const char* sec, const char* key) {
    const toml::table* t = root_[sec].as_table();
    return t ? t->get(key) : nullptr;
  }
  Loc loc_source(const toml::source_position& pos) {
    return {0, pos.line, pos.column,
            file_ + ":" + std::to_string(pos.line) + ":" + std::to_string(pos.column)};
  }
  Loc loc_section(const char* sec) {
    const toml::node* t = root_.get(sec);
    if (t && t->source().begin.line > 0) return loc_source(t->source().begin);
    return loc_source({1, 1});
  }
  Loc loc_key(const char* sec, const char* key) {
    const std::string name = std::string(sec) + "." + key;
    if (auto it = overridden_.find(name); it != overridden_.end())
      return {1, it->second, 0, "--set " + name};
    const toml::node* n = node(sec, key);
    if (n && n->source().begin.line > 0) return loc_source(n->source().begin);
    return loc_section(sec);
  }
  void add(const Loc& loc, const std::string& msg) {
    diags.push_back({loc.group, loc.line, loc.col, loc.prefix + ": error: " + msg});
  }
  void type_error(const char* sec, const char* key, const char* expected, const toml::node& n) {
    error(sec, key,
          "[" + std::string(sec) + "] " + key + ": expected " + expected + ", got " + type_name(n));
  }

  std::string file_;
  fs::path dir_;
  toml::table& root_;
  std::map<std::string, uint32_t> overridden_;  // section.key -> index of its last --set
};

void Reader::apply_override(uint32_t index, const std::string& text) {
  const auto eq = text.find('=');
  const std::string lhs = trim(text.substr(0, eq));
  const auto dot = lhs.find('.');
  const bool malformed = eq == std::string::npos || dot == std::string::npos || dot == 0 ||
                         dot + 1 == lhs.size() || lhs.find('.', dot + 1) != std::string::npos;
  if (malformed) {
    diags.push_back({1, index, 0,
                     "--set " + text + ": error: malformed override '" + text +
                         "'; expected section.key=value"});
    return;
  }
  const std::string sec = lhs.substr(0, dot), key = lhs.substr(dot + 1);
  const std::string where = "--set " + lhs + ": error: ";
  const SectionSpec* spec = find_section(sec);
  if (!spec) {
    diags.push_back({1, index, 0, where + unknown_section_message(sec)});
    return;
  }
  const KeySpec* kspec = find_key(*spec, key);
  if (!kspec) {
    diags.push_back({1, index, 0, where + unknown_key_message(*spec, key)});
    return;
  }
  const std::string rhs = trim(text.substr(eq + 1));
  toml::table parsed;
  const bool bare_string =
      kspec->kind == Kind::String && (rhs.empty() || (rhs[0] != '"' && rhs[0] != '\''));
  if (bare_string) {
    parsed.insert_or_assign("v", rhs);
  } else {
    try {
      parsed = toml::parse("v = " + rhs, std::string_view("--set"));
    } catch (const toml::parse_error& e) {
      diags.push_back(
          {1, index, 0,
           where + "cannot parse the value '" + rhs + "': " + std::string(e.description())});
      return;
    }
    if (parsed.size() != 1 || !parsed.get("v")) {
      diags.push_back({1, index, 0, where + "the value '" + rhs + "' is not a single TOML value"});
      return;
    }
  }
  if (!root_.get(sec)) root_.insert_or_assign(sec, toml::table{});
  toml::table* t = root_[sec].as_table();
  if (!t) {
    diags.push_back({1, index, 0, where + "[" + sec + "] in the recipe is not a table"});
    return;
  }
  t->insert_or_assign(key, *parsed.get("v"));
  overridden_[lhs] = index;
}

void Reader::check_structure() {
  for (auto&& [k, v] : root_) {
    const std::string name(k.str());
    const SectionSpec* spec = find_section(name);
    if (!v.is_table()) {
      std::string msg;
      if (spec) {
        msg = "[" + name + "] must be a table, got " + type_name(v);
      } else {
        const std::string owner = section_owning(name, "");
        msg = "key '" + name + "' is outside any section; " +
              (owner.empty() ? std::string("keys belong under a [section] header")
                             : "it belongs in [" + owner + "]");
      }
      add(loc_source(k.source().begin), msg);
      continue;
    }
    if (!spec) {
      add(loc_source(k.source().begin), unknown_section_message(name));
      continue;
    }
    for (auto&& [kk, vv] : *v.as_table()) {
      if (!find_key(*spec, kk.str()))
        add(loc_source(kk.source().begin), unknown_key_message(*spec, kk.str()));
    }
  }
}

bool Reader::get(const char* sec, const char* key, int64_t& out) {
  const toml::node* n = node(sec, key);
  if (!n) return false;
  if (!n->is_integer()) {
    type_error(sec, key, "an integer", *n);
    return false;
  }
  out = n->as_integer()->get();
  return true;
}

bool Reader::get(const char* sec, const char* key, double& out) {
  const toml::node* n = node(sec, key);
  if (!n) return false;
  if (!n->is_number()) {
    type_error(sec, key, "a number", *n);
    return false;
  }
  out = *n->value<double>();
  if (!std::isfinite(out)) {
    error(sec, key,
          "[" + std::string(sec) + "] " + key + " must be a finite number, got " + fmt_num(out));
    return false;
  }
  return true;
}

bool Reader::get(const char* sec, const char* key, bool& out) {
  const toml::node* n = node(sec, key);
  if (!n) return false;
  if (!n->is_boolean()) {
    type_error(sec, key, "a boolean", *n);
    return false;
  }
  out = n->as_boolean()->get();
  return true;
}

bool Reader::get(const char* sec, const char* key, std::string& out) {
  const toml::node* n = node(sec, key);
  if (!n) return false;
  if (!n->is_string()) {
    type_error(sec, key, "a string", *n);
    return false;
  }
  out = n->as_string()->get();
  return true;
}

bool Reader::get_int(const char* sec, const char* key, int& out, int lo) {
  int64_t v = 0;
  if (!get(sec, key, v)) return false;
  const std::string name = "[" + std::string(sec) + "] " + key;
  if (v < lo) {
    error(sec, key, name + " must be >= " + std::to_string(lo) + ", got " + std::to_string(v));
    return false;
  }
  if (v > INT_MAX) {
    error(sec, key, name + " must be <= " + std::to_string(INT_MAX) + ", got " + std::to_string(v));
    return false;
  }
  out = static_cast<int>(v);
  return true;
}

bool Reader::get_num(const char* sec, const char* key, double& out, bool (*ok)(double),
                     const char* rule) {
  double v = 0;
  if (!get(sec, key, v)) return false;
  if (!ok(v)) {
    error(sec, key,
          "[" + std::string(sec) + "] " + key + " must be " + rule + ", got " + fmt_num(v));
    return false;
  }
  out = v;
  return true;
}

bool Reader::get_enum(const char* sec, const char* key, std::string& out,
                      const std::vector<std::string>& allowed) {
  std::string v;
  if (!get(sec, key, v)) return false;
  if (std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + toml_string(a);
    error(sec, key,
          "[" + std::string(sec) + "] " + key + " must be one of " + list + ", got " +
              toml_string(v));
    return false;
  }
  out = v;
  return true;
}

bool Reader::get_path(const char* sec, const char* key, std::string& out) {
  std::string v;
  if (!get(sec, key, v)) return false;
  if (v.empty()) {
    error(sec, key, "[" + std::string(sec) + "] " + key + " must not be empty");
    return false;
  }
  out = resolve(v);
  return true;
}

void Reader::check_exists(const char* sec, const char* key, const std::string& path, Want want) {
  const std::string name = "[" + std::string(sec) + "] " + key + ": ";
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    error(sec, key, name + "no such file or directory: " + path);
    return;
  }
  const bool is_dir = fs::is_directory(path, ec);
  if (want == Want::File && is_dir) {
    error(sec, key, name + path + " is a directory, expected a file");
  } else if (want == Want::Checkpoint) {
    if (!is_dir) {
      error(sec, key, name + path + " is not a checkpoint directory");
      return;
    }
    std::string absent;
    for (const char* f : {"config.json", "model.safetensors"}) {
      if (!fs::is_regular_file(fs::path(path) / f, ec))
        absent += (absent.empty() ? "" : " and ") + std::string(f);
    }
    if (!absent.empty())
      error(sec, key, name + path + " is not a checkpoint directory: it has no " + absent);
  }
}

// ---- the sections ---------------------------------------------------------------------------

bool positive(double v) {
  return v > 0;
}
bool non_negative(double v) {
  return v >= 0;
}
bool unit_closed(double v) {
  return v >= 0 && v <= 1;
}
bool unit_half_open(double v) {
  return v >= 0 && v < 1;
}
bool val_fraction_ok(double v) {
  return v > 0 && v <= 0.5;
}

bool valid_name(const std::string& s) {
  if (s.empty()) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
  });
}

void read_run(Reader& rd, Recipe::Run& run) {
  if (rd.get("run", "name", run.name) && !valid_name(run.name))
    rd.error("run", "name",
             "[run] name must be non-empty and use only letters, digits, '-', '_' and '.', got " +
                 toml_string(run.name));
  if (!rd.get_path("run", "out_dir", run.out_dir)) run.out_dir = rd.resolve("runs/" + run.name);
  int64_t seed = 0;
  if (rd.get("run", "seed", seed)) {
    if (seed < 0)
      rd.error("run", "seed", "[run] seed must be >= 0, got " + std::to_string(seed));
    else
      run.seed = seed;
  }
  rd.get_enum("run", "device", run.device, {"auto", "cpu", "cuda"});
}

void read_data(Reader& rd, Recipe& r) {
  Recipe::Data& d = r.data;
  rd.get_enum("data", "tokenizer", d.tokenizer, {"bytes", "gpt2"});
  if (rd.get_path("data", "train", d.train))
    rd.check_exists("data", "train", d.train, Reader::Want::FileOrDir);
  else if (!rd.has("data", "train"))
    rd.missing("data", "train");
  if (rd.get_path("data", "val", d.val))
    rd.check_exists("data", "val", d.val, Reader::Want::FileOrDir);
  rd.get_num("data", "val_fraction", d.val_fraction, val_fraction_ok, "in (0, 0.5]");
  if (rd.has("data", "val") && rd.has("data", "val_fraction"))
    rd.error("data", "val_fraction",
             "[data] val_fraction has no effect when val is given; remove one of them");
  const bool gpt2 = d.tokenizer == "gpt2";
  for (const char* key : {"encoder", "vocab_bpe"}) {
    std::string& out = std::string_view(key) == "encoder" ? d.encoder : d.vocab_bpe;
    if (!gpt2) {
      if (rd.has("data", key))
        rd.error("data", key,
                 "[data] " + std::string(key) + " is only used with tokenizer = \"gpt2\"");
      continue;
    }
    if (rd.get_path("data", key, out))
      rd.check_exists("data", key, out, Reader::Want::File);
    else if (!rd.has("data", key))
      rd.missing("data", key, " (tokenizer = \"gpt2\" needs it)");
  }
  if (!rd.get_path("data", "cache_dir", d.cache_dir))
    d.cache_dir = (fs::path(r.run.out_dir) / "cache").string();
  r.student.vocab_size = gpt2 ? 50257 : 256;
}

void read_student(Reader& rd, Recipe::Student& s) {
  const char* dims[] = {"n_layer", "n_head", "n_embd", "block_size"};
  int* outs[] = {&s.n_layer, &s.n_head, &s.n_embd, &s.block_size};
  if (rd.has("student", "init")) {
    if (rd.get_path("student", "init", s.init))
      rd.check_exists("student", "init", s.init, Reader::Want::Checkpoint);
    for (const char* key : dims) {
      if (rd.has("student", key))
        rd.error("student", key,
                 "[student] " + std::string(key) +
                     " cannot be given together with init (the checkpoint's config.json "
                     "defines the model)");
    }
    return;
  }
  bool any = false;
  for (const char* key : dims) any = any || rd.has("student", key);
  if (!any) {
    rd.missing("student", "n_layer",
               " (give n_layer, n_head, n_embd and block_size, or init = a checkpoint)");
    return;
  }
  bool all_ok = true;
  for (int i = 0; i < 4; ++i) {
    if (!rd.get_int("student", dims[i], *outs[i], 1)) {
      all_ok = false;
      if (!rd.has("student", dims[i])) rd.missing("student", dims[i]);
    }
  }
  if (all_ok && s.n_embd % s.n_head != 0)
    rd.error("student", "n_embd",
             "[student] n_embd (" + std::to_string(s.n_embd) + ") must be divisible by n_head (" +
                 std::to_string(s.n_head) + ")");
  if (!all_ok) s.n_layer = s.n_head = s.n_embd = s.block_size = 0;
}

void read_teacher(Reader& rd, Recipe::Teacher& t) {
  if (!rd.has_section("teacher")) return;
  if (rd.get_path("teacher", "checkpoint", t.checkpoint))
    rd.check_exists("teacher", "checkpoint", t.checkpoint, Reader::Want::Checkpoint);
  else if (!rd.has("teacher", "checkpoint"))
    rd.missing("teacher", "checkpoint");
}

void read_loss(Reader& rd, Recipe::Loss& l) {
  const bool teacher = rd.has_section("teacher");
  l.ce_weight = teacher ? 0.5 : 1.0;
  l.kd_weight = teacher ? 0.5 : 0.0;
  rd.get_num("loss", "ce_weight", l.ce_weight, non_negative, ">= 0");
  rd.get_num("loss", "kd_weight", l.kd_weight, non_negative, ">= 0");
  rd.get_num("loss", "temperature", l.temperature, positive, "> 0");
  rd.get_enum("loss", "divergence", l.divergence, {"forward_kl", "reverse_kl", "jsd"});
  rd.get_num("loss", "beta", l.beta, unit_closed, "in [0, 1]");
  rd.get("loss", "t2_scaling", l.t2_scaling);
  if (!teacher && l.kd_weight > 0)
    rd.error("loss", "kd_weight",
             "[loss] kd_weight is " + fmt_num(l.kd_weight) +
                 " but there is no [teacher] section; add one or set kd_weight = 0");
  if (l.ce_weight + l.kd_weight == 0)
    rd.error("loss", rd.has("loss", "kd_weight") ? "kd_weight" : "ce_weight",
             "[loss] ce_weight and kd_weight are both 0: nothing would be trained");
}

void read_train(Reader& rd, Recipe& r) {
  Recipe::Train& t = r.train;
  rd.get_int("train", "micro_batch", t.micro_batch, 1);
  rd.get_int("train", "grad_accum", t.grad_accum, 1);
  if (!rd.get_int("train", "max_steps", t.max_steps, 1) && !rd.has("train", "max_steps"))
    rd.missing("train", "max_steps");
  rd.get_int("train", "eval_every", t.eval_every, 0);
  rd.get_int("train", "eval_batches", t.eval_batches, 1);
  const int block = r.student.block_size;
  if (rd.get_int("train", "seq_len", t.seq_len, 1)) {
    if (block > 0 && t.seq_len > block)
      rd.error("train", "seq_len",
               "[train] seq_len must be <= [student] block_size (" + std::to_string(block) +
                   "), got " + std::to_string(t.seq_len));
  } else if (!rd.has("train", "seq_len")) {
    if (block > 0)
      t.seq_len = block;
    else if (!r.student.init.empty())
      rd.missing("train", "seq_len", " (needed when [student] init is used)");
  }
}

void read_optim(Reader& rd, Recipe::Optim& o) {
  rd.get_num("optim", "lr", o.lr, positive, "> 0");
  rd.get_num("optim", "beta1", o.beta1, unit_half_open, "in [0, 1)");
  rd.get_num("optim", "beta2", o.beta2, unit_half_open, "in [0, 1)");
  rd.get_num("optim", "eps", o.eps, positive, "> 0");
  rd.get_num("optim", "weight_decay", o.weight_decay, non_negative, ">= 0");
  rd.get_num("optim", "grad_clip", o.grad_clip, non_negative, ">= 0");
}

void read_schedule(Reader& rd, Recipe& r) {
  Recipe::Schedule& s = r.schedule;
  if (rd.get_int("schedule", "warmup_steps", s.warmup_steps, 0) && r.train.max_steps > 0 &&
      s.warmup_steps > r.train.max_steps)
    rd.error("schedule", "warmup_steps",
             "[schedule] warmup_steps must be <= [train] max_steps (" +
                 std::to_string(r.train.max_steps) + "), got " + std::to_string(s.warmup_steps));
  rd.get_enum("schedule", "decay", s.decay, {"cosine", "linear", "constant"});
  s.min_lr = r.optim.lr / 10;
  if (rd.get_num("schedule", "min_lr", s.min_lr, non_negative, ">= 0") && s.min_lr > r.optim.lr)
    rd.error("schedule", "min_lr",
             "[schedule] min_lr must be <= [optim] lr (" + fmt_num(r.optim.lr) + "), got " +
                 fmt_num(s.min_lr));
}

void read_checkpoint(Reader& rd, Recipe::Checkpoint& c) {
  rd.get_int("checkpoint", "every", c.every, 0);
  rd.get_int("checkpoint", "keep_last", c.keep_last, 1);
  rd.get("checkpoint", "resume", c.resume);
}

void read_log(Reader& rd, Recipe::Log& l) {
  rd.get_int("log", "every", l.every, 1);
  rd.get("log", "tensorboard", l.tensorboard);
}

void read_profile(Reader& rd, Recipe& r) {
  Recipe::Profile& p = r.profile;
  rd.get("profile", "enabled", p.enabled);
  rd.get_int("profile", "wait", p.wait, 0);
  rd.get_int("profile", "warmup", p.warmup, 0);
  rd.get_int("profile", "active", p.active, 0);
  if (!p.enabled) return;
  if (p.active < 1) {
    rd.error("profile", "active",
             "[profile] active must be >= 1 when enabled = true, got " + std::to_string(p.active));
  } else {
    const int64_t window = int64_t{p.wait} + p.warmup + p.active;
    if (r.train.max_steps > 0 && window > r.train.max_steps)
      rd.error("profile", "active",
               "[profile] the window wait + warmup + active = " + std::to_string(window) +
                   " does not fit in [train] max_steps = " + std::to_string(r.train.max_steps));
  }
}

// ---- writing --------------------------------------------------------------------------------

struct Entry {
  std::string section, key, value;  // value as TOML text
};

std::vector<Entry> flatten(const Recipe& r) {
  std::vector<Entry> e;
  auto str = [&](const char* s, const char* k, const std::string& v) {
    e.push_back({s, k, toml_string(v)});
  };
  auto num = [&](const char* s, const char* k, double v) { e.push_back({s, k, toml_float(v)}); };
  auto integer = [&](const char* s, const char* k, int64_t v) {
    e.push_back({s, k, std::to_string(v)});
  };
  auto boolean = [&](const char* s, const char* k, bool v) {
    e.push_back({s, k, v ? "true" : "false"});
  };
  str("run", "name", r.run.name);
  str("run", "out_dir", r.run.out_dir);
  integer("run", "seed", r.run.seed);
  str("run", "device", r.run.device);
  str("data", "train", r.data.train);
  if (!r.data.val.empty())
    str("data", "val", r.data.val);
  else
    num("data", "val_fraction", r.data.val_fraction);
  str("data", "tokenizer", r.data.tokenizer);
  if (!r.data.encoder.empty()) str("data", "encoder", r.data.encoder);
  if (!r.data.vocab_bpe.empty()) str("data", "vocab_bpe", r.data.vocab_bpe);
  str("data", "cache_dir", r.data.cache_dir);
  if (!r.student.init.empty()) {
    str("student", "init", r.student.init);
  } else {
    integer("student", "n_layer", r.student.n_layer);
    integer("student", "n_head", r.student.n_head);
    integer("student", "n_embd", r.student.n_embd);
    integer("student", "block_size", r.student.block_size);
  }
  if (r.has_teacher()) str("teacher", "checkpoint", r.teacher.checkpoint);
  num("loss", "ce_weight", r.loss.ce_weight);
  num("loss", "kd_weight", r.loss.kd_weight);
  num("loss", "temperature", r.loss.temperature);
  str("loss", "divergence", r.loss.divergence);
  num("loss", "beta", r.loss.beta);
  boolean("loss", "t2_scaling", r.loss.t2_scaling);
  integer("train", "micro_batch", r.train.micro_batch);
  integer("train", "seq_len", r.train.seq_len);
  integer("train", "grad_accum", r.train.grad_accum);
  integer("train", "max_steps", r.train.max_steps);
  integer("train", "eval_every", r.train.eval_every);
  integer("train", "eval_batches", r.train.eval_batches);
  num("optim", "lr", r.optim.lr);
  num("optim", "beta1", r.optim.beta1);
  num("optim", "beta2", r.optim.beta2);
  num("optim", "eps", r.optim.eps);
  num("optim", "weight_decay", r.optim.weight_decay);
  num("optim", "grad_clip", r.optim.grad_clip);
  integer("schedule", "warmup_steps", r.schedule.warmup_steps);
  str("schedule", "decay", r.schedule.decay);
  num("schedule", "min_lr", r.schedule.min_lr);
  integer("checkpoint", "every", r.checkpoint.every);
  integer("checkpoint", "keep_last", r.checkpoint.keep_last);
  boolean("checkpoint", "resume", r.checkpoint.resume);
  integer("log", "every", r.log.every);
  boolean("log", "tensorboard", r.log.tensorboard);
  boolean("profile", "enabled", r.profile.enabled);
  integer("profile", "wait", r.profile.wait);
  integer("profile", "warmup", r.profile.warmup);
  integer("profile", "active", r.profile.active);
  return e;
}

}  // namespace

Recipe load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(path + ": error: cannot open the recipe file");
  std::ostringstream text;
  text << in.rdbuf();

  toml::table root;
  try {
    root = toml::parse(text.str(), std::string_view(path));
  } catch (const toml::parse_error& e) {
    const auto& pos = e.source().begin;
    throw InputError(path + ":" + std::to_string(pos.line) + ":" + std::to_string(pos.column) +
                     ": error: " + std::string(e.description()));
  }

  std::error_code ec;
  fs::path dir = fs::absolute(fs::path(path), ec).parent_path();
  Reader rd(path, dir, root);
  for (size_t i = 0; i < overrides.size(); ++i)
    rd.apply_override(static_cast<uint32_t>(i), overrides[i]);
  rd.check_structure();

  Recipe r;
  read_run(rd, r.run);
  read_data(rd, r);
  read_student(rd, r.student);
  read_teacher(rd, r.teacher);
  read_loss(rd, r.loss);
  read_train(rd, r);
  read_optim(rd, r.optim);
  read_schedule(rd, r);
  read_checkpoint(rd, r.checkpoint);
  read_log(rd, r.log);
  read_profile(rd, r);

  if (!rd.diags.empty()) {
    std::stable_sort(rd.diags.begin(), rd.diags.end(), [](const Diag& a, const Diag& b) {
      if (a.group != b.group) return a.group < b.group;
      if (a.line != b.line) return a.line < b.line;
      return a.col < b.col;
    });
    std::string msg;
    for (const auto& d : rd.diags) msg += (msg.empty() ? "" : "\n") + d.text;
    throw InputError(msg);
  }
  return r;
}

std::string recipe_to_toml(const Recipe& r) {
  std::string out = "# The resolved recipe: every key, defaults included.\n";
  std::string section;
  for (const auto& e : flatten(r)) {
    if (e.section != section) {
      section = e.section;
      out += "\n[" + section + "]\n";
    }
    out += e.key + " = " + e.value + "\n";
  }
  return out;
}

std::string recipe_hash(const Recipe& r) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : recipe_to_toml(r)) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::vector<std::string> recipe_diff(const Recipe& a, const Recipe& b) {
  const std::vector<Entry> ea = flatten(a), eb = flatten(b);
  auto lookup = [](const std::vector<Entry>& es, const Entry& key) -> const std::string* {
    for (const auto& e : es)
      if (e.section == key.section && e.key == key.key) return &e.value;
    return nullptr;
  };
  std::vector<std::string> out;
  for (const auto& sec : schema()) {
    for (const auto& k : sec.keys) {
      const Entry key{sec.name, k.name, ""};
      const std::string* va = lookup(ea, key);
      const std::string* vb = lookup(eb, key);
      if ((!va && !vb) || (va && vb && *va == *vb)) continue;
      out.push_back(key.section + "." + key.key + ": " + (va ? *va : "(unset)") + " -> " +
                    (vb ? *vb : "(unset)"));
    }
  }
  return out;
}

}  // namespace kd
