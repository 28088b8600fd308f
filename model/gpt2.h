// The GPT-2 model on the CPU: config, the named parameter table (HF GPT-2 names and layouts), one
// contiguous parameter buffer with a mirrored gradient buffer, and the forward/backward
// orchestration over the CPU twins in engine/ops/cpu/ops.h.
//
// Architecture: tokens -> wte + wpe -> n_layer x [ LN -> causal MHA -> +residual ; LN -> MLP(4C,
// GELU)
// -> +residual ] -> ln_f -> logits = x · wte^T (LM head tied to the token embedding).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace kd {

struct GPT2Config {
  int n_layer = 2;
  int n_head = 4;
  int n_embd = 64;
  int vocab_size = 256;
  int block_size = 64;

  bool operator==(const GPT2Config&) const = default;
  size_t num_parameters() const;
};

// One named tensor of the parameter buffer. Names are HF GPT-2's without the "transformer." prefix:
// wte.weight [V,C], wpe.weight [block,C], h.{i}.ln_1.weight [C], h.{i}.ln_1.bias [C],
// h.{i}.attn.c_attn.weight [C,3C] (Conv1D: [in,out]), h.{i}.attn.c_attn.bias [3C],
// h.{i}.attn.c_proj.weight [C,C], h.{i}.attn.c_proj.bias [C], h.{i}.ln_2.weight/bias [C],
// h.{i}.mlp.c_fc.weight [C,4C], h.{i}.mlp.c_fc.bias [4C], h.{i}.mlp.c_proj.weight [4C,C],
// h.{i}.mlp.c_proj.bias [C], ln_f.weight [C], ln_f.bias [C].
struct ParamInfo {
  std::string name;
  std::vector<int64_t> shape;
  size_t offset = 0;  // in floats, into the parameter buffer
  size_t numel = 0;
  bool decay = false;  // 2-D weight matrices (embeddings included) decay; biases and LN do not
};

// The tensors of one transformer block, in table order: the one description of their names, shapes
// and fields that the parameter table, the CPU model and the GPU model all read. F is the field
// type: T* for a view into a buffer laid out as the table (fp32 parameters, gradients or moments on
// the CPU, bf16 weights on the GPU), size_t for offsets.
template <typename F>
struct LayerTensors {
  F ln1w, ln1b, qkvw, qkvb, attprojw, attprojb, ln2w, ln2b, fcw, fcb, fcprojw, fcprojb;

  // fn(field, HF name within "h.{i}.", shape) for every tensor, in table order; C = n_embd.
  template <typename Self, typename Fn>
  static void each(Self& t, int64_t C, Fn&& fn) {
    fn(t.ln1w, "ln_1.weight", std::vector<int64_t>{C});
    fn(t.ln1b, "ln_1.bias", std::vector<int64_t>{C});
    fn(t.qkvw, "attn.c_attn.weight", std::vector<int64_t>{C, 3 * C});
    fn(t.qkvb, "attn.c_attn.bias", std::vector<int64_t>{3 * C});
    fn(t.attprojw, "attn.c_proj.weight", std::vector<int64_t>{C, C});
    fn(t.attprojb, "attn.c_proj.bias", std::vector<int64_t>{C});
    fn(t.ln2w, "ln_2.weight", std::vector<int64_t>{C});
    fn(t.ln2b, "ln_2.bias", std::vector<int64_t>{C});
    fn(t.fcw, "mlp.c_fc.weight", std::vector<int64_t>{C, 4 * C});
    fn(t.fcb, "mlp.c_fc.bias", std::vector<int64_t>{4 * C});
    fn(t.fcprojw, "mlp.c_proj.weight", std::vector<int64_t>{4 * C, C});
    fn(t.fcprojb, "mlp.c_proj.bias", std::vector<int64_t>{C});
  }
};

// Where every tensor starts in a buffer laid out as gpt2_param_table (element offsets), and typed
// views of such a buffer: params.wte, layer(l).qkvw, ... instead of indices into the table.
struct GPT2Layout {
  size_t wte = 0, wpe = 0, lnfw = 0, lnfb = 0;
  std::vector<LayerTensors<size_t>> layers;

  template <typename T>
  LayerTensors<T*> layer(T* base, int l) const {
    const LayerTensors<size_t>& o = layers[static_cast<size_t>(l)];
    LayerTensors<T*> v{};
    std::vector<size_t> offs;
    LayerTensors<size_t>::each(o, 0, [&](size_t off, const char*, auto&&) { offs.push_back(off); });
    size_t i = 0;
    LayerTensors<T*>::each(v, 0, [&](T*& p, const char*, auto&&) { p = base + offs[i++]; });
    return v;
  }
};

std::vector<ParamInfo> gpt2_param_table(const GPT2Config& cfg);
// The offsets of the table's tensors, found by name.
GPT2Layout gpt2_layout(const GPT2Config& cfg, const std::vector<ParamInfo>& table);

class GPT2 {
 public:
  explicit GPT2(const GPT2Config& cfg);

  const GPT2Config& config() const { return cfg_; }
  const std::vector<ParamInfo>& table() const { return table_; }
  const ParamInfo& info(std::string_view name) const;  // throws kd::ContractError naming it
  const GPT2Layout& layout() const { return layout_; }

  std::vector<float> params;  // all parameters, laid out as table()
  std::vector<float> grads;   // same layout; allocated by enable_training()

  float* param(std::string_view name) { return params.data() + info(name).offset; }
  const float* param(std::string_view name) const { return params.data() + info(name).offset; }
  float* grad(std::string_view name) { return grads.data() + info(name).offset; }

  // GPT-2 initialisation: normal(0, 0.02); residual projections (attn.c_proj, mlp.c_proj) scaled by
  // 1/sqrt(2 n_layer); biases 0; LayerNorm weight 1, bias 0. Deterministic in seed.
  void init_random(uint64_t seed);

  // Allocates gradient buffers (and zeroes them). Call once before backward().
  void enable_training();
  void zero_grad();

  // Training forward: keeps every activation needed by backward(). Writes logits [B,T,V] into
  // logits(). T <= block_size.
  void forward(const int32_t* tokens, int B, int T);
  float* logits() { return acts_.logits.data(); }
  int cur_B() const { return B_; }
  int cur_T() const { return T_; }

  // Backward from dlogits [B,T,V] (may be logits(), written in place by the loss). ADDS into grads.
  void backward(const float* dlogits);

  // The same training forward stopped at the final LayerNorm: hidden() [B,T,C] is ln_f's output
  // and no logits are formed (the LM head and the loss are then lm_head_kd_loss's, chunked).
  // backward_hidden continues from d(ln_f output) [B,T,C]; the head's own gradient into wte.weight
  // must already be in grads (lm_head_kd_loss adds it).
  void forward_hidden(const int32_t* tokens, int B, int T);
  const float* hidden() const { return acts_.lnf.data(); }
  // layer_done(l), when given, runs right after layer l's backward (l counts down from n_layer -
  // 1): from then on this backward adds nothing more to the gradients of h.l.* (nor, after the last
  // layer, to ln_f.*); wte's and wpe's are final only when backward_hidden returns. Data
  // parallelism starts the reduction of each finished layer's gradients there.
  using LayerDone = std::function<void(int layer)>;
  void backward_hidden(const float* dhidden, const LayerDone& layer_done = nullptr);

  // Teacher forward: no activations kept for backward; scratch of one layer of one sequence (the
  // batch runs sequence by sequence). Writes logits [B,T,V] into out.
  void forward_inference(float* out, const int32_t* tokens, int B, int T) const;
  // Teacher forward stopped at the final LayerNorm: writes ln_f's output [B,T,C] into out.
  void forward_inference_hidden(float* out, const int32_t* tokens, int B, int T) const;

  // Bytes of activations a training forward keeps at (B,T) (for memory plans).
  static size_t activation_bytes(const GPT2Config& cfg, int B, int T);
  // Bytes of the [B,T,V] logits forward() keeps (included in activation_bytes).
  static size_t logits_bytes(const GPT2Config& cfg, int B, int T);
  static size_t inference_scratch_bytes(const GPT2Config& cfg, int B, int T);

 private:
  struct Acts {
    std::vector<float> encoded;                        // [B,T,C]
    std::vector<float> ln1, ln1_mean, ln1_rstd;        // [L,B,T,C], [L,B,T] x2
    std::vector<float> qkv, atty, att_lse;             // [L,B,T,3C], [L,B,T,C], [L,B,NH,T]
    std::vector<float> res2, ln2, ln2_mean, ln2_rstd;  // [L,B,T,C], [L,B,T,C], [L,B,T] x2
    std::vector<float> fch, res3;                      // [L,B,T,4C], [L,B,T,C]
    // One layer's scratch, not kept per layer: the projections' outputs [B,T,C] (the backward
    // needs only their sum, the residual) and gelu(fch) [B,T,4C], which the backward recomputes
    // from fch (bit for bit: the same gelu_tanh) instead of keeping L copies.
    std::vector<float> proj, gelu;
    std::vector<float> lnf, lnf_mean, lnf_rstd;  // [B,T,C], [B,T] x2
    std::vector<float> logits;                   // [B,T,V]
  };
  void ensure_acts(int B, int T);

  GPT2Config cfg_;
  std::vector<ParamInfo> table_;
  GPT2Layout layout_;
  Acts acts_;
  std::vector<int32_t> tokens_;
  int B_ = 0, T_ = 0;
};

}  // namespace kd
