// The GPT-2 model on the GPU: the same parameter table, op order and conventions as the CPU model
// (model/gpt2.h), with bf16 weights and activations, fp32 master weights, gradients and AdamW
// moments. Host orchestration only: every op is a kd::cuda launcher (cuda/<op>.cuh) queued on the
// model's stream; nothing here synchronises the host unless its comment says so.
//
// Memory is planned once from (config, B, T) and allocated as ONE device allocation per category
// (see docs/gpu_backend.md): no cudaMalloc or cudaFree happens inside a step. A student holds
// weights (bf16), master weights (fp32), gradients (fp32), moments (fp32 m and v) and activations;
// a teacher holds its bf16 weights and one layer of scratch.
//
// Everything in this header exists only in builds with the CUDA backend (KD_WITH_CUDA).
#pragma once

#ifdef KD_WITH_CUDA

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "engine/ops/ops.h"
#include "model/gpt2.h"

// The kd::cuda launchers this model calls (host declarations; the device code in these headers is
// compiled only by nvcc).
#include "cuda/adamw.cuh"
#include "cuda/attention.cuh"
#include "cuda/encoder.cuh"
#include "cuda/gelu.cuh"
#include "cuda/layernorm.cuh"
#include "cuda/matmul.cuh"
#include "cuda/residual.cuh"

namespace kd {

// Owns one device allocation (cudaMalloc'ed once, freed on destruction).
class DeviceBlock {
 public:
  DeviceBlock() = default;
  explicit DeviceBlock(size_t bytes);
  ~DeviceBlock();
  DeviceBlock(const DeviceBlock&) = delete;
  DeviceBlock& operator=(const DeviceBlock&) = delete;
  DeviceBlock(DeviceBlock&& o) noexcept;
  DeviceBlock& operator=(DeviceBlock&& o) noexcept;
  char* get() const { return ptr_; }
  size_t bytes() const { return bytes_; }

 private:
  char* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Bytes of each device category of one model at (B, T).
struct GPT2CudaMemory {
  size_t weights = 0;         // bf16 copy used by forward/backward
  size_t master_weights = 0;  // fp32 (student only)
  size_t gradients = 0;       // fp32 (student only)
  size_t moments = 0;         // fp32 m and v (student only)
  size_t activations = 0;     // training activations + backward scratch (student), or 0
  size_t scratch = 0;         // one layer of inference scratch (teacher), or 0
  size_t total() const {
    return weights + master_weights + gradients + moments + activations + scratch;
  }
};

class GPT2Cuda {
 public:
  enum class Role {
    Student,  // trainable: forward (keeps activations), backward, optimizer state
    Teacher,  // frozen: bf16 weights and forward_inference_hidden only
  };

  // Uploads the CPU model's parameters (fp32 -> master, bf16 weights) and plans every buffer for
  // micro-batches of up to B sequences of up to T tokens. C must be a multiple of 8 and the head
  // size C / n_head 64 or 128 (the attention kernel's sizes). Synchronises once (the upload).
  GPT2Cuda(const GPT2& cpu, int B, int T, Role role, cudaStream_t stream);
  ~GPT2Cuda();
  GPT2Cuda(const GPT2Cuda&) = delete;
  GPT2Cuda& operator=(const GPT2Cuda&) = delete;

  // The vocabulary is padded on the device to a multiple of kVocabMultiple (50257 -> 50304, as
  // llm.c does), so that every leading dimension of the LM head's products (wte [Vp, C], the logits
  // [rows, Vp]) is 16-byte aligned for cuBLASLt and the loss kernel's vector loads. The padding
  // rows of wte are zero, never get probability mass (the loss reads the first V columns only and
  // writes a zero gradient on the others), and so stay zero through AdamW (zero gradient, zero
  // moments, and weight decay of zero is zero). Everything that leaves the device (checkpoints,
  // gradients and moments for tests) is in the CPU model's V-row layout.
  static constexpr int kVocabMultiple = 64;
  // cfg with its vocabulary padded: the layout of the device buffers.
  static GPT2Config device_config(const GPT2Config& cfg);

  // What every category would take, without allocating anything.
  static GPT2CudaMemory plan(const GPT2Config& cfg, int B, int T, Role role);
  const GPT2CudaMemory& memory() const { return mem_; }

  const GPT2Config& config() const { return cfg_; }  // the CPU model's (V rows)
  // The device buffers' table and parameter count (wte with vocab_rows() rows).
  const std::vector<ParamInfo>& table() const { return table_; }
  size_t num_parameters() const { return P_; }
  int vocab_rows() const { return dcfg_.vocab_size; }
  Role role() const { return role_; }
  int max_B() const { return maxB_; }
  int max_T() const { return maxT_; }
  cudaStream_t stream() const { return stream_; }

  // Training forward on device tokens [B,T] (B <= max_B, T <= max_T; tokens in [0, V)), stopped at
  // the final LayerNorm: keeps the activations backward_hidden() needs and leaves ln_f's output
  // [B,T,C] (bf16) in hidden(). No logits are formed: the LM head and the loss are
  // cuda::lm_head_kd_loss's, chunk by chunk. Student only.
  void forward_hidden(const int32_t* tokens_dev, int B, int T);
  const cuda::bf16* hidden() const { return a_.lnf; }
  // A [B,T,C] bf16 buffer for d(ln_f output): the caller may fill it (lm_head_kd_loss adds into it)
  // and pass it to backward_hidden, which then reuses it as scratch.
  cuda::bf16* dhidden() const { return a_.dC; }

  // Backward of the last forward_hidden from d(ln_f output) [B,T,C] bf16: ADDS into the fp32
  // gradients (wte.weight must already hold the LM head's part, which lm_head_kd_loss adds; the
  // embedding's is added here). The device tokens passed to forward_hidden must still hold the
  // same ids. layer_done(l), when given, is called on the host right after layer l's kernels are
  // queued (l = L-1 down to 0): from there on the stream holds everything that writes layer l's
  // gradients (the embedding's, wte and wpe, come after layer 0's). The CUDA backend starts a
  // gradient bucket's collective from it (GPT2::LayerDone, as the CPU model does).
  void backward_hidden(const cuda::bf16* dhidden, const GPT2::LayerDone& layer_done = nullptr);
  // Where layer l's parameters begin in the device layout (h.l.ln_1.weight); the layers are
  // contiguous, h.0 .. h.{L-1}, after wte and wpe and before ln_f.
  size_t layer_offset(int l) const;

  // Inference forward (any role) stopped at the final LayerNorm; returns ln_f's output [B,T,C]
  // bf16, which lives in scratch until the next call (a student lends its activation buffers, a
  // teacher uses its one layer of scratch).
  const cuda::bf16* forward_inference_hidden(const int32_t* tokens_dev, int B, int T);

  // The tied embedding [vocab_rows(),C] (bf16, the LM head's weight) and its fp32 gradient.
  const cuda::bf16* wte() const { return pw("wte.weight"); }
  float* wte_grad() const { return grads_ != nullptr ? pg("wte.weight") : nullptr; }

  // Device buffers of the optimizer (student only), laid out as table(); after
  // shard_optimizer_state(b, e), master(), m() and v() hold parameters [b, e) of that layout only
  // (element 0 is parameter b).
  cuda::bf16* weights() const { return weights_; }
  float* master() const { return master_; }
  float* grads() const { return grads_; }
  float* m() const { return m_; }
  float* v() const { return v_; }
  void zero_grad();  // queued on the stream

  // ZeRO-1 (student): keeps the fp32 master weights and the moments of parameters [begin, end) of
  // the device layout only and frees the rest (memory() shrinks accordingly). Once, before the
  // first step.
  void shard_optimizer_state(size_t begin, size_t end);
  size_t optimizer_begin() const { return opt_begin_; }
  size_t optimizer_end() const { return opt_end_; }
  // The fp32 master weights in the device layout (P floats; with a sharded state its slice in
  // place, zeros elsewhere), and a device-layout vector in the CPU layout.
  std::vector<float> download_master_device() const;
  std::vector<float> to_cpu_layout(const std::vector<float>& dev_values) const;

  // Host copies (synchronise the stream), in the CPU model's layout (V rows of wte): the padding
  // rows are dropped on the way out and zero on the way in. With a sharded optimizer state the
  // master weights and moments are read and written in the slice only: copy_params_to fills the
  // rest from the bf16 weights, download_master and download_moments with zeros.
  void copy_params_to(GPT2& cpu) const;        // master (student) or bf16 (teacher)
  void copy_params_from(const GPT2& cpu);      // master and bf16 weights
  std::vector<float> download_grads() const;   // fp32, CPU layout
  std::vector<float> download_master() const;  // fp32, CPU layout
  // The padding rows of wte (rows V.. of vocab_rows()) in the master weights, gradients, m, v
  // (student) and the bf16 weights, one after the other: all zero when the invariant holds.
  std::vector<float> download_vocab_padding() const;
  std::vector<float> download_hidden(int B, int T) const;  // hidden() as floats [B,T,C]
  void download_moments(std::vector<float>& m, std::vector<float>& v) const;
  void upload_moments(const std::vector<float>& m, const std::vector<float>& v);

 private:
  using LayerW = LayerTensors<const cuda::bf16*>;
  using LayerG = LayerTensors<float*>;
  LayerW layer_w(int l) const;
  LayerG layer_g(int l) const;
  const cuda::bf16* pw(const char* name) const;  // wte, wpe, ln_f.*
  float* pg(const char* name) const;
  void check_shape(const char* what, int B, int T) const;
  std::vector<float> to_device_layout(const std::vector<float>& cpu_values) const;
  std::vector<float> download(const float* dev) const;  // P_ floats of a device buffer
  // P_ floats of an optimizer buffer (master_, m_, v_): the slice in place, zeros elsewhere.
  std::vector<float> download_optimizer(const float* dev) const;

  GPT2Config cfg_, dcfg_;  // the CPU model's configuration, and the padded one of the device
  std::vector<ParamInfo> table_, cpu_table_;
  GPT2Layout layout_;
  size_t P_ = 0;
  size_t opt_begin_ = 0, opt_end_ = 0;  // the parameters master_, m_ and v_ hold
  Role role_;
  int maxB_ = 0, maxT_ = 0;
  cudaStream_t stream_ = nullptr;
  GPT2CudaMemory mem_;

  // One allocation per category.
  DeviceBlock weights_block_, master_block_, grads_block_, moments_block_, acts_block_;
  cuda::bf16* weights_ = nullptr;
  float *master_ = nullptr, *grads_ = nullptr, *m_ = nullptr, *v_ = nullptr;

  // Activations (student), carved from acts_block_; per-layer tensors are [L, maxB*maxT, ...] and
  // layer l of a (B,T) call starts at l * maxB*maxT*width. The teacher's scratch uses the same
  // struct with L = 1 (one layer reused).
  struct Acts {
    cuda::bf16 *encoded = nullptr, *ln1 = nullptr, *qkv = nullptr, *atty = nullptr, *res2 = nullptr,
               *ln2 = nullptr, *fch = nullptr, *fch_gelu = nullptr, *res3 = nullptr,
               *proj = nullptr, *lnf = nullptr;
    float *ln1_mean = nullptr, *ln1_rstd = nullptr, *ln2_mean = nullptr, *ln2_rstd = nullptr,
          *lse = nullptr, *lnf_mean = nullptr, *lnf_rstd = nullptr;
    // backward scratch (student): d residual stream, d [N,C], two [N,4C] (the second also dqkv)
    cuda::bf16 *dres = nullptr, *dC = nullptr, *d4a = nullptr, *d4b = nullptr;
    float* att_scratch = nullptr;
  } a_;
  const int32_t* fwd_tokens_ = nullptr;
  int B_ = 0, T_ = 0;
};

}  // namespace kd

#endif  // KD_WITH_CUDA
