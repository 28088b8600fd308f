// GPT-2 checkpoints: save/load round trips, the HF naming variants, F16/BF16 checkpoints, and the
// errors for checkpoints kdengine cannot run.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "engine/base/error.h"
#include "engine/io/safetensors.h"
#include "model/checkpoint.h"

namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path =
        fs::temp_directory_path() / ("kd_ckpt_" + std::to_string(::getpid()) + "_" + info->name());
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string sub(const std::string& name) const { return (path / name).string(); }
};

kd::GPT2Config small_config() {
  kd::GPT2Config cfg;
  cfg.n_layer = 2;
  cfg.n_head = 2;
  cfg.n_embd = 8;
  cfg.vocab_size = 37;
  cfg.block_size = 6;
  return cfg;
}

// A model whose every parameter (LayerNorm and biases included) is random.
kd::GPT2 random_model(const kd::GPT2Config& cfg, unsigned seed) {
  kd::GPT2 m(cfg);
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, 0.5f);
  for (float& p : m.params) p = dist(rng);
  return m;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// The model's tensors as views, named prefix + kdengine name.
std::vector<kd::TensorView> views(const kd::GPT2& m, const std::string& prefix) {
  std::vector<kd::TensorView> v;
  for (const auto& p : m.table())
    v.push_back({prefix + p.name, p.shape, m.params.data() + p.offset});
  return v;
}

// A checkpoint directory with the given tensors and config.json from the config.
void write_checkpoint(const std::string& dir, const kd::GPT2Config& cfg,
                      const std::vector<kd::TensorView>& tensors) {
  fs::create_directories(dir);
  kd::write_safetensors(dir + "/model.safetensors", tensors, {{"format", "pt"}});
  write_text(dir + "/config.json", kd::hf_config_json(cfg).dump(2));
}

template <class F>
void expect_input_error(F&& f, const std::string& path, const std::string& problem) {
  try {
    f();
    ADD_FAILURE() << "no error; expected: " << problem;
  } catch (const kd::InputError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(problem), std::string::npos) << msg << "\n  expected: " << problem;
  }
}

void expect_same_params(const kd::GPT2& a, const kd::GPT2& b) {
  ASSERT_EQ(a.config(), b.config());
  ASSERT_EQ(a.params.size(), b.params.size());
  EXPECT_EQ(std::memcmp(a.params.data(), b.params.data(), a.params.size() * sizeof(float)), 0);
}

// Decodes binary16 independently of the engine: (-1)^s 2^(e-15) (1 + m/1024).
float decode_half(uint16_t h) {
  const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
  double v = e == 0 ? std::ldexp(m / 1024.0, -14) : std::ldexp(1.0 + m / 1024.0, e - 15);
  return static_cast<float>(s ? -v : v);
}

}  // namespace

TEST(Checkpoint, SaveLoadRoundTripIsBitwise) {
  TempDir dir;
  const kd::GPT2 m = random_model(small_config(), 1);
  const std::string ckpt = dir.sub("ckpt");
  kd::save_model(ckpt, m);
  const kd::GPT2 back = kd::load_model(ckpt);
  expect_same_params(back, m);

  // The HF layout: prefixed names, no lm_head (tied), metadata format pt.
  kd::SafetensorsFile f(ckpt + "/model.safetensors");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.entries().size(), m.table().size());
  EXPECT_EQ(f.find("lm_head.weight"), nullptr);
  for (const auto& p : m.table()) {
    const auto* e = f.find("transformer." + p.name);
    ASSERT_NE(e, nullptr) << p.name;
    EXPECT_EQ(e->dtype, "F32");
    EXPECT_EQ(e->shape, p.shape);
  }
  const kd::Json cfg = kd::Json::parse(read_text(ckpt + "/config.json"));
  EXPECT_EQ(cfg.at("model_type").as_string(), "gpt2");
  EXPECT_EQ(cfg.at("architectures").items().at(0).as_string(), "GPT2LMHeadModel");
  EXPECT_EQ(cfg.at("n_positions").as_int(), 6);
  EXPECT_EQ(cfg.at("n_embd").as_int(), 8);
  EXPECT_TRUE(cfg.at("n_inner").is_null());
  EXPECT_EQ(cfg.at("activation_function").as_string(), "gelu_new");
  EXPECT_TRUE(cfg.at("tie_word_embeddings").as_bool());
  EXPECT_TRUE(cfg.at("eos_token_id").is_null());  // 37 tokens: no <|endoftext|>

  // Saving over an existing checkpoint replaces it.
  const kd::GPT2 other = random_model(small_config(), 2);
  kd::save_model(ckpt, other);
  expect_same_params(kd::load_model(ckpt), other);
}

TEST(Checkpoint, GPT2VocabularyGetsEndOfTextTokens) {
  kd::GPT2Config cfg = small_config();
  cfg.vocab_size = 50257;
  const kd::Json j = kd::hf_config_json(cfg);
  EXPECT_EQ(j.at("bos_token_id").as_int(), 50256);
  EXPECT_EQ(j.at("eos_token_id").as_int(), 50256);
}

// The variants HF checkpoints come in: no "transformer." prefix, attention buffers, a tied lm_head.
TEST(Checkpoint, LoadsHFNamingVariants) {
  TempDir dir;
  const kd::GPT2Config cfg = small_config();
  const kd::GPT2 m = random_model(cfg, 3);
  const std::string ckpt = dir.sub("hf");
  const int64_t P = cfg.block_size;
  std::vector<float> mask(P * P, 1.0f), masked_bias(1, -1e4f);
  auto tensors = views(m, "");
  for (int l = 0; l < cfg.n_layer; ++l) {
    const std::string h = "h." + std::to_string(l) + ".attn.";
    tensors.push_back({h + "bias", {1, 1, P, P}, mask.data()});
    tensors.push_back({h + "masked_bias", {}, masked_bias.data()});
  }
  tensors.push_back({"lm_head.weight", m.info("wte.weight").shape, m.param("wte.weight")});
  write_checkpoint(ckpt, cfg, tensors);
  expect_same_params(kd::load_model(ckpt), m);
}

TEST(Checkpoint, UntiedLMHeadIsRejected) {
  TempDir dir;
  const kd::GPT2Config cfg = small_config();
  const kd::GPT2 m = random_model(cfg, 4);
  const auto& wte = m.info("wte.weight");
  std::vector<float> head(m.param("wte.weight"), m.param("wte.weight") + wte.numel);
  head[17] += 1e-3f;
  auto tensors = views(m, "transformer.");
  tensors.push_back({"lm_head.weight", wte.shape, head.data()});
  const std::string ckpt = dir.sub("untied");
  write_checkpoint(ckpt, cfg, tensors);
  expect_input_error([&] { kd::load_model(ckpt); }, ckpt + "/model.safetensors",
                     "\"lm_head.weight\" differs from wte.weight");
}

// F16 and BF16 checkpoints assembled byte by byte: each parameter is a random bit pattern.
TEST(Checkpoint, LoadsHalfPrecisionCheckpoints) {
  TempDir dir;
  const kd::GPT2Config cfg = small_config();
  const auto table = kd::gpt2_param_table(cfg);
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> sign(0, 1), exp_f16(5, 20), exp_bf16(110, 135), mant(0, 1023);

  for (const std::string dtype : {"F16", "BF16"}) {
    kd::Json header = kd::Json::object();
    std::string data;
    std::vector<float> want;
    for (const auto& p : table) {
      kd::Json e = kd::Json::object();
      e["dtype"] = dtype;
      kd::Json shape = kd::Json::array();
      for (int64_t d : p.shape) shape.push_back(kd::Json(d));
      e["shape"] = std::move(shape);
      kd::Json offsets = kd::Json::array();
      offsets.push_back(kd::Json(static_cast<uint64_t>(data.size())));
      for (size_t i = 0; i < p.numel; ++i) {
        uint16_t h;
        if (dtype == "F16") {
          h = static_cast<uint16_t>(sign(rng) << 15 | exp_f16(rng) << 10 | mant(rng));
          want.push_back(decode_half(h));
        } else {
          h = static_cast<uint16_t>(sign(rng) << 15 | exp_bf16(rng) << 7 | (mant(rng) & 127));
          uint32_t bits = static_cast<uint32_t>(h) << 16;  // bf16 is a float's top half
          float f;
          std::memcpy(&f, &bits, 4);
          want.push_back(f);
        }
        data.append(reinterpret_cast<const char*>(&h), 2);
      }
      offsets.push_back(kd::Json(static_cast<uint64_t>(data.size())));
      e["data_offsets"] = std::move(offsets);
      header["transformer." + p.name] = std::move(e);
    }
    std::string text = header.dump();
    std::string file(8, '\0');
    for (int i = 0; i < 8; ++i) file[i] = static_cast<char>((text.size() >> (8 * i)) & 0xff);
    const std::string ckpt = dir.sub(dtype);
    fs::create_directories(ckpt);
    write_text(ckpt + "/model.safetensors", file + text + data);
    write_text(ckpt + "/config.json", kd::hf_config_json(cfg).dump());

    const kd::GPT2 m = kd::load_model(ckpt);
    ASSERT_EQ(m.params.size(), want.size());
    EXPECT_EQ(std::memcmp(m.params.data(), want.data(), want.size() * sizeof(float)), 0) << dtype;
  }
}

// The checkpoint transformers wrote in tools/make_reference.py.
TEST(Checkpoint, LoadsTheTransformersFixture) {
  const std::string ckpt = std::string(KD_SOURCE_DIR) + "/tests/fixtures/gpt2_tiny";
  const kd::GPT2Config cfg = kd::load_config(ckpt);
  EXPECT_EQ(cfg.vocab_size, 317);
  EXPECT_EQ(cfg.block_size, 32);
  EXPECT_EQ(cfg.n_embd, 48);
  EXPECT_EQ(cfg.n_layer, 2);
  EXPECT_EQ(cfg.n_head, 4);
  const kd::GPT2 m = kd::load_model(ckpt);
  kd::SafetensorsFile f(ckpt + "/model.safetensors");
  for (const auto& p : m.table()) {
    std::vector<float> want = f.read_f32("transformer." + p.name);
    ASSERT_EQ(want.size(), p.numel);
    EXPECT_EQ(std::memcmp(m.params.data() + p.offset, want.data(), p.numel * 4), 0) << p.name;
  }
}

TEST(Checkpoint, BadTensorsAreReportedByName) {
  TempDir dir;
  const kd::GPT2Config cfg = small_config();
  const kd::GPT2 m = random_model(cfg, 6);
  const std::string ckpt = dir.sub("bad");
  const std::string file = ckpt + "/model.safetensors";

  auto tensors = views(m, "transformer.");
  tensors.erase(tensors.begin() + 20);
  write_checkpoint(ckpt, cfg, tensors);
  expect_input_error([&] { kd::load_model(ckpt); }, file,
                     "missing tensor \"transformer." + m.table()[20].name + "\"");

  tensors = views(m, "transformer.");
  tensors[4].shape = {3 * cfg.n_embd, cfg.n_embd};  // c_attn stored [out, in]
  write_checkpoint(ckpt, cfg, tensors);
  expect_input_error([&] { kd::load_model(ckpt); }, file,
                     "tensor \"transformer.h.0.attn.c_attn.weight\" has shape [24,8] but "
                     "config.json needs [8,24]");

  tensors = views(m, "transformer.");
  float extra = 1.0f;
  tensors.push_back({"transformer.h.0.attn.rotary", {1}, &extra});
  write_checkpoint(ckpt, cfg, tensors);
  expect_input_error([&] { kd::load_model(ckpt); }, file,
                     "unexpected tensor \"transformer.h.0.attn.rotary\"");

  tensors = views(m, "transformer.");
  tensors.push_back({"ln_f.bias", {cfg.n_embd}, m.param("ln_f.bias")});
  write_checkpoint(ckpt, cfg, tensors);
  expect_input_error([&] { kd::load_model(ckpt); }, file, "\"ln_f.bias\" is stored twice");

  // A checkpoint of another size than its config says.
  kd::GPT2Config wider = cfg;
  wider.n_embd = 12;
  write_checkpoint(ckpt, wider, views(m, "transformer."));
  expect_input_error([&] { kd::load_model(ckpt); }, file, "config.json needs [37,12]");

  fs::remove(file);
  expect_input_error([&] { kd::load_model(ckpt); }, file, "cannot open");
  // A truncated model file surfaces the reader's error.
  write_checkpoint(ckpt, cfg, views(m, "transformer."));
  fs::resize_file(file, fs::file_size(file) - 3);
  expect_input_error([&] { kd::load_model(ckpt); }, file, "truncated");
}

TEST(Checkpoint, ConfigsKdengineCannotRunAreRejected) {
  TempDir dir;
  const std::string ckpt = dir.sub("cfg");
  fs::create_directories(ckpt);
  const std::string path = ckpt + "/config.json";
  const kd::Json good = kd::hf_config_json(small_config());

  expect_input_error([&] { kd::load_config(ckpt); }, path, "cannot open");
  auto expect_bad = [&](const std::string& text, const std::string& problem) {
    write_text(path, text);
    expect_input_error([&] { kd::load_config(ckpt); }, path, problem);
  };
  auto with = [&](const std::string& key, kd::Json value) {
    kd::Json j = good;
    j[key] = std::move(value);
    return j.dump();
  };
  auto without = [&](const std::string& key) {
    kd::Json j = kd::Json::object();
    for (const auto& [k, v] : good.members())
      if (k != key) j[k] = v;
    return j.dump();
  };
  expect_bad("{\"n_embd\": 8,", "not valid JSON");
  expect_bad("[1]", "not a JSON object");
  expect_bad(without("n_head"), "the field \"n_head\" is missing");
  expect_bad(with("n_head", kd::Json("2")), "\"n_head\" must be a positive integer");
  expect_bad(with("n_layer", kd::Json(0)), "\"n_layer\" must be a positive integer");
  expect_bad(with("n_embd", kd::Json(8.5)), "\"n_embd\" must be a positive integer");
  expect_bad(with("n_head", kd::Json(3)), "\"n_embd\" (8) is not a multiple of \"n_head\" (3)");
  expect_bad(with("model_type", kd::Json("llama")), "\"model_type\" is \"llama\"");
  expect_bad(with("activation_function", kd::Json("relu")), "\"activation_function\" is \"relu\"");
  expect_bad(with("activation_function", kd::Json("gelu")), "tanh GELU only");
  expect_bad(with("n_inner", kd::Json(20)), "\"n_inner\" is 20");
  expect_bad(with("tie_word_embeddings", kd::Json(false)), "\"tie_word_embeddings\" is false");
  expect_bad(with("layer_norm_epsilon", kd::Json(1e-6)), "\"layer_norm_epsilon\" is 1e-06");
  expect_bad(with("scale_attn_weights", kd::Json(false)), "\"scale_attn_weights\" is false");
  expect_bad(with("scale_attn_by_inverse_layer_idx", kd::Json(true)),
             "\"scale_attn_by_inverse_layer_idx\" is true");
  expect_bad(with("add_cross_attention", kd::Json(true)), "\"add_cross_attention\" is true");
  expect_bad(with("tie_word_embeddings", kd::Json("yes")), "must be true or false");

  // What is accepted: the tanh GELU under either name, n_inner = 4C, the legacy n_ctx alone, and
  // absent optional fields (HF's defaults).
  write_text(path, with("activation_function", kd::Json("gelu_pytorch_tanh")));
  EXPECT_EQ(kd::load_config(ckpt), small_config());
  write_text(path, with("n_inner", kd::Json(32)));
  EXPECT_EQ(kd::load_config(ckpt), small_config());
  write_text(path, without("n_positions"));
  EXPECT_EQ(kd::load_config(ckpt), small_config());
  write_text(path,
             "{\"vocab_size\": 37, \"n_positions\": 6, \"n_embd\": 8, \"n_layer\": 2, "
             "\"n_head\": 2}");
  EXPECT_EQ(kd::load_config(ckpt), small_config());
}

// save_model -> load_model keeps the model's output bit for bit; the checkpoint and the logits are
// left in the build directory for tools/check_hf_load.py, which loads them with transformers.
TEST(Checkpoint, WritesACheckpointForTheHFLoadCheck) {
  kd::GPT2Config cfg;
  cfg.n_layer = 2;
  cfg.n_head = 4;
  cfg.n_embd = 32;
  cfg.vocab_size = 203;
  cfg.block_size = 24;
  kd::GPT2 m(cfg);
  m.init_random(12);
  std::mt19937 rng(13);
  std::normal_distribution<float> noise(0.0f, 0.05f);
  for (float& p : m.params) p += noise(rng);  // LayerNorm and biases away from 1 and 0 too

  const int B = 2, T = 20;
  std::uniform_int_distribution<int> token(0, cfg.vocab_size - 1);
  std::vector<int32_t> tokens(B * T);
  for (auto& t : tokens) t = token(rng);
  std::vector<float> logits(size_t(B) * T * cfg.vocab_size);
  m.forward_inference(logits.data(), tokens.data(), B, T);

  const std::string out = std::string(KD_BINARY_DIR) + "/hf_check";
  kd::save_model(out + "/ckpt", m);
  const kd::GPT2 back = kd::load_model(out + "/ckpt");
  std::vector<float> again(logits.size());
  back.forward_inference(again.data(), tokens.data(), B, T);
  EXPECT_EQ(std::memcmp(again.data(), logits.data(), logits.size() * sizeof(float)), 0);

  std::vector<float> token_values(tokens.begin(), tokens.end());
  std::vector<kd::TensorView> expected = {
      {"tokens", {B, T}, token_values.data()},
      {"logits", {B, T, cfg.vocab_size}, logits.data()},
  };
  kd::write_safetensors(out + "/expected.safetensors", expected);
}
