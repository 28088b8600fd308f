// The distillation trainer: a recipe in, a distilled student out. Every optimizer step draws
// grad_accum micro-batches, runs the frozen teacher forward on the same tokens, and trains the
// student on ce_weight·CE + kd_weight·s(T)·D(p_T, q_T) normalised by the supervised tokens of the
// whole step.
//
// out_dir holds: step_NNNNNN/ checkpoints (model.safetensors + config.json loadable by HF
// transformers, optimizer.safetensors, trainer_state.json, the tokenizer's files: see
// docs/checkpoints.md), `final` (a directory of hard links to the last checkpoint's files),
// log.jsonl (one JSON object per logged step and per evaluation), TensorBoard event files under
// tb/, and the profiler's profile.json and trace.json when [profile] is enabled.
#pragma once

#include <atomic>
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <string>
#include <vector>

#include "engine/io/recipe.h"
#include "model/gpt2.h"

namespace kd {

struct TrainSummary {
  int64_t steps_done = 0;       // optimizer steps completed (including resumed ones)
  double best_val_loss = 0;     // lowest student held-out loss seen (NaN when never evaluated)
  double final_val_loss = 0;    // held-out loss after the last step
  double teacher_val_loss = 0;  // NaN without a teacher
  int64_t tokens_seen = 0;
  double wall_seconds = 0;
  bool interrupted = false;     // stopped by SIGINT after writing a checkpoint
  std::string last_checkpoint;  // directory of the newest checkpoint
};

// Runs the recipe. Progress goes to `out`. Throws InputError for bad input (data, checkpoints,
// contradictions found only when files are opened) and std::runtime_error for failures during the
// run (a NaN loss, a write that fails); neither damages existing checkpoints.
TrainSummary train(const Recipe& recipe, std::ostream& out);

// Set by the SIGINT handler that the command line installs; the trainer finishes the current step,
// writes a checkpoint and returns with interrupted = true.
std::atomic<bool>& interrupt_flag();

// The learning rate at optimizer step `step` (0-based): linear warmup from lr/warmup to lr over
// warmup_steps, then cosine, linear or constant decay to min_lr at max_steps.
double learning_rate(const Recipe& r, int64_t step);

// Newest complete checkpoint directory under out_dir ("" when none).
std::string latest_checkpoint(const std::string& out_dir);

// What `kdengine check` prints: the resolved recipe, parameter counts and a memory plan.
void print_check(const Recipe& recipe, std::ostream& out);

// Held-out loss of a checkpoint on a data file: `kdengine eval`.
struct EvalResult {
  double loss = 0, perplexity = 0;
  double teacher_loss = 0,
         kl = 0;  // with a teacher: its loss and KL(p_teacher || q_student), T = 1
  int64_t tokens = 0;
};
// Notes (an old checkpoint layout) go to out; the caller prints the results.
EvalResult evaluate_checkpoint(const std::string& ckpt, const std::string& data,
                               const std::string& teacher_ckpt, int batches, std::ostream& out);

// The held-out tokens the trainer evaluates on for recipe r ([data] val, or the val_fraction split
// of [data] train), tokenized with the recipe's tokenizer. Throws InputError for bad data.
std::vector<uint16_t> held_out_tokens(const Recipe& r);

// The trainer's evaluation of `student` on `batches` fixed windows of B x T tokens of `tokens`
// (BatchSampler::eval_batch): mean CE, and with a teacher the teacher's CE and
// KL(p_teacher || q_student) at `temperature`. With the recipe's B, T, eval_batches and
// temperature it gives the numbers of the trainer's eval records. With ranks > 1 it evaluates
// only the share of rank `rank` (batches rank, rank + ranks, ...), the split the trainer uses at
// several ranks before it adds the sums over the ranks.
EvalResult evaluate_model(GPT2& student, const GPT2* teacher, const std::vector<uint16_t>& tokens,
                          int B, int T, int batches, float temperature, int rank = 0,
                          int ranks = 1);

// The build this process runs (version, commit, CUDA), which every rank of a data-parallel job
// must share: train() compares it across the ranks at start and refuses a job whose ranks run
// different builds. kdengine's main sets it; unset, it is the empty string.
void set_build_identity(std::string id);

// Text from a checkpoint: `kdengine sample`.
std::string sample_text(const std::string& ckpt, const std::string& prompt, int tokens,
                        double temperature, int top_k, uint64_t seed);

}  // namespace kd
