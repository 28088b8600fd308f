#include "model/gpt2.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "engine/base/error.h"
#include "engine/base/rng.h"
#include "engine/base/trace.h"
#include "engine/ops/cpu/ops.h"

namespace kd {

std::vector<ParamInfo> gpt2_param_table(const GPT2Config& cfg) {
  const int64_t C = cfg.n_embd, V = cfg.vocab_size, P = cfg.block_size;
  std::vector<ParamInfo> t;
  size_t offset = 0;
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    ParamInfo p;
    p.name = std::move(name);
    p.numel = 1;
    for (int64_t d : shape) p.numel *= static_cast<size_t>(d);
    p.decay = shape.size() == 2;
    p.shape = std::move(shape);
    p.offset = offset;
    offset += p.numel;
    t.push_back(std::move(p));
  };
  add("wte.weight", {V, C});
  add("wpe.weight", {P, C});
  for (int l = 0; l < cfg.n_layer; ++l) {
    const std::string h = "h." + std::to_string(l) + ".";
    LayerTensors<int> names{};
    LayerTensors<int>::each(names, C, [&](int, const char* name, std::vector<int64_t> shape) {
      add(h + name, std::move(shape));
    });
  }
  add("ln_f.weight", {C});
  add("ln_f.bias", {C});
  return t;
}

GPT2Layout gpt2_layout(const GPT2Config& cfg, const std::vector<ParamInfo>& table) {
  auto at = [&](const std::string& name) {
    const auto it = std::find_if(table.begin(), table.end(),
                                 [&](const ParamInfo& p) { return p.name == name; });
    KD_REQUIRE(it != table.end(), "gpt2_layout: no parameter named '" + name + "'");
    return it->offset;
  };
  GPT2Layout L;
  L.wte = at("wte.weight");
  L.wpe = at("wpe.weight");
  L.lnfw = at("ln_f.weight");
  L.lnfb = at("ln_f.bias");
  for (int l = 0; l < cfg.n_layer; ++l) {
    const std::string h = "h." + std::to_string(l) + ".";
    LayerTensors<size_t> o{};
    LayerTensors<size_t>::each(o, cfg.n_embd,
                               [&](size_t& off, const char* name, auto&&) { off = at(h + name); });
    L.layers.push_back(o);
  }
  return L;
}

size_t GPT2Config::num_parameters() const {
  const auto t = gpt2_param_table(*this);
  return t.back().offset + t.back().numel;
}

GPT2::GPT2(const GPT2Config& cfg)
    : cfg_(cfg), table_(gpt2_param_table(cfg)), layout_(gpt2_layout(cfg, table_)) {
  KD_REQUIRE(cfg.n_layer >= 1 && cfg.n_head >= 1 && cfg.n_embd >= 1 && cfg.vocab_size >= 1 &&
                 cfg.block_size >= 1 && cfg.n_embd % cfg.n_head == 0,
             "GPT2: invalid config (n_embd must be a multiple of n_head)");
  params.assign(cfg.num_parameters(), 0.0f);
}

const ParamInfo& GPT2::info(std::string_view name) const {
  const auto it = std::find_if(table_.begin(), table_.end(),
                               [&](const ParamInfo& p) { return p.name == name; });
  KD_REQUIRE(it != table_.end(), "GPT2: no parameter named '" + std::string(name) + "'");
  return *it;
}

void GPT2::init_random(uint64_t seed) {
  Rng rng(seed);
  const float proj_std = 0.02f / std::sqrt(2.0f * static_cast<float>(cfg_.n_layer));
  for (const auto& p : table_) {
    float* w = params.data() + p.offset;
    const bool is_ln = p.name.find("ln_") != std::string::npos;
    const bool is_bias = p.name.ends_with(".bias");
    if (is_ln && !is_bias) {
      std::fill(w, w + p.numel, 1.0f);
    } else if (is_bias) {
      std::fill(w, w + p.numel, 0.0f);
    } else {
      const bool residual_proj = p.name.ends_with("c_proj.weight");
      const float std = residual_proj ? proj_std : 0.02f;
      for (size_t i = 0; i < p.numel; ++i) w[i] = std * rng.normal();
    }
  }
}

void GPT2::enable_training() {
  grads.assign(params.size(), 0.0f);
}

void GPT2::zero_grad() {
  std::fill(grads.begin(), grads.end(), 0.0f);
}

size_t GPT2::activation_bytes(const GPT2Config& cfg, int B, int T) {
  const size_t N = static_cast<size_t>(B) * T, C = cfg.n_embd, L = cfg.n_layer, NH = cfg.n_head;
  size_t floats = N * C;                              // encoded
  floats += L * (N * C + 2 * N);                      // ln1 + stats
  floats += L * (N * 3 * C + N * C + NH * N);         // qkv, atty, lse
  floats += L * (N * C + N * C + 2 * N);              // res2, ln2 + stats
  floats += L * (N * 4 * C + N * C);                  // fch, res3
  floats += N * C + N * 4 * C;                        // one layer's proj and gelu scratch
  floats += N * C + 2 * N;                            // lnf + stats
  floats += logits_bytes(cfg, B, T) / sizeof(float);  // logits (forward(); not forward_hidden())
  // backward scratch: dresidual, dres2, dC [N,C]; d4 [N,4C] (then dqkv); the rest reuses the
  // forward's one-layer scratch
  floats += 3 * N * C + 4 * N * C;
  return floats * sizeof(float);
}

size_t GPT2::logits_bytes(const GPT2Config& cfg, int B, int T) {
  return static_cast<size_t>(B) * T * cfg.vocab_size * sizeof(float);
}

size_t GPT2::inference_scratch_bytes(const GPT2Config& cfg, int /*B*/, int T) {
  const size_t N = static_cast<size_t>(T), C = cfg.n_embd, NH = cfg.n_head;  // one sequence
  // residual x2, ln, qkv, atty, proj, fch, gelu, lse, mean, rstd
  return (4 * N * C + 3 * N * C + 8 * N * C + NH * N + 2 * N) * sizeof(float);
}

void GPT2::ensure_acts(int B, int T) {
  KD_REQUIRE(T >= 1 && T <= cfg_.block_size && B >= 1,
             "GPT2::forward: need 1 <= T <= block_size and B >= 1");
  if (B == B_ && T == T_) return;
  B_ = B;
  T_ = T;
  const size_t N = static_cast<size_t>(B) * T, C = cfg_.n_embd, L = cfg_.n_layer, NH = cfg_.n_head;
  Acts& a = acts_;
  a.encoded.assign(N * C, 0);
  a.ln1.assign(L * N * C, 0);
  a.ln1_mean.assign(L * N, 0);
  a.ln1_rstd.assign(L * N, 0);
  a.qkv.assign(L * N * 3 * C, 0);
  a.atty.assign(L * N * C, 0);
  a.att_lse.assign(L * NH * N, 0);
  a.res2.assign(L * N * C, 0);
  a.ln2.assign(L * N * C, 0);
  a.ln2_mean.assign(L * N, 0);
  a.ln2_rstd.assign(L * N, 0);
  a.fch.assign(L * N * 4 * C, 0);
  a.res3.assign(L * N * C, 0);
  a.proj.assign(N * C, 0);
  a.gelu.assign(N * 4 * C, 0);
  a.lnf.assign(N * C, 0);
  a.lnf_mean.assign(N, 0);
  a.lnf_rstd.assign(N, 0);
  a.logits.clear();  // allocated by forward() only: forward_hidden() never forms the logits
  a.logits.shrink_to_fit();
}

namespace {
// Pointers to one layer's parameters (or gradients) inside a buffer laid out as the table.
using LayerParams = LayerTensors<float*>;
LayerParams layer_params(float* base, const GPT2Layout& layout, int l) {
  return layout.layer(base, l);
}
}  // namespace

void GPT2::forward(const int32_t* tokens, int B, int T) {
  forward_hidden(tokens, B, T);
  const size_t N = static_cast<size_t>(B) * T;
  const int V = cfg_.vocab_size;
  if (acts_.logits.size() != N * V) acts_.logits.assign(N * V, 0.0f);
  cpu::matmul_forward(acts_.logits.data(), acts_.lnf.data(), param("wte.weight"), nullptr, int(N),
                      cfg_.n_embd, V, Layout::OutIn);
}

void GPT2::forward_hidden(const int32_t* tokens, int B, int T) {
  ensure_acts(B, T);
  const int N = B * T, C = cfg_.n_embd, NH = cfg_.n_head, V = cfg_.vocab_size;
  const size_t NC = static_cast<size_t>(N) * C;
  for (int i = 0; i < N; ++i)
    KD_REQUIRE(tokens[i] >= 0 && tokens[i] < V,
               "GPT2::forward: token id " + std::to_string(tokens[i]) +
                   " outside the vocabulary of " + std::to_string(V));
  tokens_.assign(tokens, tokens + N);
  Acts& a = acts_;
  float* P = params.data();
  cpu::encoder_forward(a.encoded.data(), tokens, param("wte.weight"), param("wpe.weight"), B, T, C);
  const float* residual = a.encoded.data();
  for (int l = 0; l < cfg_.n_layer; ++l) {
    KD_RANGE_P("layer", Phase::Layer, l);
    LayerParams w = layer_params(P, layout_, l);
    float* ln1 = a.ln1.data() + l * NC;
    float* qkv = a.qkv.data() + l * 3 * NC;
    float* atty = a.atty.data() + l * NC;
    float* lse = a.att_lse.data() + static_cast<size_t>(l) * NH * N;
    float* res2 = a.res2.data() + l * NC;
    float* ln2 = a.ln2.data() + l * NC;
    float* fch = a.fch.data() + l * 4 * NC;
    float* res3 = a.res3.data() + l * NC;
    cpu::layernorm_forward(ln1, a.ln1_mean.data() + l * N, a.ln1_rstd.data() + l * N, residual,
                           w.ln1w, w.ln1b, N, C);
    cpu::matmul_forward(qkv, ln1, w.qkvw, w.qkvb, N, C, 3 * C, Layout::InOut);
    cpu::attention_forward(atty, lse, qkv, B, T, C, NH);
    cpu::matmul_forward(a.proj.data(), atty, w.attprojw, w.attprojb, N, C, C, Layout::InOut);
    cpu::residual_layernorm_forward(res2, ln2, a.ln2_mean.data() + l * N, a.ln2_rstd.data() + l * N,
                                    residual, a.proj.data(), w.ln2w, w.ln2b, N,
                                    C);  // res2 = residual + attproj; ln2 = LN(res2)
    cpu::matmul_gelu_forward(fch, a.gelu.data(), ln2, w.fcw, w.fcb, N, C, 4 * C);
    cpu::matmul_forward(a.proj.data(), a.gelu.data(), w.fcprojw, w.fcprojb, N, 4 * C, C,
                        Layout::InOut);
    cpu::residual_forward(res3, res2, a.proj.data(), NC);
    residual = res3;
  }
  cpu::layernorm_forward(a.lnf.data(), a.lnf_mean.data(), a.lnf_rstd.data(), residual,
                         param("ln_f.weight"), param("ln_f.bias"), N, C);
}

void GPT2::backward(const float* dlogits) {
  KD_REQUIRE(grads.size() == params.size(), "GPT2::backward: call enable_training() first");
  KD_REQUIRE(B_ != 0, "GPT2::backward: call forward() first");
  const int N = B_ * T_, C = cfg_.n_embd, V = cfg_.vocab_size;
  std::vector<float> dlnf(static_cast<size_t>(N) * C, 0.0f);
  cpu::matmul_backward(dlnf.data(), grad("wte.weight"), nullptr, dlogits, acts_.lnf.data(),
                       param("wte.weight"), N, C, V, Layout::OutIn);
  backward_hidden(dlnf.data());
}

void GPT2::backward_hidden(const float* dhidden, const LayerDone& layer_done) {
  KD_REQUIRE(grads.size() == params.size(), "GPT2::backward: call enable_training() first");
  KD_REQUIRE(B_ != 0, "GPT2::backward: call forward() first");
  const int B = B_, T = T_, N = B * T, C = cfg_.n_embd, NH = cfg_.n_head;
  const size_t NC = static_cast<size_t>(N) * C;
  Acts& a = acts_;
  float* P = params.data();
  float* G = grads.data();
  // Gradient scratch (zeroed before each use because backward ops accumulate). d4 holds
  // d(gelu(fch)) [N,4C], later d(qkv) [N,3C]; the forward's one-layer scratch is reused too: gelu
  // holds the recomputed gelu(fch), then d(fch); proj holds d(attproj).
  std::vector<float> dresidual(NC), dres2(NC), dC(NC), d4(4 * NC);
  auto zero = [](auto& v) { std::fill(v.begin(), v.end(), 0.0f); };
  float* dgelu = d4.data();
  float* dqkv = d4.data();
  float* dfch = a.gelu.data();
  float* dattproj = a.proj.data();

  const float* last = cfg_.n_layer > 0 ? a.res3.data() + (cfg_.n_layer - 1) * NC : a.encoded.data();
  cpu::layernorm_backward(dresidual.data(), grad("ln_f.weight"), grad("ln_f.bias"), dhidden, last,
                          param("ln_f.weight"), a.lnf_mean.data(), a.lnf_rstd.data(), N, C);
  for (int l = cfg_.n_layer - 1; l >= 0; --l) {
    KD_RANGE_P("layer", Phase::Layer, l);
    LayerParams w = layer_params(P, layout_, l);
    LayerParams g = layer_params(G, layout_, l);
    const float* residual = l == 0 ? a.encoded.data() : a.res3.data() + (l - 1) * NC;
    const float* ln1 = a.ln1.data() + l * NC;
    const float* qkv = a.qkv.data() + l * 3 * NC;
    const float* atty = a.atty.data() + l * NC;
    const float* lse = a.att_lse.data() + static_cast<size_t>(l) * NH * N;
    const float* res2 = a.res2.data() + l * NC;
    const float* ln2 = a.ln2.data() + l * NC;
    const float* fch = a.fch.data() + l * 4 * NC;

    // res3 = res2 + fcproj
    zero(dres2);
    zero(dC);
    cpu::residual_backward(dres2.data(), dC.data(), dresidual.data(), NC);
    // fcproj = gelu(fch) · W + b, with gelu(fch) recomputed (the forward kept only fch)
    cpu::gelu_forward(a.gelu.data(), fch, 4 * NC);
    zero(d4);
    cpu::matmul_backward(dgelu, g.fcprojw, g.fcprojb, dC.data(), a.gelu.data(), w.fcprojw, N, 4 * C,
                         C, Layout::InOut);
    zero(a.gelu);  // gelu(fch) is used: its buffer becomes d(fch)
    cpu::gelu_backward(dfch, fch, dgelu, 4 * NC);
    zero(dC);
    cpu::matmul_backward(dC.data(), g.fcw, g.fcb, dfch, ln2, w.fcw, N, C, 4 * C, Layout::InOut);
    cpu::layernorm_backward(dres2.data(), g.ln2w, g.ln2b, dC.data(), res2, w.ln2w,
                            a.ln2_mean.data() + l * N, a.ln2_rstd.data() + l * N, N, C);
    // res2 = residual + attproj
    zero(dresidual);
    zero(a.proj);
    cpu::residual_backward(dresidual.data(), dattproj, dres2.data(), NC);
    zero(dC);
    cpu::matmul_backward(dC.data(), g.attprojw, g.attprojb, dattproj, atty, w.attprojw, N, C, C,
                         Layout::InOut);
    std::fill(dqkv, dqkv + 3 * NC, 0.0f);
    cpu::attention_backward(dqkv, dC.data(), qkv, atty, lse, B, T, C, NH);
    zero(dC);
    cpu::matmul_backward(dC.data(), g.qkvw, g.qkvb, dqkv, ln1, w.qkvw, N, C, 3 * C, Layout::InOut);
    cpu::layernorm_backward(dresidual.data(), g.ln1w, g.ln1b, dC.data(), residual, w.ln1w,
                            a.ln1_mean.data() + l * N, a.ln1_rstd.data() + l * N, N, C);
    if (layer_done) layer_done(l);
  }
  cpu::encoder_backward(grad("wte.weight"), grad("wpe.weight"), dresidual.data(), tokens_.data(), B,
                        T, C);
}

void GPT2::forward_inference(float* out, const int32_t* tokens, int B, int T) const {
  KD_REQUIRE(T >= 1 && T <= cfg_.block_size && B >= 1,
             "GPT2::forward_inference: need 1 <= T <= block_size and B >= 1");
  const size_t NC = static_cast<size_t>(B) * T * cfg_.n_embd;
  std::vector<float> h(NC);
  forward_inference_hidden(h.data(), tokens, B, T);
  cpu::matmul_forward(out, h.data(), param("wte.weight"), nullptr, B * T, cfg_.n_embd,
                      cfg_.vocab_size, Layout::OutIn);
}

void GPT2::forward_inference_hidden(float* out, const int32_t* tokens, int B, int T) const {
  KD_REQUIRE(T >= 1 && T <= cfg_.block_size && B >= 1,
             "GPT2::forward_inference: need 1 <= T <= block_size and B >= 1");
  // One sequence at a time: no op mixes sequences, so the scratch is one layer of one sequence.
  if (B > 1) {
    for (int b = 0; b < B; ++b)
      forward_inference_hidden(out + static_cast<size_t>(b) * T * cfg_.n_embd,
                               tokens + static_cast<size_t>(b) * T, 1, T);
    return;
  }
  const int N = T, C = cfg_.n_embd, NH = cfg_.n_head, V = cfg_.vocab_size;
  const size_t NC = static_cast<size_t>(N) * C;
  for (int i = 0; i < N; ++i)
    KD_REQUIRE(tokens[i] >= 0 && tokens[i] < V,
               "GPT2::forward_inference: token id outside the vocabulary");
  // One layer of scratch, reused by every layer.
  std::vector<float> x(NC), x2(NC), ln(NC), qkv(3 * NC), atty(NC), proj(NC), fch(4 * NC),
      gelu(4 * NC), lse(static_cast<size_t>(NH) * N), mean(N), rstd(N);
  float* P = const_cast<float*>(params.data());  // read only: layer_params only offsets it
  cpu::encoder_forward(x.data(), tokens, param("wte.weight"), param("wpe.weight"), B, T, C);
  for (int l = 0; l < cfg_.n_layer; ++l) {
    KD_RANGE_P("layer", Phase::Layer, l);
    LayerParams w = layer_params(P, layout_, l);
    cpu::layernorm_forward(ln.data(), mean.data(), rstd.data(), x.data(), w.ln1w, w.ln1b, N, C);
    cpu::matmul_forward(qkv.data(), ln.data(), w.qkvw, w.qkvb, N, C, 3 * C, Layout::InOut);
    cpu::attention_forward(atty.data(), lse.data(), qkv.data(), B, T, C, NH);
    cpu::matmul_forward(proj.data(), atty.data(), w.attprojw, w.attprojb, N, C, C, Layout::InOut);
    cpu::residual_layernorm_forward(x2.data(), ln.data(), mean.data(), rstd.data(), x.data(),
                                    proj.data(), w.ln2w, w.ln2b, N, C);
    cpu::matmul_gelu_forward(fch.data(), gelu.data(), ln.data(), w.fcw, w.fcb, N, C, 4 * C);
    cpu::matmul_forward(proj.data(), gelu.data(), w.fcprojw, w.fcprojb, N, 4 * C, C, Layout::InOut);
    cpu::residual_forward(x.data(), x2.data(), proj.data(), NC);
  }
  cpu::layernorm_forward(out, mean.data(), rstd.data(), x.data(), param("ln_f.weight"),
                         param("ln_f.bias"), N, C);
}

}  // namespace kd
