#include "model/checkpoint.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2, RENAME_EXCHANGE (glibc >= 2.28)
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "engine/base/error.h"
#include "engine/io/safetensors.h"

namespace kd {

namespace {

constexpr const char* kPrefix = "transformer.";
constexpr int kEosToken = 50256;  // GPT-2's <|endoftext|>

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ',';
    s += std::to_string(shape[i]);
  }
  s += ']';
  return s;
}

// HF GPT-2 keeps the causal mask as buffers: "h.N.attn.bias" and "h.N.attn.masked_bias".
bool is_attention_buffer(std::string_view name) {
  if (!name.starts_with("h.")) return false;
  size_t i = 2;
  while (i < name.size() && name[i] >= '0' && name[i] <= '9') ++i;
  if (i == 2) return false;
  std::string_view rest = name.substr(i);
  return rest == ".attn.bias" || rest == ".attn.masked_bias";
}

}  // namespace

Json hf_config_json(const GPT2Config& cfg) {
  Json j = Json::object();
  j["model_type"] = "gpt2";
  Json arch = Json::array();
  arch.push_back("GPT2LMHeadModel");
  j["architectures"] = std::move(arch);
  j["vocab_size"] = cfg.vocab_size;
  j["n_positions"] = cfg.block_size;
  j["n_ctx"] = cfg.block_size;
  j["n_embd"] = cfg.n_embd;
  j["n_layer"] = cfg.n_layer;
  j["n_head"] = cfg.n_head;
  j["n_inner"] = nullptr;  // 4 * n_embd
  j["activation_function"] = "gelu_new";
  j["layer_norm_epsilon"] = 1e-5;
  j["resid_pdrop"] = 0.0;
  j["embd_pdrop"] = 0.0;
  j["attn_pdrop"] = 0.0;
  j["initializer_range"] = 0.02;
  j["scale_attn_weights"] = true;
  j["scale_attn_by_inverse_layer_idx"] = false;
  j["reorder_and_upcast_attn"] = false;
  j["tie_word_embeddings"] = true;
  // <|endoftext|> when the vocabulary is GPT-2's (possibly padded); no special token otherwise.
  j["bos_token_id"] = cfg.vocab_size > kEosToken ? Json(kEosToken) : Json();
  j["eos_token_id"] = cfg.vocab_size > kEosToken ? Json(kEosToken) : Json();
  j["use_cache"] = true;
  j["dtype"] = "float32";
  return j;
}

void save_model(const std::string& dir, const GPT2& m) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw std::runtime_error(dir + ": cannot create the directory (" + ec.message() + ")");

  std::vector<TensorView> views;
  for (const ParamInfo& p : m.table())
    views.push_back({kPrefix + p.name, p.shape, m.params.data() + p.offset});
  write_safetensors(dir + "/model.safetensors", views, {{"format", "pt"}});
  write_file_synced(dir + "/config.json", hf_config_json(m.config()).dump(2) + "\n");
}

GPT2Config load_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  auto fail = [&](const std::string& what) { throw InputError(path + ": " + what); };

  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot open the file (is this a checkpoint directory?)");
  std::stringstream ss;
  ss << in.rdbuf();
  Json j;
  try {
    j = Json::parse(ss.str());
  } catch (const JsonError& e) {
    fail(std::string("not valid JSON (") + e.what() + ")");
  }
  if (!j.is_object()) fail("not a JSON object");

  // A positive integer field; the first of keys present is read.
  auto get_int = [&](std::initializer_list<const char*> keys) {
    for (const char* key : keys) {
      const Json* v = j.find(key);
      if (!v) continue;
      if (!v->is_number() || v->as_number() != std::floor(v->as_number()) || v->as_number() < 1 ||
          v->as_number() > (1 << 24))
        fail(std::string("\"") + key + "\" must be a positive integer");
      return static_cast<int>(v->as_number());
    }
    throw InputError(path + ": the field \"" + *keys.begin() + "\" is missing");
  };
  auto get_bool = [&](const char* key, bool dflt) {
    const Json* v = j.find(key);
    if (!v || v->is_null()) return dflt;
    if (!v->is_bool()) fail(std::string("\"") + key + "\" must be true or false");
    return v->as_bool();
  };
  auto get_string = [&](const char* key, const char* dflt) {
    const Json* v = j.find(key);
    if (!v || v->is_null()) return std::string(dflt);
    if (!v->is_string()) fail(std::string("\"") + key + "\" must be a string");
    return v->as_string();
  };

  if (const Json* t = j.find("model_type"); t && !(t->is_string() && t->as_string() == "gpt2"))
    fail("\"model_type\" is " + t->dump() + "; kdengine runs GPT-2 models only (\"gpt2\")");

  GPT2Config cfg;
  cfg.vocab_size = get_int({"vocab_size"});
  cfg.block_size = get_int({"n_positions", "n_ctx"});
  cfg.n_embd = get_int({"n_embd"});
  cfg.n_layer = get_int({"n_layer"});
  cfg.n_head = get_int({"n_head"});
  if (cfg.n_embd % cfg.n_head != 0)
    fail("\"n_embd\" (" + std::to_string(cfg.n_embd) + ") is not a multiple of \"n_head\" (" +
         std::to_string(cfg.n_head) + ")");

  // What kdengine's GPT-2 computes; anything else would load but compute a different model.
  const std::string act = get_string("activation_function", "gelu_new");
  if (act != "gelu_new" && act != "gelu_pytorch_tanh")
    fail("\"activation_function\" is \"" + act +
         "\"; kdengine implements the tanh GELU only (\"gelu_new\" or \"gelu_pytorch_tanh\")");
  if (const Json* v = j.find("n_inner"); v && !v->is_null()) {
    if (!v->is_number() || v->as_number() != 4.0 * cfg.n_embd)
      fail("\"n_inner\" is " + v->dump() + "; kdengine's MLP width is 4 * n_embd (" +
           std::to_string(4 * cfg.n_embd) + "), give null");
  }
  if (!get_bool("tie_word_embeddings", true))
    fail("\"tie_word_embeddings\" is false; kdengine ties the LM head to wte");
  if (const Json* v = j.find("layer_norm_epsilon"); v && !v->is_null()) {
    if (!v->is_number() || std::fabs(v->as_number() - 1e-5) > 1e-12)
      fail("\"layer_norm_epsilon\" is " + v->dump() + "; kdengine's LayerNorm uses 1e-5");
  }
  if (!get_bool("scale_attn_weights", true))
    fail("\"scale_attn_weights\" is false; kdengine scales attention by 1/sqrt(head size)");
  if (get_bool("scale_attn_by_inverse_layer_idx", false))
    fail("\"scale_attn_by_inverse_layer_idx\" is true, which kdengine does not implement");
  if (get_bool("add_cross_attention", false))
    fail("\"add_cross_attention\" is true; kdengine runs decoder-only GPT-2");
  return cfg;
}

GPT2 load_model(const std::string& dir) {
  const GPT2Config cfg = load_config(dir);
  const std::string path = dir + "/model.safetensors";
  auto fail = [&](const std::string& what) { throw InputError(path + ": " + what); };
  const SafetensorsFile file(path);
  const std::vector<ParamInfo> table = gpt2_param_table(cfg);

  // Match the file's tensors to kdengine's names.
  std::map<std::string, const SafetensorsEntry*> found;
  const SafetensorsEntry* lm_head = nullptr;
  for (const SafetensorsEntry& e : file.entries()) {
    if (e.name == "lm_head.weight") {
      lm_head = &e;
      continue;
    }
    std::string_view name = e.name;
    if (name.starts_with(kPrefix)) name.remove_prefix(std::strlen(kPrefix));
    if (is_attention_buffer(name)) continue;
    bool known = false;
    for (const ParamInfo& p : table) known = known || p.name == name;
    if (!known)
      fail("unexpected tensor \"" + e.name + "\" (not a parameter of the GPT-2 in config.json)");
    if (!found.emplace(std::string(name), &e).second)
      fail("tensor \"" + std::string(name) +
           "\" is stored twice (with and without the \"transformer.\" prefix)");
  }
  // Check every shape before allocating the model.
  for (const ParamInfo& p : table) {
    auto it = found.find(p.name);
    if (it == found.end()) fail("missing tensor \"" + std::string(kPrefix) + p.name + "\"");
    if (it->second->shape != p.shape)
      fail("tensor \"" + it->second->name + "\" has shape " + shape_str(it->second->shape) +
           " but config.json needs " + shape_str(p.shape));
  }

  GPT2 m(cfg);
  for (const ParamInfo& p : table) file.read_f32(*found.at(p.name), m.params.data() + p.offset);

  if (lm_head) {
    const ParamInfo& wte = m.info("wte.weight");
    if (lm_head->shape != wte.shape)
      fail("tensor \"lm_head.weight\" has shape " + shape_str(lm_head->shape) +
           " but wte.weight has " + shape_str(wte.shape));
    std::vector<float> head(lm_head->numel());
    file.read_f32(*lm_head, head.data());
    if (std::memcmp(head.data(), m.params.data() + wte.offset, head.size() * sizeof(float)) != 0)
      fail(
          "\"lm_head.weight\" differs from wte.weight: the LM head is untied, which kdengine "
          "does not support");
  }
  return m;
}

namespace {

void fsync_path(const std::filesystem::path& p) {
  const int fd = ::open(p.c_str(), O_RDONLY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// Puts the finished directory `tmp` in place of `dir`: a plain rename when `dir` does not exist,
// else an exchange of the two names (any file type, a symbolic link included) and the removal of
// what `tmp` names afterwards. Where the file system cannot exchange, the old one is moved aside
// first (a short moment without `dir`).
void swap_in(const std::filesystem::path& tmp, const std::filesystem::path& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(dir))) {
    fs::rename(tmp, dir);
  } else if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, dir.c_str(), RENAME_EXCHANGE) == 0) {
    fs::remove_all(tmp, ec);  // now the old directory (or link)
  } else {
    const fs::path old = dir.parent_path() / (".old-" + dir.filename().string());
    fs::remove_all(old, ec);
    fs::rename(dir, old);
    fs::rename(tmp, dir);
    fs::remove_all(old, ec);
  }
  fsync_path(dir.parent_path());
}

}  // namespace

void write_dir_atomically(const std::string& dir,
                          const std::function<void(const std::string& tmp)>& fill) {
  namespace fs = std::filesystem;
  const fs::path target(dir);
  const fs::path tmp = target.parent_path() / (".tmp-" + target.filename().string());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp);
  try {
    fill(tmp.string());
    fsync_path(tmp);
    swap_in(tmp, target);
  } catch (...) {
    fs::remove_all(tmp, ec);  // never leave a half-written directory behind
    throw;
  }
}

void publish_checkpoint_copy(const std::string& src, const std::string& dst) {
  namespace fs = std::filesystem;
  write_dir_atomically(dst, [&](const std::string& tmp) {
    for (const auto& e : fs::recursive_directory_iterator(src)) {
      const fs::path to = fs::path(tmp) / fs::relative(e.path(), src);
      if (e.is_directory()) {
        fs::create_directories(to);
        continue;
      }
      std::error_code ec;
      fs::create_hard_link(e.path(), to, ec);
      if (ec) {  // a file system without hard links: a copy, made durable like the original
        fs::copy_file(e.path(), to, fs::copy_options::overwrite_existing);
        fsync_path(to);
      }
    }
  });
}

}  // namespace kd
