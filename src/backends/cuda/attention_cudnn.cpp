// Dense causal prefill through cuDNN's fused attention (the cuDNN frontend's SDPA graph; on Hopper it runs
// cuDNN's wgmma/TMA flash-attention kernels). libcudnn is opened at run time (the frontend's dynamic-loading
// shim), so the binary runs, falling back to our own kernel, where cuDNN is missing.
//
// Plans are built per shape (query rows, visible keys, heads, strides) and kept in a small cache: building
// one costs milliseconds, so repeated shapes (a benchmark, equal prefill chunks) pay it once.
#include "backends/cuda/attention_cuda.h"

#if HIPSERVE_HAVE_CUDNN

#include <cudnn_frontend.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>
#include <unordered_map>

// The frontend's dynamic-loading shim resolves every cuDNN call through this handle, which the program opens
// (libcudart, already linked, it opens itself).
namespace cudnn_frontend {
void* cudnn_dlhandle = nullptr;
}

namespace hs::cuda {
namespace {

namespace fe = cudnn_frontend;

// Tensor uids of the variant pack.
enum : int64_t { kUidQ = 1, kUidK = 2, kUidV = 3, kUidO = 4, kUidSeqQ = 5, kUidSeqKv = 6 };

// What a plan depends on: rows, keys in the plan (padded or exact), heads, dims, strides, scale, padded,
// device.
using PlanKey = std::tuple<int32_t, int32_t, int32_t, int32_t, int32_t, int64_t, int64_t, int64_t, int64_t,
                           float, bool, int>;

struct Plan {
  std::shared_ptr<fe::graph::Graph> graph;
  int64_t workspace_bytes = 0;
};

int32_t pow2_ceil(int32_t x) {
  int32_t p = 1;
  while (p < x && p < (1 << 30)) p <<= 1;
  return p;
}

class CudnnAttention {
 public:
  // Never destroyed: its plans hold cuDNN descriptors, which must not be freed after the CUDA runtime has shut
  // down at exit.
  static CudnnAttention& get() {
    static CudnnAttention* instance = new CudnnAttention;
    return *instance;
  }

  const std::string& status() const { return status_; }
  bool ok() const { return handle_ != nullptr; }

  // p: rows [0, n_q) of a prefill chunk at q_pos0 (checked by the caller).
  cudaError_t run(const AttnParams& p, cudaStream_t stream) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!handle_) return cudaErrorNotSupported;
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || device != device_) return cudaErrorNotSupported;
    // Keys past the last query's position are never visible: s_kv = q_pos0 + n_q. A chunk from position 0 is
    // a plain causal square. A chunk after cached keys runs a plan for s_plan >= s_kv keys (a power of two,
    // within the allocated positions) with the real lengths as padding and the diagonal at the bottom right
    // of the real lengths (query i at position q_pos0 + i).
    const int32_t s_kv = p.q_pos0 + p.n_q;
    const bool padded = p.q_pos0 > 0;
    const int32_t cap = std::max(p.kv_capacity, p.n_kv);
    const int32_t s_plan = padded ? std::min(cap, pow2_ceil(s_kv)) : s_kv;
    const PlanKey key{p.n_q,        s_plan,     p.n_head,         p.n_kv_head,
                      p.head_dim,   p.q_stride, p.kv_head_stride, p.kv_pos_stride,
                      p.out_stride, p.scale,    padded,           device};
    Plan* plan = find_or_build(key, p, s_plan, padded);
    if (!plan) return cudaErrorNotSupported;
    // Out of memory here is not fatal: the caller runs our kernel (and the CUDA error is cleared for it).
    auto alloc = [](void** ptr, size_t bytes) {
      if (cudaMalloc(ptr, bytes) == cudaSuccess) return true;
      cudaGetLastError();
      *ptr = nullptr;
      return false;
    };
    if (plan->workspace_bytes > workspace_bytes_) {
      if (workspace_) cudaFree(workspace_);
      workspace_bytes_ = 0;
      if (!alloc(&workspace_, size_t(plan->workspace_bytes))) return cudaErrorNotSupported;
      workspace_bytes_ = plan->workspace_bytes;
    }
    if (padded) {
      if (!seq_lens_ && !alloc(reinterpret_cast<void**>(&seq_lens_), 2 * sizeof(int32_t)))
        return cudaErrorNotSupported;
      // From pageable memory: the copy is staged before the call returns, so `lens` may go out of scope.
      const int32_t lens[2] = {p.n_q, s_kv};
      if (cudaError_t e = cudaMemcpyAsync(seq_lens_, lens, sizeof(lens), cudaMemcpyHostToDevice, stream);
          e != cudaSuccess)
        return e;
    }
    if (fe::detail::set_stream(handle_, stream) != CUDNN_STATUS_SUCCESS) return cudaErrorUnknown;
    std::unordered_map<int64_t, void*> pack = {{kUidQ, const_cast<uint16_t*>(p.q)},
                                               {kUidK, const_cast<uint16_t*>(p.k)},
                                               {kUidV, const_cast<uint16_t*>(p.v)},
                                               {kUidO, p.out}};
    if (padded) {
      pack[kUidSeqQ] = seq_lens_;
      pack[kUidSeqKv] = seq_lens_ + 1;
    }
    fe::error_t e = plan->graph->execute(handle_, pack, workspace_);
    if (e.is_bad()) {  // nothing was written: the caller runs our kernel instead
      std::fprintf(stderr, "hipserve: cuDNN attention failed, using our kernel: %s\n",
                   e.get_message().c_str());
      cudaGetLastError();
      return cudaErrorNotSupported;
    }
    return cudaGetLastError();
  }

 private:
  CudnnAttention() {
    if (const char* env = std::getenv("HIPSERVE_CUDNN"); env && std::string(env) == "0") {
      status_ = "off (HIPSERVE_CUDNN=0)";
      return;
    }
    for (const char* lib : {"libcudnn.so.9", "libcudnn.so"}) {
      if ((fe::cudnn_dlhandle = dlopen(lib, RTLD_NOW | RTLD_LOCAL))) break;
    }
    if (!fe::cudnn_dlhandle) {
      const char* why = dlerror();
      status_ = std::string("libcudnn.so.9 not found (") + (why ? why : "dlopen failed") + ")";
      return;
    }
    try {
      if (cudaGetDevice(&device_) != cudaSuccess) {
        status_ = "no CUDA device";
        return;
      }
      cudnnHandle_t h = nullptr;
      if (fe::detail::create_handle(&h) != CUDNN_STATUS_SUCCESS) {
        status_ = "cudnnCreate failed";
        return;
      }
      handle_ = h;
      const int64_t v = int64_t(fe::detail::get_backend_version());
      status_ = "cuDNN " + std::to_string(v / 10000) + "." + std::to_string(v / 100 % 100) + "." +
                std::to_string(v % 100) + " (frontend " + std::to_string(CUDNN_FRONTEND_MAJOR_VERSION) + "." +
                std::to_string(CUDNN_FRONTEND_MINOR_VERSION) + ")";
    } catch (const std::exception& ex) {  // the shim throws when a symbol or libcudart cannot be found
      status_ = std::string("not loaded: ") + ex.what();
      handle_ = nullptr;
    }
  }

  Plan* find_or_build(const PlanKey& key, const AttnParams& p, int32_t s_plan, bool padded) {
    for (auto it = plans_.begin(); it != plans_.end(); ++it) {
      if (it->first == key) {
        plans_.splice(plans_.begin(), plans_, it);  // most recently used first
        return it->second ? &*it->second : nullptr;
      }
    }
    std::unique_ptr<Plan> plan;
    try {
      plan = build(p, s_plan, padded);
    } catch (const std::exception& ex) {
      std::fprintf(stderr, "hipserve: cuDNN attention: no plan for %d rows x %d keys: %s\n", p.n_q, s_plan,
                   ex.what());
      plan.reset();
    }
    if (!plan) cudaGetLastError();               // leave no error behind for the fallback kernel's check
    plans_.emplace_front(key, std::move(plan));  // a failed shape is remembered too (no retry per call)
    if (plans_.size() > kMaxPlans) plans_.pop_back();
    return plans_.front().second ? &*plans_.front().second : nullptr;
  }

  std::unique_ptr<Plan> build(const AttnParams& p, int32_t s_plan, bool padded) {
    auto g = std::make_shared<fe::graph::Graph>();
    g->set_io_data_type(fe::DataType_t::BFLOAT16)
        .set_intermediate_data_type(fe::DataType_t::FLOAT)
        .set_compute_data_type(fe::DataType_t::FLOAT);
    const int64_t H = p.n_head, Hkv = p.n_kv_head, D = p.head_dim, nq = p.n_q, nkv = s_plan;
    // [batch 1][head][row][dim]; the batch stride is never used.
    auto Q = g->tensor(fe::graph::Tensor_attributes()
                           .set_name("Q")
                           .set_uid(kUidQ)
                           .set_dim({1, H, nq, D})
                           .set_stride({nq * p.q_stride, D, p.q_stride, 1}));
    auto K = g->tensor(fe::graph::Tensor_attributes()
                           .set_name("K")
                           .set_uid(kUidK)
                           .set_dim({1, Hkv, nkv, D})
                           .set_stride({Hkv * p.kv_head_stride, p.kv_head_stride, p.kv_pos_stride, 1}));
    auto V = g->tensor(fe::graph::Tensor_attributes()
                           .set_name("V")
                           .set_uid(kUidV)
                           .set_dim({1, Hkv, nkv, D})
                           .set_stride({Hkv * p.kv_head_stride, p.kv_head_stride, p.kv_pos_stride, 1}));
    auto opts = fe::graph::SDPA_attributes()
                    .set_name("causal_prefill")
                    .set_generate_stats(false)
                    .set_attn_scale(p.scale);
    if (padded) {
      auto seq_len = [&](const char* name, int64_t uid) {
        return g->tensor(fe::graph::Tensor_attributes()
                             .set_name(name)
                             .set_uid(uid)
                             .set_dim({1, 1, 1, 1})
                             .set_stride({1, 1, 1, 1})
                             .set_data_type(fe::DataType_t::INT32));
      };
      opts.set_padding_mask(true)
          .set_seq_len_q(seq_len("seq_q", kUidSeqQ))
          .set_seq_len_kv(seq_len("seq_kv", kUidSeqKv))
          .set_causal_mask_bottom_right(true);
    } else {
      opts.set_causal_mask(true);
    }
    auto [O, stats] = g->sdpa(Q, K, V, opts);
    (void)stats;
    O->set_output(true)
        .set_uid(kUidO)
        .set_dim({1, H, nq, D})
        .set_stride({nq * p.out_stride, D, p.out_stride, 1});
    auto check = [](fe::error_t e, const char* what) {
      if (e.is_bad()) throw std::runtime_error(std::string(what) + ": " + e.get_message());
    };
    check(g->validate(), "validate");
    check(g->build_operation_graph(handle_), "build_operation_graph");
    check(g->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans");
    check(g->check_support(handle_), "check_support");
    check(g->build_plans(handle_), "build_plans");
    auto plan = std::make_unique<Plan>();
    check(g->get_workspace_size(plan->workspace_bytes), "get_workspace_size");
    plan->graph = std::move(g);
    return plan;
  }

  static constexpr size_t kMaxPlans = 512;  // a 256K prefill in chunks of 2048 rows has 128 shapes
  std::mutex mu_;
  cudnnHandle_t handle_ = nullptr;
  int device_ = -1;
  std::string status_ = "not initialized";
  std::list<std::pair<PlanKey, std::unique_ptr<Plan>>> plans_;
  int32_t* seq_lens_ = nullptr;  // device [n_q, s_kv] of the last padded call
  void* workspace_ = nullptr;
  int64_t workspace_bytes_ = 0;
};

}  // namespace

cudaError_t attention_prefill_dense_cudnn(const AttnParams& p, cudaStream_t stream) {
  if (p.n_q <= 0 || p.q_pos0 < 0 || p.q_pos0 + p.n_q > p.n_kv) return cudaErrorInvalidValue;
  // Rows are independent: cudnn_prefill_rows of them through cuDNN, the rest through our kernel after them.
  const int32_t head = cudnn_prefill_rows(p.n_q);
  AttnParams a = p;
  a.n_q = head;
  if (cudaError_t e = CudnnAttention::get().run(a, stream); e != cudaSuccess) return e;
  if (head == p.n_q) return cudaSuccess;
  AttnParams r = p;
  r.q += int64_t(head) * p.q_stride;
  r.out += int64_t(head) * p.out_stride;
  r.q_pos0 += head;
  r.n_q -= head;
  return attention_prefill_dense(r, stream);
}

bool cudnn_attention_available() {
  return CudnnAttention::get().ok();
}
std::string cudnn_attention_status() {
  return CudnnAttention::get().status();
}

}  // namespace hs::cuda

#else  // built without the cuDNN headers

namespace hs::cuda {
cudaError_t attention_prefill_dense_cudnn(const AttnParams&, cudaStream_t) {
  return cudaErrorNotSupported;
}
bool cudnn_attention_available() {
  return false;
}
std::string cudnn_attention_status() {
  return "not built (no cuDNN headers at configure time)";
}
}  // namespace hs::cuda

#endif
