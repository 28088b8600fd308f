#include "engine/train/eval.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <memory>
#include <ostream>
#include <sstream>

#include "engine/base/error.h"
#include "engine/io/data.h"
#include "engine/io/recipe.h"
#include "engine/train/trainer.h"
#include "model/checkpoint.h"
#include "model/checkpoint_tokenizer.h"

namespace kd {

namespace {

struct EvalArgs {
  std::vector<std::string> checkpoints;
  std::string data, recipe, teacher;
  int batches = 0;  // 0: the default; -1: every window of the held-out data once
};

EvalArgs parse(const std::vector<std::string>& args) {
  EvalArgs a;
  std::string batches;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& s = args[i];
    if (s.rfind("--", 0) != 0) {
      a.checkpoints.push_back(s);
      continue;
    }
    std::string* dst = s == "--data"      ? &a.data
                       : s == "--recipe"  ? &a.recipe
                       : s == "--teacher" ? &a.teacher
                       : s == "--batches" ? &batches
                                          : nullptr;
    if (!dst) throw InputError("eval: unknown option '" + s + "' (see kdengine eval --help)");
    if (i + 1 >= args.size()) throw InputError("eval: option " + s + " needs a value");
    *dst = args[++i];
  }
  if (a.checkpoints.empty())
    throw InputError("eval: missing CKPT (one or more checkpoint folders)");
  if (a.data.empty() == a.recipe.empty())
    throw InputError(a.data.empty()
                         ? "eval: give --recipe RECIPE.toml (its held-out split) or --data FILE"
                         : "eval: --recipe and --data exclude each other; give one");
  if (!batches.empty()) {
    if (batches == "all") {
      a.batches = -1;
    } else {
      char* end = nullptr;
      const long v = std::strtol(batches.c_str(), &end, 10);
      if (*end != '\0' || v < 1 || v > INT_MAX)
        throw InputError("eval: option --batches: expected an integer >= 1 or 'all', got '" +
                         batches + "'");
      a.batches = int(v);
    }
  }
  return a;
}

struct Row {
  std::string name;
  EvalResult r;
  bool teacher = false;
};

std::string fixed(double v, int width) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%*.4f", width, v);
  return buf;
}

void print_table(const std::vector<Row>& rows, bool with_kl, std::ostream& out) {
  size_t w = 5;
  for (const Row& row : rows) w = std::max(w, row.name.size() + (row.teacher ? 10 : 0));
  auto pad = [&](std::string s) {
    s.resize(std::max(s.size(), w), ' ');
    return s;
  };
  out << pad("model") << "      loss  perplexity";
  if (with_kl) out << "  KL(teacher||student)";
  out << "    tokens\n";
  for (const Row& row : rows) {
    out << pad((row.teacher ? "(teacher) " : "") + row.name) << fixed(row.r.loss, 10)
        << fixed(row.r.perplexity, 12);
    if (with_kl) out << (row.teacher ? std::string(22, ' ') : fixed(row.r.kl, 22));
    out << std::string(10 - std::min<size_t>(10, std::to_string(row.r.tokens).size()), ' ')
        << row.r.tokens << "\n";
  }
}

void eval_recipe(const EvalArgs& a, std::ostream& out) {
  const Recipe r = load_recipe(a.recipe);
  const std::vector<uint16_t> tokens = held_out_tokens(r);
  const std::string teacher_path = a.teacher.empty() ? r.teacher.checkpoint : a.teacher;
  std::unique_ptr<GPT2> teacher;
  if (!teacher_path.empty()) teacher = std::make_unique<GPT2>(load_model(teacher_path));
  const int B = r.train.micro_batch;
  std::vector<GPT2> models;
  int T = r.train.seq_len;
  for (const std::string& c : a.checkpoints) {
    models.push_back(load_model(c));
    const GPT2Config& mc = models.back().config();
    if (mc.vocab_size < r.student.vocab_size)
      throw InputError(c + ": vocabulary " + std::to_string(mc.vocab_size) + " is smaller than " +
                       a.recipe + "'s tokenizer's " + std::to_string(r.student.vocab_size));
    if (T <= 0) T = mc.block_size;  // [student] init recipes always give seq_len; kept for safety
    if (T > mc.block_size)
      throw InputError(c + ": block_size " + std::to_string(mc.block_size) + " is shorter than " +
                       a.recipe + "'s seq_len " + std::to_string(T));
  }
  if (teacher) {
    // The teacher must speak each checkpoint's tokenizer (a padded vocabulary is fine).
    for (size_t i = 0; i < models.size(); ++i) {
      const auto tok =
          require_checkpoint_tokenizer(a.checkpoints[i], models[i].config().vocab_size, out);
      check_eval_teacher_tokenizer(teacher_path, *tok, a.checkpoints[i], out);
    }
    const GPT2Config& tc = teacher->config();
    if (tc.vocab_size < models.front().config().vocab_size)
      throw InputError(teacher_path + ": teacher vocabulary " + std::to_string(tc.vocab_size) +
                       " is smaller than the student's " +
                       std::to_string(models.front().config().vocab_size));
    if (T > tc.block_size)
      throw InputError(teacher_path + ": block_size " + std::to_string(tc.block_size) +
                       " is shorter than seq_len " + std::to_string(T));
  }
  if (tokens.size() < size_t(T) + 1)
    throw InputError(a.recipe + ": the held-out split has " + std::to_string(tokens.size()) +
                     " tokens, fewer than one window of seq_len + 1 = " + std::to_string(T + 1));
  const BatchSampler sampler({}, tokens, 0);
  const int all = sampler.eval_batch_count(B, T);
  const int batches = a.batches < 0 ? all : a.batches > 0 ? a.batches : r.train.eval_batches;
  const float temperature = float(r.loss.temperature);
  out << "held-out data: the validation split of " << a.recipe << " (" << tokens.size()
      << " tokens); " << batches << " batches of " << B << " x " << T << " tokens"
      << (a.batches == 0 ? " ([train] eval_batches, as in training)" : "")
      << (batches >= all ? ", every window once" : "") << "\n";
  if (teacher) out << "KL at the recipe's temperature T = " << r.loss.temperature << "\n";
  std::vector<Row> rows;
  for (size_t i = 0; i < models.size(); ++i)
    rows.push_back({a.checkpoints[i],
                    evaluate_model(models[i], teacher.get(), tokens, B, T, batches, temperature),
                    false});
  if (teacher) {
    EvalResult t = rows.front().r;
    t.loss = t.teacher_loss;
    t.perplexity = std::exp(t.loss);
    rows.push_back({teacher_path, t, true});
  }
  print_table(rows, teacher != nullptr, out);
}

void eval_data(const EvalArgs& a, std::ostream& out) {
  const int batches = a.batches < 0 ? INT_MAX : a.batches > 0 ? a.batches : 16;
  out << "held-out data: " << a.data << "; windows of 4 x block_size tokens, "
      << (a.batches < 0 ? std::string("every window once") : std::to_string(batches) + " batches")
      << "\n";
  std::vector<Row> rows;
  for (const std::string& c : a.checkpoints)  // notes (an old checkpoint layout) go to out
    rows.push_back({c, evaluate_checkpoint(c, a.data, a.teacher, batches, out), false});
  if (!a.teacher.empty()) out << "KL at T = 1\n";
  if (!a.teacher.empty()) {
    EvalResult t = rows.front().r;
    t.loss = t.teacher_loss;
    t.perplexity = std::exp(t.loss);
    rows.push_back({a.teacher, t, true});
  }
  print_table(rows, !a.teacher.empty(), out);
}

}  // namespace

void eval_command(const std::vector<std::string>& args, std::ostream& out) {
  const EvalArgs a = parse(args);
  if (!a.recipe.empty())
    eval_recipe(a, out);
  else
    eval_data(a, out);
}

}  // namespace kd
