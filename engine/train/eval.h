// `kdengine eval`: held-out losses of one or more checkpoints, in one table.
//
//   kdengine eval CKPT [CKPT ...] --recipe RECIPE.toml [--teacher CKPT] [--batches N|all]
//   kdengine eval CKPT [CKPT ...] --data FILE [--teacher CKPT] [--batches N|all]
//
// With --recipe the data is exactly the recipe's held-out split, evaluated as the trainer does
// (micro_batch x seq_len windows, eval_batches of them unless --batches says otherwise, KL at the
// recipe's temperature, the recipe's teacher unless --teacher names another), so the numbers are
// those of the training log's eval records. With --data the file is evaluated in windows of
// 4 x block_size tokens (16 batches by default) with KL at T = 1.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

namespace kd {

// Parses the arguments after `eval` and prints the table to `out`. Throws InputError for bad
// arguments, recipes, data or checkpoints.
void eval_command(const std::vector<std::string>& args, std::ostream& out);

}  // namespace kd
