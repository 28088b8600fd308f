// The strict recipe reader. Parsing is toml++'s; everything else is here: the key table (every
// key once: where it lives in Recipe, its default, its check, its doc), a Reader that reads typed
// values and collects every problem with its location, the rules that tie keys together, and the
// resolved recipe written back as TOML. The table drives reading, --set, defaults, the writer, the
// diff and the hash.
#include "engine/io/recipe.h"

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <climits>
#include <cmath>
#include <concepts>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <type_traits>

#include "engine/base/error.h"

namespace kd {
namespace {

namespace fs = std::filesystem;

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
  bool get(const char* sec, const char* key, std::vector<int>& out);

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

bool Reader::get(const char* sec, const char* key, std::vector<int>& out) {
  const toml::node* n = node(sec, key);
  if (!n) return false;
  const toml::array* a = n->as_array();
  bool ok = a != nullptr;
  if (a)
    for (const toml::node& e : *a) ok = ok && e.is_integer();
  if (!ok) {
    type_error(sec, key, "an array of integers", *n);
    return false;
  }
  if (a->empty()) {
    error(sec, key,
          "[" + std::string(sec) + "] " + key +
              " is empty; list the teacher's layers to copy, or remove it");
    return false;
  }
  std::vector<int> values;
  for (const toml::node& e : *a) {
    const int64_t v = e.as_integer()->get();
    if (v < 0 || v > INT_MAX) {
      error(sec, key,
            "[" + std::string(sec) + "] " + key + ": every entry must be >= 0, got " +
                std::to_string(v));
      return false;
    }
    values.push_back(static_cast<int>(v));
  }
  out = std::move(values);
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

// ---- keys -----------------------------------------------------------------------------------

// What a string key holds: a plain string, or a path resolved against the recipe's directory.
// Outputs are not checked; inputs must exist. Only OutputOrEmpty may be "" (which turns it off).
enum class PathKind { None, Output, OutputOrEmpty, FileOrDir, File, Checkpoint };

// A numeric range [lo, hi]; either end may be open, hi = HUGE_VAL for none.
struct Range {
  double lo, hi;
  bool lo_open, hi_open;
};
Range at_least(double lo) {
  return {lo, HUGE_VAL, false, false};
}
Range above(double lo) {
  return {lo, HUGE_VAL, true, false};
}
// within("[)", 0, 1): 0 <= v < 1.
Range within(const char* brackets, double lo, double hi) {
  return {lo, hi, brackets[0] == '(', brackets[1] == ')'};
}
// ">= 1" / "in [0, 1)" for errors, "≥ 1" / "[0, 1)" for the docs.
std::string range_text(const Range& r, bool for_docs) {
  if (r.hi == HUGE_VAL) return (r.lo_open ? "> " : for_docs ? "≥ " : ">= ") + fmt_num(r.lo);
  return std::string(for_docs ? "" : "in ") + (r.lo_open ? "(" : "[") + fmt_num(r.lo) + ", " +
         fmt_num(r.hi) + (r.hi_open ? ")" : "]");
}

// A key's check beyond its type: `ok` decides; a failure reads "[sec] key must be <rule>, got
// <value>"; `doc` starts the docs' "allowed" column. Strings may be paths instead.
template <class V>
struct Check {
  std::string rule, doc;
  std::function<bool(const V&)> ok;
  PathKind path = PathKind::None;

  Check() = default;
  Check(std::string rule_, std::string doc_, std::function<bool(const V&)> ok_,
        PathKind path_ = PathKind::None)
      : rule(std::move(rule_)), doc(std::move(doc_)), ok(std::move(ok_)), path(path_) {}
  Check(const Range& r) requires std::is_arithmetic_v<V>
      : rule(range_text(r, false)), doc(range_text(r, true)), ok([r](const V& v) {
        const double x = static_cast<double>(v);
        return (r.lo_open ? x > r.lo : x >= r.lo) && (r.hi_open ? x < r.hi : x <= r.hi);
      }) {}
};

Check<std::string> path(PathKind kind) {
  static const char* const docs[] = {
      "", "", "`\"\"`: off", "must exist", "file must exist", "checkpoint directory"};
  return {"", docs[static_cast<int>(kind)], nullptr, kind};
}

bool valid_name(const std::string& s) {
  if (s.empty()) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
  });
}
const Check<std::string> kName = {"non-empty and use only letters, digits, '-', '_' and '.'",
                                  "letters, digits, `-`, `_`, `.`", valid_name};

// A key's default: a value, "unset" (an empty string or 0 unless given; `doc` is what the docs'
// default column says), required (missing is an error), or derived from keys read before it.
struct Required {};
constexpr Required required;
struct Unset {
  const char* doc;
};
constexpr Unset none{"none"};
constexpr Unset required_by_rule{"required"};  // when, a section's check_* function decides
struct Derived {
  const char* doc;  // as the docs say it
  void (*fn)(Recipe&, Reader&);
};

template <class T>
struct Def {
  enum class How { Value, Unset, Required, Derived } how;
  T value{};
  const char* doc = "";
  void (*derive)(Recipe&, Reader&) = nullptr;

  template <class U>
  requires std::constructible_from<T, U&&> Def(U&& v)
      : how(How::Value), value(std::forward<U>(v)) {}
  Def(Required) : how(How::Required), doc("required") {}
  Def(Unset u) : how(How::Unset), doc(u.doc) {}
  Def(Derived d) : how(How::Derived), doc(d.doc), derive(d.fn) {}
};

// One key, type-erased: what reading, --set, the writer, the diff and the docs need.
struct Key {
  const char* section;
  const char* name;
  const char* type;  // as the docs say it: integer, float, boolean, string, path
  bool bare_word;    // --set may give the value as a bare word
  std::string default_doc, allowed_doc;
  const char* doc;
  std::function<void(Reader&, Recipe&)> read;  // the default, then the value when given
  std::function<std::optional<std::string>(const Recipe&)> write;  // as TOML; none: not written
};

template <class T>
std::string toml_text(const T& v) {
  if constexpr (std::is_same_v<T, bool>) {
    return v ? "true" : "false";
  } else if constexpr (std::is_same_v<T, std::vector<int>>) {
    std::string list;
    for (int x : v) list += (list.empty() ? "" : ", ") + std::to_string(x);
    return "[" + list + "]";
  } else if constexpr (std::is_integral_v<T>) {
    return std::to_string(v);
  } else if constexpr (std::is_floating_point_v<T>) {
    return toml_float(v);
  } else if constexpr (std::is_enum_v<T>) {
    return toml_string(to_string(v));
  } else {
    return toml_string(v);
  }
}

// "\"a\", \"b\"" for errors, "`\"a\"`, `\"b\"`" for the docs.
template <Choice E>
std::string choice_list(bool for_docs) {
  std::string out;
  for (const char* n : ChoiceNames<E>::names) {
    const std::string s = for_docs ? "`" + toml_string(n) + "`" : toml_string(n);
    out += (out.empty() ? "" : ", ") + s;
  }
  return out;
}

// Integers are checked as int64_t (the type TOML reads), then against the field's own range.
template <class T>
using CheckOf =
    Check<std::conditional_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int64_t, T>>;

// Reads sec.key into out when it is present and valid (else reports and leaves out alone).
template <class T>
bool read_value(Reader& rd, const char* sec, const char* key, const CheckOf<T>& c, T& out) {
  const std::string name = "[" + std::string(sec) + "] " + key;
  auto fails = [&](const auto& v, const std::string& shown) {
    if (!c.ok || c.ok(v)) return false;
    rd.error(sec, key, name + " must be " + c.rule + ", got " + shown);
    return true;
  };
  if constexpr (std::is_same_v<T, bool>) {
    return rd.get(sec, key, out);
  } else if constexpr (std::is_same_v<T, std::vector<int>>) {
    return rd.get(sec, key, out);
  } else if constexpr (std::is_integral_v<T>) {
    int64_t v = 0;
    if (!rd.get(sec, key, v) || fails(v, std::to_string(v))) return false;
    for (const int64_t bound :
         {int64_t{std::numeric_limits<T>::min()}, int64_t{std::numeric_limits<T>::max()}}) {
      if (bound < 0 ? v < bound : v > bound) {
        rd.error(sec, key,
                 name + " must be " + (bound < 0 ? ">= " : "<= ") + std::to_string(bound) +
                     ", got " + std::to_string(v));
        return false;
      }
    }
    out = static_cast<T>(v);
    return true;
  } else if constexpr (std::is_floating_point_v<T>) {
    double v = 0;
    if (!rd.get(sec, key, v) || fails(v, fmt_num(v))) return false;
    out = v;
    return true;
  } else if constexpr (std::is_enum_v<T>) {
    std::string v;
    if (!rd.get(sec, key, v)) return false;
    if (const auto e = parse_choice<T>(v)) {
      out = *e;
      return true;
    }
    rd.error(sec, key,
             name + " must be one of " + choice_list<T>(false) + ", got " + toml_string(v));
    return false;
  } else {
    std::string v;
    if (!rd.get(sec, key, v)) return false;
    if (c.path == PathKind::None) {
      if (fails(v, toml_string(v))) return false;
      out = v;
      return true;
    }
    if (v.empty()) {
      if (c.path != PathKind::OutputOrEmpty) {
        rd.error(sec, key, name + " must not be empty");
        return false;
      }
      out.clear();
      return true;
    }
    out = rd.resolve(v);
    if (c.path == PathKind::FileOrDir) rd.check_exists(sec, key, out, Reader::Want::FileOrDir);
    if (c.path == PathKind::File) rd.check_exists(sec, key, out, Reader::Want::File);
    if (c.path == PathKind::Checkpoint) rd.check_exists(sec, key, out, Reader::Want::Checkpoint);
    return true;
  }
}

// A table entry. `get` reaches the field (KD_KEY writes it); T is the field's type. `written`
// says when the writer includes the key (default: always, except unset strings while empty).
template <class Get, class T = std::remove_cvref_t<std::invoke_result_t<Get&, Recipe&>>>
Key key(const char* sec, const char* name, Get get, std::type_identity_t<Def<T>> def,
        std::type_identity_t<CheckOf<T>> check, const char* doc,
        bool (*written)(const Recipe&) = nullptr) {
  Key k;
  k.section = sec;
  k.name = name;
  k.doc = doc;
  if constexpr (std::is_same_v<T, bool>)
    k.type = "boolean";
  else if constexpr (std::is_same_v<T, std::vector<int>>)
    k.type = "array of integers";
  else if constexpr (std::is_integral_v<T>)
    k.type = "integer";
  else if constexpr (std::is_floating_point_v<T>)
    k.type = "float";
  else if constexpr (std::is_enum_v<T>)
    k.type = "string";
  else
    k.type = check.path == PathKind::None ? "string" : "path";
  k.bare_word = std::is_enum_v<T> || std::is_same_v<T, std::string>;
  k.default_doc = def.how == Def<T>::How::Value ? "`" + toml_text(def.value) + "`" : def.doc;
  if constexpr (std::is_enum_v<T>)
    k.allowed_doc = choice_list<T>(true);
  else
    k.allowed_doc = check.doc;
  k.read = [=](Reader& rd, Recipe& r) {
    T& field = get(r);
    if (def.how == Def<T>::How::Value) field = def.value;
    if (def.how == Def<T>::How::Derived) def.derive(r, rd);
    if (rd.has(sec, name))
      read_value<T>(rd, sec, name, check, field);
    else if (def.how == Def<T>::How::Required)
      rd.missing(sec, name);
  };
  k.write = [=](const Recipe& r) -> std::optional<std::string> {
    const T& v = get(r);
    bool shown = written ? written(r) : true;
    if constexpr (std::is_same_v<T, std::string> || std::is_same_v<T, std::vector<int>>)
      if (!written && def.how == Def<T>::How::Unset && v.empty()) shown = false;
    if (!shown) return std::nullopt;
    return toml_text(v);
  };
  return k;
}

// clang-format off
#define KD_KEY(sec, key) #sec, #key, [](auto& r) -> auto& { return r.sec.key; }
// clang-format on

bool no_init(const Recipe& r) {
  return r.student.init.empty();
}

// THE KEY TABLE. Adding a key is a field in Recipe (recipe.h) and one entry here,
//   key(KD_KEY(section, name), default, check, "one-line doc" [, when it is written]),
// placed where the resolved recipe should write it (a section's keys stay together; a new section
// needs nothing else). The default is a value, `none`, `required`, `required_by_rule` or
// Derived{...}; the check is `{}`, a range (at_least, above, within), kName or path(PathKind::...).
// A choice is an enum with a ChoiceNames specialisation (engine/base/choice.h). Reading, --set, the
// resolved recipe, the diff and the hash then follow. Add the row that
// RecipeTest.DocsListExactlyTheTableKeys prints to docs/recipes.md. Rules between keys go in the
// section's check_* function below.
const std::vector<Key>& keys() {
  static const std::vector<Key> table = [] {
    std::vector<Key> t = {
        key(KD_KEY(run, name), "run", kName, "the run's name"),
        key(KD_KEY(run, out_dir),
            Derived{
                "`runs/<name>`",
                [](Recipe& r, Reader& rd) { r.run.out_dir = rd.resolve("runs/" + r.run.name); }},
            path(PathKind::Output), "where checkpoints, logs and the cache go"),
        key(KD_KEY(run, seed), 1337, at_least(0),
            "seeds initialisation, data order and the validation split"),
        key(KD_KEY(run, device), Device::Auto, {}, "`auto` uses a GPU when one is usable"),
        key(KD_KEY(run, overwrite), false, {},
            "a fresh run may delete the previous run in `out_dir` (see [One run per "
            "out_dir](#one-run-per-out_dir)); `--overwrite` sets it"),
        key(KD_KEY(run, threads), 0, within("[]", 0, 1024),
            "CPU threads for the ops (OpenMP); `0`: `OMP_NUM_THREADS` when it is set, else the "
            "cores this process may run on (its CPU affinity, which `taskset` and container "
            "limits narrow). Applied when training "
            "starts. Results are the same bits run after run for the same recipe and the same "
            "thread count; another thread count may change the last bits of matrix products"),

        key(KD_KEY(data, train), required, path(PathKind::FileOrDir),
            "a text file, a directory of text files, or a token shard `.bin` (llm.c format)"),
        key(KD_KEY(data, val), none, path(PathKind::FileOrDir),
            "validation data, same forms as `train`"),
        key(KD_KEY(data, val_fraction), 0.1, within("(]", 0, 0.5),
            "share of `train` held out for validation when `val` is absent; an error together "
            "with `val`",
            [](const Recipe& r) { return r.data.val.empty(); }),
        key(KD_KEY(data, tokenizer), TokenizerKind::Bytes, {},
            "`bytes`: one token per byte (vocabulary 256); `gpt2`: GPT-2 BPE (vocabulary 50257)"),
        key(KD_KEY(data, encoder), none, path(PathKind::File),
            "GPT-2 `encoder.json`; required with `gpt2`, an error with `bytes`"),
        key(KD_KEY(data, vocab_bpe), none, path(PathKind::File),
            "GPT-2 `vocab.bpe`; required with `gpt2`, an error with `bytes`"),
        key(KD_KEY(data, cache_dir),
            Derived{"`<out_dir>/cache`",
                    [](Recipe& r, Reader&) {
                      r.data.cache_dir = (fs::path(r.run.out_dir) / "cache").string();
                    }},
            path(PathKind::OutputOrEmpty), "where tokenized text is cached (see `data.md`)"),

        key(KD_KEY(student, init), none, path(PathKind::Checkpoint),
            "start from this checkpoint instead"),
        key(KD_KEY(student, n_layer), required_by_rule, at_least(1), "transformer blocks", no_init),
        key(KD_KEY(student, n_head), required_by_rule, at_least(1), "attention heads", no_init),
        key(KD_KEY(student, n_embd), required_by_rule, at_least(1), "model width", no_init),
        key(KD_KEY(student, block_size), required_by_rule, at_least(1),
            "longest sequence (position embeddings)", no_init),
        key(KD_KEY(student, teacher_layers), Unset{"none (random init)"}, {},
            "start from the teacher: student layer i is a copy of teacher layer "
            "`teacher_layers[i]`, and the token and position embeddings and the final layernorm "
            "are the teacher's (DistilBERT's initialisation). The student must have the teacher's "
            "`n_embd` and `n_head`, and a `block_size` no longer than its; checked when the "
            "teacher loads. `[0, 2]` takes every other layer of a 4-layer teacher"),

        key(KD_KEY(teacher, checkpoint), required_by_rule, path(PathKind::Checkpoint),
            "the teacher, e.g. another run's `out_dir/final`"),
        key(KD_KEY(teacher, tokenizer), none, {},
            "only for a teacher checkpoint that carries no tokenizer files: asserts that it was "
            "trained with the run's tokenizer of this kind (must equal `[data] tokenizer`); a "
            "teacher with tokenizer files is checked against the student's instead, see "
            "docs/checkpoints.md"),

        key(KD_KEY(loss, ce_weight),
            Derived{"`1.0` without a teacher, `0.5` with one",
                    [](Recipe& r, Reader& rd) {
                      r.loss.ce_weight = rd.has_section("teacher") ? 0.5 : 1.0;
                    }},
            at_least(0), "weight of the cross-entropy term"),
        key(KD_KEY(loss, kd_weight),
            Derived{"`0.0` without a teacher, `0.5` with one",
                    [](Recipe& r, Reader& rd) {
                      r.loss.kd_weight = rd.has_section("teacher") ? 0.5 : 0.0;
                    }},
            at_least(0), "weight of the distillation term"),
        key(KD_KEY(loss, temperature), 2.0, above(0),
            "softens both distributions: `softmax(logits / T)`"),
        key(KD_KEY(loss, divergence), Divergence::ForwardKL, {},
            "`KL(p‖q)`, `KL(q‖p)` or the β-skew Jensen–Shannon divergence (p teacher, q student)"),
        key(KD_KEY(loss, beta), 0.5, within("[]", 0, 1),
            "mixture weight of `jsd`; ignored by the KL divergences"),
        key(KD_KEY(loss, t2_scaling), true, {},
            "multiply the distillation term by `T²`, keeping its gradients on the CE scale"),

        key(KD_KEY(train, micro_batch), 8, at_least(1), "sequences per forward/backward pass"),
        key(KD_KEY(train, seq_len),
            Derived{"`block_size`",
                    [](Recipe& r, Reader&) { r.train.seq_len = r.student.block_size; }},
            at_least(1), "tokens per sequence; required with `[student] init`"),
        key(KD_KEY(train, grad_accum), 1, at_least(1), "micro-batches accumulated per step"),
        key(KD_KEY(train, loss_chunk), 0, at_least(0),
            "rows per chunk of the fused LM head and loss; 0: automatic"),
        key(KD_KEY(train, max_steps), required, at_least(1), "optimizer steps in the run"),
        key(KD_KEY(train, eval_every), 50, at_least(0),
            "evaluate every this many steps; 0: only at the end"),
        key(KD_KEY(train, eval_batches), 8, at_least(1), "micro-batches per evaluation"),

        key(KD_KEY(optim, lr), 1e-3, above(0), "peak learning rate"),
        key(KD_KEY(optim, beta1), 0.9, within("[)", 0, 1), "first-moment decay"),
        key(KD_KEY(optim, beta2), 0.95, within("[)", 0, 1), "second-moment decay"),
        key(KD_KEY(optim, eps), 1e-8, above(0), "added to the denominator"),
        key(KD_KEY(optim, weight_decay), 0.1, at_least(0), "decoupled weight decay"),
        key(KD_KEY(optim, grad_clip), 1.0, at_least(0),
            "clip the global gradient norm to this; 0: off"),

        key(KD_KEY(schedule, warmup_steps), 0, at_least(0), "steps of linear warmup"),
        key(KD_KEY(schedule, decay), Decay::Cosine, {},
            "shape after warmup; `constant` stays at `lr`"),
        key(KD_KEY(schedule, min_lr),
            Derived{"`lr / 10`", [](Recipe& r, Reader&) { r.schedule.min_lr = r.optim.lr / 10; }},
            at_least(0), "learning rate at the last step"),

        key(KD_KEY(checkpoint, every), 0, at_least(0),
            "save every this many steps; 0: only at the end (always saved as `final`)"),
        key(KD_KEY(checkpoint, keep_last), 2, at_least(1),
            "`step_NNNNNN` directories kept; older ones are deleted"),
        key(KD_KEY(checkpoint, resume), false, {},
            "continue from the newest checkpoint in `out_dir`"),

        key(KD_KEY(log, every), 10, at_least(1), "log training metrics every this many steps"),
        key(KD_KEY(log, tensorboard), true, {}, "also write TensorBoard event files"),

        key(KD_KEY(profile, enabled), false, {}, "profile this run"),
        key(KD_KEY(profile, wait), 2, at_least(0), "steps before the window"),
        key(KD_KEY(profile, warmup), 1, at_least(0), "steps recorded and thrown away"),
        key(KD_KEY(profile, active), 3, at_least(0), "steps recorded"),

        key(KD_KEY(distributed, shard_optimizer), true, {},
            "with several ranks, each keeps only its share of the AdamW moments (ZeRO-1: "
            "reduce-scatter the gradients, update a slice, all-gather the parameters); `false`: "
            "every rank holds and updates everything. No effect on one rank"),
        key(KD_KEY(distributed, timeout_s), 300.0, above(0),
            "seconds a rank waits in a collective for the others before it stops the job with an "
            "error naming the rank that did not arrive; must exceed the longest time one rank "
            "works alone (rank 0 writing a checkpoint)"),
    };
    // A section's keys must stay together (the writer opens each section once), names unique.
    for (size_t i = 0; i < t.size(); ++i)
      for (size_t j = 0; j < i; ++j) {
        const bool same_section = std::string_view(t[i].section) == t[j].section;
        KD_REQUIRE(!same_section || std::string_view(t[i].name) != t[j].name,
                   std::string("recipe key table: ") + t[i].name + " twice");
        KD_REQUIRE(!same_section || std::string_view(t[i - 1].section) == t[i].section,
                   std::string("recipe key table: [") + t[i].section + "] is split");
      }
    return t;
  }();
  return table;
}

#undef KD_KEY

const Key* find_key(std::string_view sec, std::string_view name) {
  for (const Key& k : keys())
    if (sec == k.section && name == k.name) return &k;
  return nullptr;
}

bool is_section(std::string_view sec) {
  return std::any_of(keys().begin(), keys().end(), [&](const Key& k) { return sec == k.section; });
}

// The sections in recipe order.
std::vector<std::string> sections() {
  std::vector<std::string> out;
  for (const Key& k : keys())
    if (out.empty() || out.back() != k.section) out.push_back(k.section);
  return out;
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
  for (const auto& s : sections()) c.emplace_back(s, s);
  for (const auto& a : aliases())
    if (std::string_view(a.section).empty()) c.emplace_back(a.alias, a.target);
  return closest(word, c);
}

// The one other section that has `key`, or "" (none, or several).
std::string section_owning(std::string_view key, std::string_view except) {
  std::string owner;
  int count = 0;
  for (const auto& s : sections()) {
    if (except == s || !find_key(s, key)) continue;
    owner = s;
    ++count;
  }
  return count == 1 ? owner : "";
}

std::string unknown_key_message(const std::string& sec, std::string_view key) {
  std::string msg = "unknown key '" + std::string(key) + "' in [" + sec + "]";
  // A near match in the key's own section comes first (`warmup` in [schedule] is most likely
  // `warmup_steps`); the other section with exactly that key is named after it, or alone.
  const std::string owner = section_owning(key, sec);
  std::vector<std::pair<std::string, std::string>> c;
  for (const Key& k : keys())
    if (sec == k.section) c.emplace_back(k.name, k.name);
  for (const auto& a : aliases())
    if (a.section == sec) c.emplace_back(a.alias, a.target);
  const std::string s = closest(key, c);
  if (!s.empty()) {
    msg += "; did you mean '" + s + "'?";
    if (!owner.empty()) msg += " ([" + owner + "] has a key '" + std::string(key) + "')";
    return msg;
  }
  if (!owner.empty()) msg += "; it belongs in [" + owner + "]";
  return msg;
}

std::string unknown_section_message(std::string_view name) {
  std::string msg = "unknown section [" + std::string(name) + "]";
  const std::string s = suggest_section(name);
  if (!s.empty()) msg += "; did you mean [" + s + "]?";
  return msg;
}

// ---- overrides and structure ----------------------------------------------------------------

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
  if (!is_section(sec)) {
    diags.push_back({1, index, 0, where + unknown_section_message(sec)});
    return;
  }
  const Key* spec = find_key(sec, key);
  if (!spec) {
    diags.push_back({1, index, 0, where + unknown_key_message(sec, key)});
    return;
  }
  const std::string rhs = trim(text.substr(eq + 1));
  toml::table parsed;
  const bool bare_string = spec->bare_word && (rhs.empty() || (rhs[0] != '"' && rhs[0] != '\''));
  if (bare_string) {
    parsed.insert_or_assign("v", rhs);
  } else {
    try {
      parsed = toml::parse("v = " + rhs, std::string_view("--set"));
    } catch (const toml::parse_error&) {
      // toml++'s own description ("could not determine value type") says nothing about the key.
      const std::string type = spec->type;
      const std::string example = type == "integer"   ? "an integer, e.g. --set " + lhs + "=100"
                                  : type == "float"   ? "a number, e.g. --set " + lhs + "=0.001"
                                  : type == "boolean" ? "true or false, e.g. --set " + lhs + "=true"
                                  : type == "array of integers"
                                      ? "an array of integers, e.g. --set " + lhs + "=[0,2]"
                                      : "a string, e.g. --set " + lhs + "=\"text\"";
      diags.push_back({1, index, 0,
                       where + "cannot read '" + rhs + "' as a TOML value; [" + sec + "] " + key +
                           " expects " + example});
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
    const bool known = is_section(name);
    if (!v.is_table()) {
      std::string msg;
      if (known) {
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
    if (!known) {
      add(loc_source(k.source().begin), unknown_section_message(name));
      continue;
    }
    for (auto&& [kk, vv] : *v.as_table()) {
      if (!find_key(name, kk.str()))
        add(loc_source(kk.source().begin), unknown_key_message(name, kk.str()));
    }
  }
}

// ---- rules between keys: each runs after its section's keys are read ------------------------

void check_data(Reader& rd, Recipe& r) {
  if (rd.has("data", "val") && rd.has("data", "val_fraction"))
    rd.error("data", "val_fraction",
             "[data] val_fraction has no effect when val is given; remove one of them");
  const bool gpt2 = r.data.tokenizer == TokenizerKind::Gpt2;
  for (const char* key : {"encoder", "vocab_bpe"}) {
    if (gpt2 && !rd.has("data", key)) rd.missing("data", key, " (tokenizer = \"gpt2\" needs it)");
    if (!gpt2 && rd.has("data", key))
      rd.error("data", key,
               "[data] " + std::string(key) + " is only used with tokenizer = \"gpt2\"");
  }
  r.student.vocab_size = gpt2 ? 50257 : 256;
}

void check_student(Reader& rd, Recipe& r) {
  Recipe::Student& s = r.student;
  const char* dims[] = {"n_layer", "n_head", "n_embd", "block_size"};
  const bool init = rd.has("student", "init");
  bool any = false, all = true;
  for (const char* key : dims) {
    any = any || rd.has("student", key);
    if (init && rd.has("student", key))
      rd.error("student", key,
               "[student] " + std::string(key) +
                   " cannot be given together with init (the checkpoint's config.json "
                   "defines the model)");
  }
  if (!init && !any)
    rd.missing("student", "n_layer",
               " (give n_layer, n_head, n_embd and block_size, or init = a checkpoint)");
  for (const char* key : dims)
    if (!init && any && !rd.has("student", key)) rd.missing("student", key);
  for (int v : {s.n_layer, s.n_head, s.n_embd, s.block_size}) all = all && v > 0;
  if (!init && all && s.n_embd % s.n_head != 0)
    rd.error("student", "n_embd",
             "[student] n_embd (" + std::to_string(s.n_embd) + ") must be divisible by n_head (" +
                 std::to_string(s.n_head) + ")");
  // Layers of the teacher to start from (DistilBERT-style); checked against the teacher's
  // config.json when the trainer loads it.
  if (rd.has("student", "teacher_layers")) {
    if (!rd.has_section("teacher"))
      rd.error("student", "teacher_layers",
               "[student] teacher_layers copies layers of the teacher, but there is no [teacher] "
               "section");
    if (init)
      rd.error("student", "teacher_layers",
               "[student] teacher_layers and init are two ways to start the student; give one");
    else if (all && !s.teacher_layers.empty() && int(s.teacher_layers.size()) != s.n_layer)
      rd.error("student", "teacher_layers",
               "[student] teacher_layers lists " + std::to_string(s.teacher_layers.size()) +
                   (s.teacher_layers.size() == 1 ? " layer" : " layers") + " but n_layer = " +
                   std::to_string(s.n_layer) + "; give one teacher layer per student layer");
  }
  if (init || !all) s.n_layer = s.n_head = s.n_embd = s.block_size = 0;
}

void check_teacher(Reader& rd, Recipe& r) {
  if (rd.has_section("teacher") && !rd.has("teacher", "checkpoint"))
    rd.missing("teacher", "checkpoint");
  const std::string& tok = r.teacher.tokenizer;
  if (!tok.empty() && !parse_choice<TokenizerKind>(tok))
    rd.error("teacher", "tokenizer",
             "[teacher] tokenizer must be one of \"bytes\", \"gpt2\", got \"" + tok + "\"");
}

void check_loss(Reader& rd, Recipe& r) {
  const Recipe::Loss& l = r.loss;
  if (!rd.has_section("teacher") && l.kd_weight > 0)
    rd.error("loss", "kd_weight",
             "[loss] kd_weight is " + fmt_num(l.kd_weight) +
                 " but there is no [teacher] section; add one or set kd_weight = 0");
  if (l.ce_weight + l.kd_weight == 0)
    rd.error("loss", rd.has("loss", "kd_weight") ? "kd_weight" : "ce_weight",
             "[loss] ce_weight and kd_weight are both 0: nothing would be trained");
}

void check_train(Reader& rd, Recipe& r) {
  const int block = r.student.block_size;
  if (rd.has("train", "seq_len")) {
    if (block > 0 && r.train.seq_len > block)
      rd.error("train", "seq_len",
               "[train] seq_len must be <= [student] block_size (" + std::to_string(block) +
                   "), got " + std::to_string(r.train.seq_len));
  } else if (block == 0 && !r.student.init.empty()) {
    rd.missing("train", "seq_len", " (needed when [student] init is used)");
  }
}

void check_schedule(Reader& rd, Recipe& r) {
  const Recipe::Schedule& s = r.schedule;
  if (rd.has("schedule", "warmup_steps") && r.train.max_steps > 0 &&
      s.warmup_steps > r.train.max_steps)
    rd.error("schedule", "warmup_steps",
             "[schedule] warmup_steps must be <= [train] max_steps (" +
                 std::to_string(r.train.max_steps) + "), got " + std::to_string(s.warmup_steps));
  if (rd.has("schedule", "min_lr") && s.min_lr > r.optim.lr)
    rd.error("schedule", "min_lr",
             "[schedule] min_lr must be <= [optim] lr (" + fmt_num(r.optim.lr) + "), got " +
                 fmt_num(s.min_lr));
}

void check_profile(Reader& rd, Recipe& r) {
  const Recipe::Profile& p = r.profile;
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

struct SectionRule {
  const char* section;
  void (*check)(Reader&, Recipe&);
};
void check_checkpoint(Reader& rd, Recipe& r) {
  if (r.run.overwrite && r.checkpoint.resume)
    rd.error("run", "overwrite",
             "[run] overwrite = true deletes the previous run that [checkpoint] resume = true "
             "would continue; set only one of them");
}

const SectionRule kRules[] = {
    {"checkpoint", check_checkpoint}, {"data", check_data},      {"student", check_student},
    {"teacher", check_teacher},       {"loss", check_loss},      {"train", check_train},
    {"schedule", check_schedule},     {"profile", check_profile}};

// Every key in table order; after a section's last key, that section's rules.
void read_all(Reader& rd, Recipe& r) {
  const std::vector<Key>& table = keys();
  for (size_t i = 0; i < table.size(); ++i) {
    table[i].read(rd, r);
    if (i + 1 < table.size() && std::string_view(table[i + 1].section) == table[i].section)
      continue;
    for (const SectionRule& rule : kRules)
      if (std::string_view(rule.section) == table[i].section) rule.check(rd, r);
  }
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
  read_all(rd, r);

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
  std::string_view section;
  for (const Key& k : keys()) {
    const std::optional<std::string> v = k.write(r);
    if (!v) continue;
    if (k.section != section) {
      section = k.section;
      out += "\n[" + std::string(section) + "]\n";
    }
    out += std::string(k.name) + " = " + *v + "\n";
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
  std::vector<std::string> out;
  for (const Key& k : keys()) {
    const std::string_view sec = k.section, name = k.name;
    if ((sec == "checkpoint" && name == "resume") || (sec == "run" && name == "overwrite"))
      continue;  // how the run starts, not what it computes
    const std::optional<std::string> va = k.write(a), vb = k.write(b);
    if (va == vb) continue;
    out.push_back(std::string(k.section) + "." + k.name + ": " + va.value_or("(unset)") + " -> " +
                  vb.value_or("(unset)"));
  }
  return out;
}

std::vector<RecipeKeyDoc> recipe_keys() {
  std::vector<RecipeKeyDoc> out;
  for (const Key& k : keys())
    out.push_back({k.section, k.name, k.type, k.default_doc, k.allowed_doc, k.doc});
  return out;
}

}  // namespace kd
