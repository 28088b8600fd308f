// GPT-2 checkpoints in the Hugging Face layout: a directory with config.json (HF GPT2Config fields)
// and model.safetensors. A directory written by save_model loads with
// transformers.GPT2LMHeadModel.from_pretrained(dir) with no missing or unexpected keys, and
// load_model reads checkpoints saved by transformers (fp32, fp16 or bf16). See docs/checkpoints.md.
#pragma once

#include <functional>
#include <string>

#include "engine/base/json.h"
#include "model/gpt2.h"

namespace kd {

// Writes dir/model.safetensors (F32, tensor names "transformer.<kdengine name>", metadata
// {"format": "pt"}; the LM head is tied to wte and not stored) and dir/config.json. Creates dir
// when missing; overwrites both files. Each file is fsynced. Throws std::runtime_error on a write
// failure.
void save_model(const std::string& dir, const GPT2& m);

// The HF config.json content that save_model writes for cfg.
Json hf_config_json(const GPT2Config& cfg);

// Reads dir/config.json. Throws InputError naming the file for a missing or invalid field and for
// configurations kdengine cannot run (another activation than gelu_new/gelu_pytorch_tanh, n_inner
// other than null or 4*n_embd, an untied LM head, layer_norm_epsilon other than 1e-5, attention
// scaling variants, cross-attention).
GPT2Config load_config(const std::string& dir);

// Reads dir/config.json and dir/model.safetensors into a new model. Tensors may be F32, F16 or
// BF16 and named with or without the "transformer." prefix; HF's attention buffers
// ("h.N.attn.bias", "h.N.attn.masked_bias") are ignored; "lm_head.weight" is accepted only when it
// equals wte.weight. Throws InputError naming the file and the tensor for a missing, duplicated,
// unexpected or wrongly shaped tensor.
GPT2 load_model(const std::string& dir);

// Writes the directory `dir` as a whole: fill(tmp) writes its files into a fresh sibling
// ".tmp-<name>" (fsyncing each), which is then fsynced and renamed to `dir`. An older `dir` is
// swapped out in the same rename (renameat2 RENAME_EXCHANGE) and then removed, so at every instant
// `dir` is either the old complete directory or the new complete one. On any failure the temporary
// directory is removed and the error rethrown.
void write_dir_atomically(const std::string& dir,
                          const std::function<void(const std::string& tmp)>& fill);

// Makes `dst` (a run's `final`) a real directory holding the files of the checkpoint `src`:
// hard links to them (copies where the file system refuses links), built in ".tmp-<name>" and
// swapped in by write_dir_atomically's rule. It replaces an older `dst`, a symbolic link to a
// checkpoint included (the layout before), and `cp -r dst elsewhere` copies a complete checkpoint.
void publish_checkpoint_copy(const std::string& src, const std::string& dst);

}  // namespace kd
