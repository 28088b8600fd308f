// The tokenizer of a checkpoint, in the checkpoint: written in HF's own files so that
// transformers.AutoTokenizer.from_pretrained(dir) loads it, read back so that a checkpoint folder
// is complete on its own wherever it is copied, and compared between teacher and student so that a
// teacher that speaks another tokenizer is refused. See docs/checkpoints.md.
//
// Files (every one written by save_tokenizer_files, fsynced):
//   kdengine_tokenizer.json   kdengine's own record: kind ("gpt2" | "bytes"), vocab_size,
//   vocab_hash vocab.json, merges.txt    GPT-2 BPE only: the vocabulary and merges, HF's
//   GPT2Tokenizer files tokenizer_config.json     GPT-2 BPE only: HF's tokenizer settings (class,
//   special tokens, ...) special_tokens_map.json   GPT-2 BPE only: <|endoftext|> as bos/eos/unk
#pragma once

#include <iosfwd>
#include <memory>
#include <string>

#include "engine/io/recipe.h"
#include "engine/io/tokenizer.h"

namespace kd {

// kdengine's record of the tokenizer: never one of HF's file names.
inline constexpr const char* kTokenizerRecord = "kdengine_tokenizer.json";

// "gpt2" or "bytes": the recipe's spelling of the tokenizer's kind.
std::string tokenizer_kind(const Tokenizer& tok);

// For messages: `GPT-2 BPE (50257 tokens, hash 0123456789abcdef)`, `bytes (256 byte values)`.
std::string describe_tokenizer(const Tokenizer& tok);

// Writes tok's files into dir (see above). model_max_length goes to tokenizer_config.json (the
// model's block size). Throws std::runtime_error on a write failure.
void save_tokenizer_files(const std::string& dir, const Tokenizer& tok, int model_max_length);

// What a checkpoint directory says about its tokenizer, read in this order:
//   1. kdengine_tokenizer.json: "bytes", or "gpt2" read from vocab.json + merges.txt (checked
//      against the recorded hash);
//   2. vocab.json + merges.txt (an HF GPT-2 checkpoint);
//   3. tokenizer.json: HF's tokenizers file (a byte-level BPE), or kdengine's old record (kind and
//      the absolute paths of encoder.json and vocab.bpe: the layout before the tokenizer moved into
//      the checkpoint), which prints a note once per directory to `note`.
// tok is null when the checkpoint carries none. Throws InputError naming the file for a tokenizer
// file that is broken or is not a GPT-2 byte-level BPE, and for an old record whose files are gone.
struct CheckpointTokenizer {
  std::unique_ptr<Tokenizer> tok;
  std::string source;  // the file(s) it was read from, for messages
};
CheckpointTokenizer load_checkpoint_tokenizer(const std::string& dir, std::ostream& note);

// The tokenizer of a checkpoint that must carry one (eval, sample); throws InputError saying how
// to give it one when it carries none, and when it has more tokens than the model's vocab_size.
std::unique_ptr<Tokenizer> require_checkpoint_tokenizer(const std::string& dir, int model_vocab,
                                                        std::ostream& note);

// Throws InputError (exit 2) unless both are the same tokenizer (kind and vocab_hash), naming both
// sides and both tokenizers.
void check_same_tokenizer(const Tokenizer& teacher, const std::string& teacher_name,
                          const Tokenizer& student, const std::string& student_name);

// `kdengine eval CKPT --teacher TEACHER`: the teacher's tokenizer must be the student's. A teacher
// that carries none is an error that says how to give it one.
void check_eval_teacher_tokenizer(const std::string& teacher_dir, const Tokenizer& student,
                                  const std::string& student_dir, std::ostream& note);

// train and check: the run's tokenizer (from [data]) against the tokenizers of [student] init and
// [teacher] checkpoint. A [student] init without a tokenizer takes the run's (a note says so); a
// teacher without one needs `[teacher] tokenizer` in the recipe, which must then name the run's
// kind. Throws InputError naming the recipe keys, both checkpoints and both tokenizers.
void check_recipe_tokenizers(const Recipe& r, const Tokenizer& run_tok, std::ostream& note);

}  // namespace kd
