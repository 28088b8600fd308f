// A run's output folder (out_dir) before training starts. A fresh run (resume = false) into a
// folder that already holds another run's outputs (checkpoints, log.jsonl, TensorBoard files, ...)
// is refused, because the two runs would mix: old checkpoints beside new ones, a second TensorBoard
// event file, and a later resume continuing the old run. [run] overwrite = true (kdengine train
// --overwrite) removes the old run first; [checkpoint] resume = true continues it.
#pragma once

#include <iosfwd>
#include <string>
#include <vector>

#include "engine/io/recipe.h"

namespace kd {

// The names (not paths) of the entries of out_dir that a previous run left: step_* checkpoints
// (complete or half-written), `final`, log.jsonl, summary.json, tb/, the profiler's files.
// Sorted; empty when out_dir does not exist or holds none of them. The token cache (cache/) and
// files the trainer never writes are not listed: they are neither refused nor removed.
std::vector<std::string> previous_run_entries(const std::string& out_dir);

// Called before anything is loaded: throws InputError (exit 2) when a fresh run without
// [run] overwrite would start in a folder that holds a previous run, saying what to do.
void check_out_dir(const Recipe& r);

// Called once the run's inputs are loaded: with [run] overwrite = true (and resume = false),
// removes the previous run's entries and says so on `out`. Throws InputError when one cannot be
// removed.
void remove_previous_run(const Recipe& r, std::ostream& out);

}  // namespace kd
