// GPT-2 on the GPU: host orchestration over the kd::cuda launchers, mirroring model/gpt2.cpp op for
// op. Two deliberate differences, both exact in the math:
//  - the residual add and the LayerNorm that follows it run as one fused launcher (the residual is
//    rounded to bf16 first, then normalised, exactly as the two separate ops would do);
//  - in the backward, the residual stream's gradient lives in one buffer that the LayerNorm
//    backwards add into (the CPU copies it through residual_backward into zeroed buffers first:
//    the same sums).
// Built only with the CUDA backend; without it this file compiles to nothing.
#include "model/gpt2_cuda.h"

#ifdef KD_WITH_CUDA

#include <cuda_runtime_api.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "engine/base/trace.h"

namespace kd {

using cuda::bf16;

namespace {

// Lays out buffers inside one allocation, each at a 256-byte boundary. With base == nullptr it only
// counts (the plan); with the real base it hands out pointers in the same order.
class Carver {
 public:
  explicit Carver(char* base) : base_(base) {}
  template <typename T>
  T* take(size_t count) {
    off_ = (off_ + 255) & ~size_t{255};
    T* p = base_ ? reinterpret_cast<T*>(base_ + off_) : nullptr;
    off_ += count * sizeof(T);
    return p;
  }
  size_t bytes() const { return (off_ + 255) & ~size_t{255}; }

 private:
  char* base_;
  size_t off_ = 0;
};

// Carves the activation buffers of a student (layers = n_layer, training) or the scratch of a
// teacher (layers = 1, inference) for micro-batches of up to N = B*T rows.
template <typename Acts>
size_t carve_acts(Acts& a, char* base, const GPT2Config& cfg, int B, int T, bool training) {
  const size_t N = static_cast<size_t>(B) * T, C = cfg.n_embd, NH = cfg.n_head;
  const size_t L = training ? cfg.n_layer : 1;
  Carver c(base);
  a.encoded = c.take<bf16>(N * C);
  a.ln1 = c.take<bf16>(L * N * C);
  a.qkv = c.take<bf16>(L * N * 3 * C);
  a.atty = c.take<bf16>(L * N * C);
  a.res2 = c.take<bf16>(L * N * C);
  a.fch = c.take<bf16>(L * N * 4 * C);
  a.fch_gelu = c.take<bf16>(L * N * 4 * C);
  a.proj = c.take<bf16>(N * C);
  a.ln1_mean = c.take<float>(L * N);
  a.ln1_rstd = c.take<float>(L * N);
  a.lse = c.take<float>(L * NH * N);
  if (training) {
    a.ln2 = c.take<bf16>(L * N * C);
    a.res3 = c.take<bf16>(L * N * C);
    a.lnf = c.take<bf16>(N * C);
    a.ln2_mean = c.take<float>(L * N);
    a.ln2_rstd = c.take<float>(L * N);
    a.lnf_mean = c.take<float>(N);
    a.lnf_rstd = c.take<float>(N);
    a.dres = c.take<bf16>(N * C);
    a.dC = c.take<bf16>(N * C);
    a.d4a = c.take<bf16>(N * 4 * C);  // also dqkv [N,3C]
    a.d4b = c.take<bf16>(N * 4 * C);
    a.att_scratch = c.take<float>(cuda::attention_backward_scratch_floats(B, T, cfg.n_head));
  }
  return c.bytes();
}

}  // namespace

// ---- DeviceBlock -------------------------------------------------------------------------------

DeviceBlock::DeviceBlock(size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw CudaError("GPU out of memory: cannot allocate " + std::to_string(bytes / (1024 * 1024)) +
                    " MiB (" + cudaGetErrorString(e) + "); lower micro_batch or seq_len");
  }
  ptr_ = static_cast<char*>(p);
}
DeviceBlock::~DeviceBlock() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}
DeviceBlock::DeviceBlock(DeviceBlock&& o) noexcept : ptr_(o.ptr_), bytes_(o.bytes_) {
  o.ptr_ = nullptr;
  o.bytes_ = 0;
}
DeviceBlock& DeviceBlock::operator=(DeviceBlock&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = o.ptr_;
    bytes_ = o.bytes_;
    o.ptr_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}

// ---- GPT2Cuda ----------------------------------------------------------------------------------

GPT2Config GPT2Cuda::device_config(const GPT2Config& cfg) {
  GPT2Config d = cfg;
  d.vocab_size = (cfg.vocab_size + kVocabMultiple - 1) / kVocabMultiple * kVocabMultiple;
  return d;
}

GPT2CudaMemory GPT2Cuda::plan(const GPT2Config& cfg, int B, int T, Role role) {
  GPT2CudaMemory m;
  const size_t P = device_config(cfg).num_parameters();
  m.weights = P * sizeof(bf16);
  Acts a;
  if (role == Role::Student) {
    m.master_weights = P * sizeof(float);
    m.gradients = P * sizeof(float);
    m.moments = 2 * P * sizeof(float);
    m.activations = carve_acts(a, nullptr, cfg, B, T, true);
  } else {
    m.scratch = carve_acts(a, nullptr, cfg, B, T, false);
  }
  return m;
}

GPT2Cuda::GPT2Cuda(const GPT2& cpu, int B, int T, Role role, cudaStream_t stream)
    : cfg_(cpu.config()),
      dcfg_(device_config(cpu.config())),
      table_(gpt2_param_table(dcfg_)),
      cpu_table_(cpu.table()),
      layout_(gpt2_layout(dcfg_, table_)),
      P_(dcfg_.num_parameters()),
      role_(role),
      maxB_(B),
      maxT_(T),
      stream_(stream) {
  const int C = cfg_.n_embd, hs = cfg_.n_embd / cfg_.n_head;
  KD_REQUIRE(
      B >= 1 && T >= 1 && T <= cfg_.block_size,
      "GPT2Cuda: need B >= 1 and 1 <= T <= block_size (" + std::to_string(cfg_.block_size) + ")");
  KD_REQUIRE(C % 8 == 0 && (hs == 64 || hs == 128),
             "GPT2Cuda: the GPU backend needs n_embd a multiple of 8 and a head size (n_embd / "
             "n_head) of 64 or 128; this model has n_embd " +
                 std::to_string(C) + " and head size " + std::to_string(hs));
  mem_ = plan(cfg_, B, T, role);
  weights_block_ = DeviceBlock(mem_.weights);
  weights_ = reinterpret_cast<bf16*>(weights_block_.get());
  if (role == Role::Student) {
    master_block_ = DeviceBlock(mem_.master_weights);
    grads_block_ = DeviceBlock(mem_.gradients);
    moments_block_ = DeviceBlock(mem_.moments);
    acts_block_ = DeviceBlock(mem_.activations);
    master_ = reinterpret_cast<float*>(master_block_.get());
    grads_ = reinterpret_cast<float*>(grads_block_.get());
    m_ = reinterpret_cast<float*>(moments_block_.get());
    v_ = m_ + P_;
    opt_end_ = P_;
    carve_acts(a_, acts_block_.get(), cfg_, B, T, true);
    KD_CUDA_CHECK(cudaMemset(grads_, 0, P_ * sizeof(float)));
    KD_CUDA_CHECK(cudaMemset(m_, 0, 2 * P_ * sizeof(float)));
  } else {
    acts_block_ = DeviceBlock(mem_.scratch);
    carve_acts(a_, acts_block_.get(), cfg_, B, T, false);
  }
  copy_params_from(cpu);
}

GPT2Cuda::~GPT2Cuda() = default;

void GPT2Cuda::check_shape(const char* what, int B, int T) const {
  KD_REQUIRE(B >= 1 && T >= 1 && B <= maxB_ && T <= maxT_,
             std::string(what) + ": (B, T) = (" + std::to_string(B) + ", " + std::to_string(T) +
                 ") outside the planned (" + std::to_string(maxB_) + ", " + std::to_string(maxT_) +
                 ")");
}

GPT2Cuda::LayerW GPT2Cuda::layer_w(int l) const {
  return layout_.layer(static_cast<const bf16*>(weights_), l);
}

GPT2Cuda::LayerG GPT2Cuda::layer_g(int l) const {
  return layout_.layer(grads_, l);
}

// The tensors outside the blocks, by their HF names.
namespace {
size_t outer_offset(const GPT2Layout& L, const std::string& n) {
  if (n == "wte.weight") return L.wte;
  if (n == "wpe.weight") return L.wpe;
  if (n == "ln_f.weight") return L.lnfw;
  KD_REQUIRE(n == "ln_f.bias", "GPT2Cuda: " + n + " is not a tensor outside the blocks");
  return L.lnfb;
}
}  // namespace

const bf16* GPT2Cuda::pw(const char* name) const {
  return weights_ + outer_offset(layout_, name);
}

float* GPT2Cuda::pg(const char* name) const {
  return grads_ + outer_offset(layout_, name);
}

void GPT2Cuda::forward_hidden(const int32_t* tokens_dev, int B, int T) {
  KD_REQUIRE(role_ == Role::Student, "GPT2Cuda::forward_hidden: a teacher has no training forward");
  check_shape("GPT2Cuda::forward_hidden", B, T);
  B_ = B;
  T_ = T;
  fwd_tokens_ = tokens_dev;
  const int N = B * T, C = cfg_.n_embd, NH = cfg_.n_head, L = cfg_.n_layer;
  const size_t S = static_cast<size_t>(maxB_) * maxT_;  // per-layer stride in rows
  const size_t SC = S * C;
  cudaStream_t s = stream_;
  const Acts& a = a_;

  cuda::encoder_forward(a.encoded, tokens_dev, pw("wte.weight"), pw("wpe.weight"), B, T, C, s);
  {
    const LayerW w0 = layer_w(0);
    cuda::layernorm_forward(a.ln1, a.ln1_mean, a.ln1_rstd, a.encoded, w0.ln1w, w0.ln1b, N, C, s);
  }
  for (int l = 0; l < L; ++l) {
    KD_RANGE_P("layer", Phase::Layer, l);
    const LayerW w = layer_w(l);
    const bf16* residual = l == 0 ? a.encoded : a.res3 + (l - 1) * SC;
    bf16* ln1 = a.ln1 + l * SC;
    bf16* qkv = a.qkv + l * 3 * SC;
    bf16* atty = a.atty + l * SC;
    float* lse = a.lse + static_cast<size_t>(l) * NH * S;
    bf16* res2 = a.res2 + l * SC;
    bf16* ln2 = a.ln2 + l * SC;
    bf16* fch = a.fch + l * 4 * SC;
    bf16* fch_gelu = a.fch_gelu + l * 4 * SC;
    bf16* res3 = a.res3 + l * SC;
    cuda::matmul_forward(qkv, ln1, w.qkvw, w.qkvb, N, C, 3 * C, Layout::InOut, false, nullptr, s);
    cuda::attention_forward(atty, lse, qkv, B, T, C, NH, s);
    cuda::matmul_forward(a.proj, atty, w.attprojw, w.attprojb, N, C, C, Layout::InOut, false,
                         nullptr, s);
    // res2 = residual + attproj; ln2 = layernorm(res2)
    cuda::fused_residual_layernorm_forward(res2, ln2, a.ln2_mean + l * S, a.ln2_rstd + l * S,
                                           residual, a.proj, w.ln2w, w.ln2b, N, C, s);
    // fch = ln2 · W + b; fch_gelu = gelu(fch)
    cuda::matmul_forward(fch_gelu, ln2, w.fcw, w.fcb, N, C, 4 * C, Layout::InOut, true, fch, s);
    cuda::matmul_forward(a.proj, fch_gelu, w.fcprojw, w.fcprojb, N, 4 * C, C, Layout::InOut, false,
                         nullptr, s);
    // res3 = res2 + fcproj, then the next LayerNorm: ln_1 of layer l+1, or ln_f after the last.
    if (l + 1 < L) {
      const LayerW wn = layer_w(l + 1);
      cuda::fused_residual_layernorm_forward(res3, ln1 + SC, a.ln1_mean + (l + 1) * S,
                                             a.ln1_rstd + (l + 1) * S, res2, a.proj, wn.ln1w,
                                             wn.ln1b, N, C, s);
    } else {
      cuda::fused_residual_layernorm_forward(res3, a.lnf, a.lnf_mean, a.lnf_rstd, res2, a.proj,
                                             pw("ln_f.weight"), pw("ln_f.bias"), N, C, s);
    }
  }
}

size_t GPT2Cuda::layer_offset(int l) const {
  return layout_.layers.at(static_cast<size_t>(l)).ln1w;
}

void GPT2Cuda::backward_hidden(const bf16* dhidden, const GPT2::LayerDone& layer_done) {
  KD_REQUIRE(role_ == Role::Student, "GPT2Cuda::backward_hidden: a teacher is frozen");
  KD_REQUIRE(B_ != 0, "GPT2Cuda::backward_hidden: call forward_hidden() first");
  const int B = B_, T = T_, N = B * T, C = cfg_.n_embd, NH = cfg_.n_head, L = cfg_.n_layer;
  const size_t NC = static_cast<size_t>(N) * C;
  const size_t S = static_cast<size_t>(maxB_) * maxT_;
  const size_t SC = S * C;
  cudaStream_t s = stream_;
  const Acts& a = a_;

  // dres = d(res3 of the last layer), built by the ln_f backward (which adds) from d(lnf); dhidden
  // may be dC (dhidden()), which the layers below then reuse as scratch.
  KD_CUDA_CHECK(cudaMemsetAsync(a.dres, 0, NC * sizeof(bf16), s));
  cuda::layernorm_backward(a.dres, pg("ln_f.weight"), pg("ln_f.bias"), dhidden,
                           a.res3 + (L - 1) * SC, pw("ln_f.weight"), a.lnf_mean, a.lnf_rstd, N, C,
                           s);
  for (int l = L - 1; l >= 0; --l) {
    KD_RANGE_P("layer", Phase::Layer, l);
    const LayerW w = layer_w(l);
    const LayerG gr = layer_g(l);
    const bf16* residual = l == 0 ? a.encoded : a.res3 + (l - 1) * SC;
    const bf16* ln1 = a.ln1 + l * SC;
    const bf16* qkv = a.qkv + l * 3 * SC;
    const bf16* atty = a.atty + l * SC;
    const float* lse = a.lse + static_cast<size_t>(l) * NH * S;
    const bf16* res2 = a.res2 + l * SC;
    const bf16* ln2 = a.ln2 + l * SC;
    const bf16* fch = a.fch + l * 4 * SC;
    const bf16* fch_gelu = a.fch_gelu + l * 4 * SC;

    // res3 = res2 + fcproj: d(fcproj) = d(res3) = dres, and dres flows on to res2 unchanged.
    // fcproj = gelu(fch) · W + b
    cuda::matmul_backward(a.d4a, gr.fcprojw, gr.fcprojb, a.dres, fch_gelu, w.fcprojw, N, 4 * C, C,
                          Layout::InOut, s, false);
    KD_CUDA_CHECK(cudaMemsetAsync(a.d4b, 0, 4 * NC * sizeof(bf16), s));
    cuda::gelu_backward(a.d4b, fch, a.d4a, 4 * NC, s);
    // fch = ln2 · W + b
    cuda::matmul_backward(a.dC, gr.fcw, gr.fcb, a.d4b, ln2, w.fcw, N, C, 4 * C, Layout::InOut, s,
                          false);
    // ln2 = layernorm(res2): dres becomes d(res2)
    cuda::layernorm_backward(a.dres, gr.ln2w, gr.ln2b, a.dC, res2, w.ln2w, a.ln2_mean + l * S,
                             a.ln2_rstd + l * S, N, C, s);
    // res2 = residual + attproj; attproj = atty · W + b
    cuda::matmul_backward(a.dC, gr.attprojw, gr.attprojb, a.dres, atty, w.attprojw, N, C, C,
                          Layout::InOut, s, false);
    bf16* dqkv = a.d4a;  // [N,3C] inside the [N,4C] buffer, free again; the backward adds
    KD_CUDA_CHECK(cudaMemsetAsync(dqkv, 0, NC * 3 * sizeof(bf16), s));
    cuda::attention_backward(dqkv, a.dC, qkv, atty, lse, B, T, C, NH, s, a.att_scratch);
    // qkv = ln1 · W + b
    cuda::matmul_backward(a.dC, gr.qkvw, gr.qkvb, dqkv, ln1, w.qkvw, N, C, 3 * C, Layout::InOut, s,
                          false);
    // ln1 = layernorm(residual): dres becomes d(residual), the previous layer's d(res3)
    cuda::layernorm_backward(a.dres, gr.ln1w, gr.ln1b, a.dC, residual, w.ln1w, a.ln1_mean + l * S,
                             a.ln1_rstd + l * S, N, C, s);
    if (layer_done) layer_done(l);
  }
  cuda::encoder_backward(pg("wte.weight"), pg("wpe.weight"), a.dres, fwd_tokens_, B, T, C, s);
}

const bf16* GPT2Cuda::forward_inference_hidden(const int32_t* tokens_dev, int B, int T) {
  check_shape("GPT2Cuda::forward_inference_hidden", B, T);
  const int N = B * T, C = cfg_.n_embd, NH = cfg_.n_head, L = cfg_.n_layer;
  cudaStream_t s = stream_;
  const Acts& a = a_;
  // One layer of scratch (a student lends the first layer of its activations): x is the residual
  // stream, x2 the mid-layer residual, ln the current LayerNorm output.
  bf16 *x = a.encoded, *x2 = a.res2, *ln = a.ln1;
  float *mean = a.ln1_mean, *rstd = a.ln1_rstd;
  cuda::encoder_forward(x, tokens_dev, pw("wte.weight"), pw("wpe.weight"), B, T, C, s);
  {
    const LayerW w0 = layer_w(0);
    cuda::layernorm_forward(ln, mean, rstd, x, w0.ln1w, w0.ln1b, N, C, s);
  }
  for (int l = 0; l < L; ++l) {
    KD_RANGE_P("layer", Phase::Layer, l);
    const LayerW w = layer_w(l);
    cuda::matmul_forward(a.qkv, ln, w.qkvw, w.qkvb, N, C, 3 * C, Layout::InOut, false, nullptr, s);
    cuda::attention_forward(a.atty, a.lse, a.qkv, B, T, C, NH, s);
    cuda::matmul_forward(a.proj, a.atty, w.attprojw, w.attprojb, N, C, C, Layout::InOut, false,
                         nullptr, s);
    cuda::fused_residual_layernorm_forward(x2, ln, mean, rstd, x, a.proj, w.ln2w, w.ln2b, N, C, s);
    cuda::matmul_forward(a.fch_gelu, ln, w.fcw, w.fcb, N, C, 4 * C, Layout::InOut, true, a.fch, s);
    cuda::matmul_forward(a.proj, a.fch_gelu, w.fcprojw, w.fcprojb, N, 4 * C, C, Layout::InOut,
                         false, nullptr, s);
    const bf16* nw = l + 1 < L ? layer_w(l + 1).ln1w : pw("ln_f.weight");
    const bf16* nb = l + 1 < L ? layer_w(l + 1).ln1b : pw("ln_f.bias");
    cuda::fused_residual_layernorm_forward(x, ln, mean, rstd, x2, a.proj, nw, nb, N, C, s);
  }
  return ln;  // ln_f's output
}

void GPT2Cuda::zero_grad() {
  if (grads_ != nullptr) KD_CUDA_CHECK(cudaMemsetAsync(grads_, 0, P_ * sizeof(float), stream_));
}

// ---- host copies -------------------------------------------------------------------------------

// The CPU table's tensors and the device table's are the same, in the same order; only wte has
// more rows on the device (zero). Copying tensor by tensor the CPU's element count maps one layout
// onto the other.
std::vector<float> GPT2Cuda::to_device_layout(const std::vector<float>& cpu_values) const {
  KD_REQUIRE(cpu_values.size() == cfg_.num_parameters(),
             "GPT2Cuda: " + std::to_string(cfg_.num_parameters()) + " values expected, got " +
                 std::to_string(cpu_values.size()));
  std::vector<float> dev(P_, 0.0f);
  for (size_t i = 0; i < table_.size(); ++i)
    std::copy_n(cpu_values.begin() + static_cast<std::ptrdiff_t>(cpu_table_[i].offset),
                cpu_table_[i].numel, dev.begin() + static_cast<std::ptrdiff_t>(table_[i].offset));
  return dev;
}

std::vector<float> GPT2Cuda::to_cpu_layout(const std::vector<float>& dev_values) const {
  KD_REQUIRE(dev_values.size() == P_, "GPT2Cuda: " + std::to_string(P_) + " values expected");
  std::vector<float> cpu(cfg_.num_parameters());
  for (size_t i = 0; i < table_.size(); ++i)
    std::copy_n(dev_values.begin() + static_cast<std::ptrdiff_t>(table_[i].offset),
                cpu_table_[i].numel,
                cpu.begin() + static_cast<std::ptrdiff_t>(cpu_table_[i].offset));
  return cpu;
}

std::vector<float> GPT2Cuda::download(const float* dev) const {
  std::vector<float> out(P_);
  KD_CUDA_CHECK(cudaStreamSynchronize(stream_));
  KD_CUDA_CHECK(cudaMemcpy(out.data(), dev, P_ * sizeof(float), cudaMemcpyDeviceToHost));
  return out;
}

std::vector<float> GPT2Cuda::download_optimizer(const float* dev) const {
  std::vector<float> out(P_, 0.0f);
  KD_CUDA_CHECK(cudaStreamSynchronize(stream_));
  KD_CUDA_CHECK(cudaMemcpy(out.data() + opt_begin_, dev, (opt_end_ - opt_begin_) * sizeof(float),
                           cudaMemcpyDeviceToHost));
  return out;
}

std::vector<float> GPT2Cuda::download_master_device() const {
  KD_REQUIRE(master_ != nullptr, "GPT2Cuda::download_master_device: a teacher has none");
  return download_optimizer(master_);
}

void GPT2Cuda::shard_optimizer_state(size_t begin, size_t end) {
  KD_REQUIRE(role_ == Role::Student, "GPT2Cuda::shard_optimizer_state: a teacher has none");
  KD_REQUIRE(begin <= end && end <= P_, "GPT2Cuda::shard_optimizer_state: range beyond P");
  KD_REQUIRE(opt_begin_ == 0 && opt_end_ == P_,
             "GPT2Cuda::shard_optimizer_state: the optimizer state is already sharded");
  const size_t n = end - begin;
  KD_CUDA_CHECK(cudaStreamSynchronize(stream_));
  DeviceBlock master(std::max<size_t>(n, 1) * sizeof(float));
  DeviceBlock moments(std::max<size_t>(2 * n, 1) * sizeof(float));
  float* mst = reinterpret_cast<float*>(master.get());
  float* mom = reinterpret_cast<float*>(moments.get());
  if (n > 0) {
    KD_CUDA_CHECK(cudaMemcpy(mst, master_ + begin, n * sizeof(float), cudaMemcpyDeviceToDevice));
    KD_CUDA_CHECK(cudaMemcpy(mom, m_ + begin, n * sizeof(float), cudaMemcpyDeviceToDevice));
    KD_CUDA_CHECK(cudaMemcpy(mom + n, v_ + begin, n * sizeof(float), cudaMemcpyDeviceToDevice));
  }
  master_block_ = std::move(master);  // frees the whole-model buffers
  moments_block_ = std::move(moments);
  master_ = mst;
  m_ = mom;
  v_ = mom + n;
  opt_begin_ = begin;
  opt_end_ = end;
  mem_.master_weights = n * sizeof(float);
  mem_.moments = 2 * n * sizeof(float);
}

void GPT2Cuda::copy_params_from(const GPT2& cpu) {
  KD_REQUIRE(cpu.config() == cfg_ && cpu.params.size() == cfg_.num_parameters(),
             "GPT2Cuda::copy_params_from: a model of another configuration");
  KD_CUDA_CHECK(cudaStreamSynchronize(stream_));
  const std::vector<float> dev = to_device_layout(cpu.params);  // the padding rows zero
  std::vector<bf16> w16(P_);
  for (size_t i = 0; i < P_; ++i) w16[i] = __float2bfloat16_rn(dev[i]);
  KD_CUDA_CHECK(cudaMemcpy(weights_, w16.data(), P_ * sizeof(bf16), cudaMemcpyHostToDevice));
  if (master_ != nullptr && opt_end_ > opt_begin_)
    KD_CUDA_CHECK(cudaMemcpy(master_, dev.data() + opt_begin_,
                             (opt_end_ - opt_begin_) * sizeof(float), cudaMemcpyHostToDevice));
}

void GPT2Cuda::copy_params_to(GPT2& cpu) const {
  KD_REQUIRE(cpu.config() == cfg_ && cpu.params.size() == cfg_.num_parameters(),
             "GPT2Cuda::copy_params_to: a model of another configuration");
  if (master_ != nullptr && opt_begin_ == 0 && opt_end_ == P_) {
    cpu.params = to_cpu_layout(download(master_));
    return;
  }
  KD_CUDA_CHECK(cudaStreamSynchronize(stream_));
  std::vector<bf16> w16(P_);
  KD_CUDA_CHECK(cudaMemcpy(w16.data(), weights_, P_ * sizeof(bf16), cudaMemcpyDeviceToHost));
  std::vector<float> dev(P_);
  for (size_t i = 0; i < P_; ++i) dev[i] = __bfloat162float(w16[i]);
  if (master_ != nullptr && opt_end_ > opt_begin_)  // a sharded student: its fp32 slice
    KD_CUDA_CHECK(cudaMemcpy(dev.data() + opt_begin_, master_,
                             (opt_end_ - opt_begin_) * sizeof(float), cudaMemcpyDeviceToHost));
  cpu.params = to_cpu_layout(dev);
}

std::vector<float> GPT2Cuda::download_grads() const {
  KD_REQUIRE(grads_ != nullptr, "GPT2Cuda::download_grads: a teacher has none");
  return to_cpu_layout(download(grads_));
}

std::vector<float> GPT2Cuda::download_master() const {
  KD_REQUIRE(master_ != nullptr, "GPT2Cuda::download_master: a teacher has none");
  return to_cpu_layout(download_optimizer(master_));
}

std::vector<float> GPT2Cuda::download_vocab_padding() const {
  const size_t C = static_cast<size_t>(cfg_.n_embd);
  const size_t first = layout_.wte + static_cast<size_t>(cfg_.vocab_size) * C;
  const size_t n = static_cast<size_t>(dcfg_.vocab_size - cfg_.vocab_size) * C;
  std::vector<float> out;
  for (const float* buf : {master_, grads_, m_, v_}) {
    if (buf == nullptr) continue;
    const std::vector<float> all = buf == grads_ ? download(buf) : download_optimizer(buf);
    out.insert(out.end(), all.begin() + static_cast<std::ptrdiff_t>(first),
               all.begin() + static_cast<std::ptrdiff_t>(first + n));
  }
  std::vector<bf16> w16(n);
  if (n > 0)
    KD_CUDA_CHECK(
        cudaMemcpy(w16.data(), weights_ + first, n * sizeof(bf16), cudaMemcpyDeviceToHost));
  for (const bf16 w : w16) out.push_back(__bfloat162float(w));
  return out;
}

std::vector<float> GPT2Cuda::download_hidden(int B, int T) const {
  KD_REQUIRE(role_ == Role::Student, "GPT2Cuda::download_hidden: a teacher keeps no activations");
  check_shape("GPT2Cuda::download_hidden", B, T);
  const size_t n = static_cast<size_t>(B) * T * cfg_.n_embd;
  std::vector<bf16> h(n);
  KD_CUDA_CHECK(cudaStreamSynchronize(stream_));
  KD_CUDA_CHECK(cudaMemcpy(h.data(), a_.lnf, n * sizeof(bf16), cudaMemcpyDeviceToHost));
  std::vector<float> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = __bfloat162float(h[i]);
  return out;
}

void GPT2Cuda::download_moments(std::vector<float>& m, std::vector<float>& v) const {
  KD_REQUIRE(m_ != nullptr, "GPT2Cuda::download_moments: a teacher has none");
  m = to_cpu_layout(download_optimizer(m_));
  v = to_cpu_layout(download_optimizer(v_));
}

void GPT2Cuda::upload_moments(const std::vector<float>& m, const std::vector<float>& v) {
  KD_REQUIRE(m_ != nullptr, "GPT2Cuda::upload_moments: a teacher has none");
  const std::vector<float> dm = to_device_layout(m), dv = to_device_layout(v);
  KD_CUDA_CHECK(cudaStreamSynchronize(stream_));
  const size_t n = opt_end_ - opt_begin_;
  KD_CUDA_CHECK(cudaMemcpy(m_, dm.data() + opt_begin_, n * sizeof(float), cudaMemcpyHostToDevice));
  KD_CUDA_CHECK(cudaMemcpy(v_, dv.data() + opt_begin_, n * sizeof(float), cudaMemcpyHostToDevice));
}

}  // namespace kd

#endif  // KD_WITH_CUDA
