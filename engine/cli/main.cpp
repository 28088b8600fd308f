// The command line: kdengine train | check | eval | sample.
// Exit status (the exception policy in engine/base/error.h): 0 success, 2 bad input (recipe, data,
// checkpoint, command line), 1 anything else, 130 interrupted.
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>
#include <vector>

#include "engine/base/error.h"
#include "engine/io/recipe.h"
#include "engine/ops/cpu/threads.h"
#include "engine/train/trainer.h"

namespace {

constexpr int kOk = kd::kExitOk, kBadInput = kd::kExitBadInput, kInterrupted = kd::kExitInterrupted;

const char* kUsage =
    "kdengine: knowledge distillation for GPT-2 models\n"
    "\n"
    "usage:\n"
    "  kdengine train RECIPE.toml [--set section.key=value ...]   train (the main job)\n"
    "  kdengine check RECIPE.toml [--set section.key=value ...]   validate and plan memory\n"
    "  kdengine eval CKPT --data FILE [--teacher CKPT] [--batches N]\n"
    "  kdengine sample CKPT --prompt TEXT [--tokens N] [--temperature T] [--top-k K] [--seed S]\n"
    "  kdengine RECIPE.toml                                       shorthand for train\n"
    "\n"
    "Run `kdengine COMMAND --help` for a command's options. Exit status: 0 success, 2 bad input,\n"
    "1 other failure, 130 interrupted (a checkpoint was written).\n";

const char* kTrainHelp =
    "usage: kdengine train RECIPE.toml [--set section.key=value ...]\n"
    "\n"
    "Trains the student described by the recipe (see docs/recipes.md). Each --set overrides one "
    "key,\n"
    "e.g. --set optim.lr=3e-4 --set run.device=cpu. Ctrl-C finishes the current step, writes a\n"
    "checkpoint and exits 130; [checkpoint] resume = true continues from the newest one.\n";

const char* kCheckHelp =
    "usage: kdengine check RECIPE.toml [--set section.key=value ...]\n"
    "\n"
    "Validates the recipe (every error at once), prints the resolved recipe with all defaults, "
    "the\n"
    "parameter counts of teacher and student, and a memory plan.\n";

const char* kEvalHelp =
    "usage: kdengine eval CKPT --data FILE [--teacher CKPT] [--batches N]\n"
    "\n"
    "Held-out loss and perplexity of the checkpoint directory CKPT on FILE (a text file, a folder "
    "of\n"
    "text files or a token shard). With --teacher, also the teacher's loss and "
    "KL(teacher||student)\n"
    "at T = 1. --batches: evaluation windows of 4 x block_size tokens (default 16).\n";

const char* kSampleHelp =
    "usage: kdengine sample CKPT --prompt TEXT [--tokens N] [--temperature T] [--top-k K] [--seed "
    "S]\n"
    "\n"
    "Generates N tokens (default 200) after TEXT. --temperature 0 is greedy (default 0.8); --top-k "
    "0\n"
    "keeps every token (default 40); --seed (default 1).\n";

volatile std::sig_atomic_t g_interrupts = 0;

void on_sigint(int) {
  g_interrupts = g_interrupts + 1;
  kd::interrupt_flag().store(true);
  if (g_interrupts >= 2) std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C stops at once
}

bool has_help(const std::vector<std::string>& args) {
  for (const auto& a : args)
    if (a == "--help" || a == "-h") return true;
  return false;
}

// Splits `RECIPE [--set k=v]...` into the recipe path and the overrides.
void parse_recipe_args(const std::vector<std::string>& args, std::string& recipe,
                       std::vector<std::string>& sets) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--set") {
      if (i + 1 >= args.size()) throw kd::InputError("--set needs section.key=value");
      sets.push_back(args[++i]);
    } else if (a.rfind("--set=", 0) == 0) {
      sets.push_back(a.substr(6));
    } else if (a.rfind("--", 0) == 0) {
      throw kd::InputError("unknown option '" + a + "'");
    } else if (recipe.empty()) {
      recipe = a;
    } else {
      throw kd::InputError("unexpected argument '" + a + "' (one recipe at a time)");
    }
  }
  if (recipe.empty()) throw kd::InputError("missing RECIPE.toml");
}

// --name value options for eval and sample.
struct Options {
  std::string positional;
  std::vector<std::pair<std::string, std::string>> kv;
  std::string get(const std::string& k, const std::string& d) const {
    for (const auto& [a, b] : kv)
      if (a == k) return b;
    return d;
  }
};

Options parse_options(const std::vector<std::string>& args, const std::vector<std::string>& known) {
  Options o;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) == 0) {
      bool ok = false;
      for (const auto& k : known) ok |= (a == k);
      if (!ok) throw kd::InputError("unknown option '" + a + "'");
      if (i + 1 >= args.size()) throw kd::InputError("option " + a + " needs a value");
      o.kv.emplace_back(a, args[++i]);
    } else if (o.positional.empty()) {
      o.positional = a;
    } else {
      throw kd::InputError("unexpected argument '" + a + "'");
    }
  }
  return o;
}

double to_number(const std::string& opt, const std::string& s) {
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0')
    throw kd::InputError("option " + opt + ": expected a number, got '" + s + "'");
  return v;
}

int run(const std::string& cmd, const std::vector<std::string>& args) {
  if (cmd == "train") {
    if (has_help(args)) return std::cout << kTrainHelp, kOk;
    std::string path;
    std::vector<std::string> sets;
    parse_recipe_args(args, path, sets);
    kd::Recipe r = kd::load_recipe(path, sets);
    std::signal(SIGINT, on_sigint);
    kd::TrainSummary s = kd::train(r, std::cout);
    return s.interrupted ? kInterrupted : kOk;
  }
  if (cmd == "check") {
    if (has_help(args)) return std::cout << kCheckHelp, kOk;
    std::string path;
    std::vector<std::string> sets;
    parse_recipe_args(args, path, sets);
    kd::Recipe r = kd::load_recipe(path, sets);
    kd::print_check(r, std::cout);
    std::cout << "recipe OK\n";
    return kOk;
  }
  if (cmd == "eval") {
    if (has_help(args)) return std::cout << kEvalHelp, kOk;
    Options o = parse_options(args, {"--data", "--teacher", "--batches"});
    if (o.positional.empty()) throw kd::InputError("eval: missing CKPT");
    const std::string data = o.get("--data", "");
    if (data.empty()) throw kd::InputError("eval: missing --data FILE");
    kd::evaluate_checkpoint(o.positional, data, o.get("--teacher", ""),
                            int(to_number("--batches", o.get("--batches", "16"))), std::cout);
    return kOk;
  }
  if (cmd == "sample") {
    if (has_help(args)) return std::cout << kSampleHelp, kOk;
    Options o = parse_options(args, {"--prompt", "--tokens", "--temperature", "--top-k", "--seed"});
    if (o.positional.empty()) throw kd::InputError("sample: missing CKPT");
    const int n = int(to_number("--tokens", o.get("--tokens", "200")));
    if (n < 0) throw kd::InputError("option --tokens: expected >= 0");
    std::cout << kd::sample_text(o.positional, o.get("--prompt", ""), n,
                                 to_number("--temperature", o.get("--temperature", "0.8")),
                                 int(to_number("--top-k", o.get("--top-k", "40"))),
                                 uint64_t(to_number("--seed", o.get("--seed", "1"))))
              << "\n";
    return kOk;
  }
  throw kd::InputError("unknown command '" + cmd + "' (try kdengine --help)");
}

}  // namespace

int main(int argc, char** argv) {
  kd::cpu::ensure_thread_environment(argv);  // may restart the program once (threads.h)
  std::vector<std::string> args(argv + 1, argv + argc);
  if (args.empty() || args[0] == "--help" || args[0] == "-h" || args[0] == "help") {
    std::cout << kUsage;
    return args.empty() ? kBadInput : kOk;
  }
  std::string cmd = args[0];
  args.erase(args.begin());
  if (cmd.size() > 5 && cmd.ends_with(".toml")) {  // kdengine RECIPE.toml
    args.insert(args.begin(), cmd);
    cmd = "train";
  }
  try {
    return run(cmd, args);
  } catch (...) {
    return kd::report_error(std::cerr);  // the exception policy: engine/base/error.h
  }
}
