#include "model/llama.h"

#include <immintrin.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>

#include "backends/cpu/cpu_features.h"
#include "backends/cpu/scratch.h"
#include "ops/activations.h"
#include "ops/attention.h"
#include "ops/norm.h"
#include "ops/rope.h"
#include "util/common.h"
#include "util/progress.h"

namespace hs {

namespace {

// fp32 -> fp16 for n values (F16C, round to nearest even like fp32_to_fp16).
void to_fp16(const float* src, uint16_t* dst, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), h);
  }
  for (; i < n; ++i) dst[i] = fp32_to_fp16(src[i]);
}

std::string dims_str(const std::vector<int64_t>& d) {
  std::string s = "{";
  for (size_t i = 0; i < d.size(); ++i) s += (i ? ", " : "") + std::to_string(d[i]);
  return s + "}";
}

}  // namespace

std::unique_ptr<Model> Model::load(const std::string& path, const LoadOptions& options) {
  std::unique_ptr<Model> m(new Model());
  m->file_ = gguf::File::open(path);
  m->config_ = config_from_gguf(*m->file_);
  m->tokenizer_ = std::make_unique<Tokenizer>(vocab_from_gguf(*m->file_));
  m->bind_weights();

  if (options.prefault) {
    // Touch one byte per page of every tensor so the weights are resident before the first token.
    int64_t total = 0;
    for (const auto& t : m->file_->tensors()) total += int64_t(t.n_bytes);
    ProgressBar bar("loading", total, options.show_progress && ProgressBar::default_enabled());
    int64_t done = 0;
    volatile uint8_t sink = 0;
    for (const auto& t : m->file_->tensors()) {
      for (size_t off = 0; off < t.n_bytes; off += 4096) sink = sink + t.data[off];
      done += int64_t(t.n_bytes);
      bar.update(done);
    }
    bar.finish();
  }
  return m;
}

void Model::bind_weights() {
  const ModelConfig& c = config_;
  const gguf::File& f = *file_;

  auto tensor = [&](const std::string& name, std::vector<int64_t> dims, bool required) -> const gguf::TensorInfo* {
    const gguf::TensorInfo* t = f.find_tensor(name);
    if (!t) {
      HS_CHECK(!required, "model file '%s' lacks tensor '%s'", f.path().c_str(), name.c_str());
      return nullptr;
    }
    HS_CHECK(t->dims == dims, "tensor '%s' has shape %s, expected %s", name.c_str(), dims_str(t->dims).c_str(),
             dims_str(dims).c_str());
    weight_bytes_ += t->n_bytes;
    return t;
  };
  auto matrix = [&](const std::string& name, int64_t cols, int64_t rows) {
    const gguf::TensorInfo* t = tensor(name, {cols, rows}, true);
    const GgmlTypeTraits& tr = ggml_traits(t->type);
    HS_CHECK(tr.supported, "tensor '%s' has type %s, which this engine cannot compute with yet", name.c_str(),
             tr.name);
    cpu::MatmulWeight w;
    w.type = t->type;
    w.data = t->data;
    w.rows = rows;
    w.cols = cols;
    w.row_bytes = t->n_bytes / size_t(rows);
    return w;
  };
  // Vectors are used as f32; other float types are converted once into owned storage.
  auto vec = [&](const std::string& name, int64_t n, bool required) -> const float* {
    const gguf::TensorInfo* t = tensor(name, {n}, required);
    if (!t) return nullptr;
    if (t->type == GgmlType::F32) {
      HS_CHECK(reinterpret_cast<uintptr_t>(t->data) % alignof(float) == 0, "tensor '%s' is misaligned",
               name.c_str());
      return reinterpret_cast<const float*>(t->data);
    }
    HS_CHECK(t->type == GgmlType::F16 || t->type == GgmlType::BF16, "tensor '%s' has type %s, expected F32",
             name.c_str(), ggml_type_name(t->type_id).c_str());
    owned_.emplace_back(size_t(n));
    cpu::dequantize_row(t->type, t->data, owned_.back().data(), n);
    return owned_.back().data();
  };

  // The vocabulary size comes from the embedding matrix; the tokenizer must agree.
  const gguf::TensorInfo* emb = f.find_tensor("token_embd.weight");
  HS_CHECK(emb && emb->dims.size() == 2, "model file '%s' lacks a 2-D tensor 'token_embd.weight'", f.path().c_str());
  const int64_t n_vocab = emb->dims[1];
  HS_CHECK(config_.n_vocab == 0 || config_.n_vocab == n_vocab, "vocab_size %d disagrees with token_embd rows %lld",
           config_.n_vocab, (long long)n_vocab);
  HS_CHECK(tokenizer_->n_vocab() <= n_vocab, "tokenizer has %d tokens but the embedding only %lld rows",
           tokenizer_->n_vocab(), (long long)n_vocab);
  config_.n_vocab = int32_t(n_vocab);

  tok_embd_ = matrix("token_embd.weight", c.n_embd, n_vocab);
  output_norm_ = vec("output_norm.weight", c.n_embd, true);
  if (f.find_tensor("output.weight")) {
    output_ = matrix("output.weight", c.n_embd, n_vocab);
  } else {
    output_ = tok_embd_;
    config_.tied_embeddings = true;
  }
  if (const float* factors = vec("rope_freqs.weight", c.rope.n_rot / 2, false)) config_.rope.freq_factors = factors;

  layers_.resize(c.n_layer);
  for (int il = 0; il < c.n_layer; ++il) {
    const std::string p = "blk." + std::to_string(il) + ".";
    LayerWeights& L = layers_[il];
    L.attn_norm = vec(p + "attn_norm.weight", c.n_embd, true);
    L.wq = matrix(p + "attn_q.weight", c.n_embd, c.q_dim());
    L.wk = matrix(p + "attn_k.weight", c.n_embd, c.kv_dim());
    L.wv = matrix(p + "attn_v.weight", c.n_embd, c.kv_dim());
    L.wo = matrix(p + "attn_output.weight", c.q_dim(), c.n_embd);
    L.bq = vec(p + "attn_q.bias", c.q_dim(), c.qkv_bias);
    L.bk = vec(p + "attn_k.bias", c.kv_dim(), c.qkv_bias);
    L.bv = vec(p + "attn_v.bias", c.kv_dim(), c.qkv_bias);
    L.ffn_norm = vec(p + "ffn_norm.weight", c.n_embd, true);
    L.w_gate = matrix(p + "ffn_gate.weight", c.n_embd, c.n_ff);
    L.w_up = matrix(p + "ffn_up.weight", c.n_embd, c.n_ff);
    L.w_down = matrix(p + "ffn_down.weight", c.n_ff, c.n_embd);
  }
}

void Model::set_attention(const AttentionConfig& config) {
  const std::string why = config.validate();
  HS_CHECK(why.empty(), "invalid attention config: %s", why.c_str());
  attn_ = config;
}

void Model::set_matmul_mode(MatmulMode mode) {
  matmul_mode_ = mode;
  // Only where the packed copy will be read: the AVX-512 path active (HIPSERVE_CPU=avx2 keeps the GGML rows).
  if (mode != MatmulMode::Int8 || packed_.data() || cpu::simd_path() != cpu::SimdPath::kAvx512) return;
  std::vector<cpu::MatmulWeight*> all;
  for (LayerWeights& L : layers_)
    for (cpu::MatmulWeight* w : {&L.wq, &L.wk, &L.wv, &L.wo, &L.w_gate, &L.w_up, &L.w_down}) all.push_back(w);
  all.push_back(&output_);
  size_t total = 0;
  bool every = true;
  for (const cpu::MatmulWeight* w : all) {
    const size_t n = cpu::packed_weight_bytes(*w);
    every = every && n > 0;
    total += cpu::align64(n);
  }
  if (total == 0) return;
  packed_ = HugeBuffer(total);
  uint8_t* at = packed_.as<uint8_t>();
  for (cpu::MatmulWeight* w : all) {
    const size_t n = cpu::packed_weight_bytes(*w);
    if (n == 0) continue;
    cpu::pack_weight(*w, at);
    w->packed = at;
    at += cpu::align64(n);
    // The int8 kernels now read only the packed copy: the file's pages of this matrix need not stay resident
    // (embedding lookups and --matmul f32 fault back what they touch).
    file_->release_pages(w->data, size_t(w->rows) * w->row_bytes);
  }
  packed_bytes_ = total;
  all_packed_ = every;
}

int64_t Model::batch_invariant_tokens() const {
  if (matmul_mode_ == MatmulMode::F32) return cpu::f32act_batch_invariant_tokens();
  return all_packed_ && cpu::simd_path() == cpu::SimdPath::kAvx512 ? INT64_MAX : 1;
}

void Model::linear(const cpu::MatmulWeight& w, const float* x, int64_t n, int64_t ldx, float* y, int64_t ldy,
                   ThreadPool& pool) const {
  if (matmul_mode_ == MatmulMode::Int8)
    cpu::matmul(w, x, n, ldx, y, ldy, pool);
  else
    cpu::matmul_f32act(w, x, n, ldx, y, ldy, pool);
}

void Model::ensure_scratch(int32_t n_rows, int32_t n_out) {
  const ModelConfig& c = config_;
  auto fit = [](std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
  };
  fit(x_, size_t(n_rows) * c.n_embd);
  fit(xn_, size_t(n_rows) * c.n_embd);
  fit(q_, size_t(n_rows) * c.q_dim());
  fit(k_, size_t(n_rows) * c.kv_dim());
  fit(v_, size_t(n_rows) * c.kv_dim());
  fit(attn_out_, size_t(n_rows) * c.q_dim());
  fit(gate_, size_t(n_rows) * c.n_ff);
  fit(up_, size_t(n_rows) * c.n_ff);
  fit(out_rows_, size_t(n_out) * c.n_embd);
  fit(logits_, size_t(n_out) * c.n_vocab);
  if (pos_.size() < size_t(n_rows)) pos_.resize(n_rows);
}

void Model::forward(std::span<const SeqBatch> batch, ThreadPool& pool) {
  const ModelConfig& c = config_;
  int32_t n_rows = 0, n_out = 0;
  for (const SeqBatch& s : batch) {
    HS_CHECK(s.cache && s.n_tokens > 0 && s.tokens, "empty sequence in forward batch");
    n_rows += s.n_tokens;
    if (s.logits) n_out += s.all_logits ? s.n_tokens : 1;
  }
  HS_CHECK(n_rows <= max_batch_tokens_, "forward batch of %d tokens exceeds %d", n_rows, max_batch_tokens_);
  ensure_scratch(n_rows, n_out);
  const int64_t E = c.n_embd, QD = c.q_dim(), KVD = c.kv_dim(), FF = c.n_ff, HD = c.head_dim;
  auto tap = [&](const char* name, int layer, const float* data, int64_t rows, int64_t cols) {
    if (tap_) tap_(name, layer, data, rows, cols);
  };

  // Embeddings and positions; make room in every cache.
  {
    int32_t r = 0;
    for (const SeqBatch& s : batch) {
      s.cache->reserve(s.cache->n_past() + s.n_tokens);
      for (int32_t i = 0; i < s.n_tokens; ++i, ++r) {
        const int32_t tok = s.tokens[i];
        HS_CHECK(tok >= 0 && tok < c.n_vocab, "token id %d is out of range [0, %d)", tok, c.n_vocab);
        cpu::get_row(tok_embd_, tok, x_.data() + r * E);
        pos_[r] = s.cache->n_past() + i;
      }
    }
  }
  tap("inp_embd", -1, x_.data(), n_rows, E);

  // HiP plan, made once per step for every layer: a decode row re-estimates its cached masks every
  // `refresh` steps; prefill chunks estimate the masks of their own query blocks.
  std::vector<uint8_t> hip_estimate(batch.size(), 1);
  for (size_t si = 0; si < batch.size(); ++si) {
    const KvCache& kv = *batch[si].cache;
    if (batch[si].n_tokens == 1 && kv.hip_refresh_pos() >= 0)
      hip_estimate[si] = kv.n_past() - kv.hip_refresh_pos() >= attn_.hip.refresh;
  }

  // While a sequence holds at most n_sink + window keys, every row's sink and window together are all of its
  // keys (the searchable range is empty), so HiP is exactly dense attention: run the dense kernel.
  std::vector<uint8_t> hip_is_dense(batch.size(), 0);
  for (size_t si = 0; si < batch.size(); ++si)
    hip_is_dense[si] = batch[si].cache->n_past() + batch[si].n_tokens <= attn_.hip.n_sink + attn_.hip.window;
  std::vector<AttentionParams> dense_problems;

  std::vector<AttentionParams> attn_problems(batch.size());
  for (int il = 0; il < c.n_layer; ++il) {
    const LayerWeights& L = layers_[il];
    // ---- attention block ----
    rms_norm(x_.data(), E, L.attn_norm, xn_.data(), E, n_rows, E, c.norm_eps);
    tap("attn_norm", il, xn_.data(), n_rows, E);
    linear(L.wq, xn_.data(), n_rows, E, q_.data(), QD, pool);
    linear(L.wk, xn_.data(), n_rows, E, k_.data(), KVD, pool);
    linear(L.wv, xn_.data(), n_rows, E, v_.data(), KVD, pool);
    if (L.bq) {
      for (int32_t r = 0; r < n_rows; ++r) {
        add_inplace(q_.data() + r * QD, L.bq, QD);
        add_inplace(k_.data() + r * KVD, L.bk, KVD);
        add_inplace(v_.data() + r * KVD, L.bv, KVD);
      }
    }
    rope_inplace(q_.data(), n_rows, QD, c.n_head, c.head_dim, pos_.data(), c.rope);
    rope_inplace(k_.data(), n_rows, KVD, c.n_head_kv, c.head_dim, pos_.data(), c.rope);
    tap("q_rope", il, q_.data(), n_rows, QD);
    tap("k_rope", il, k_.data(), n_rows, KVD);
    tap("v", il, v_.data(), n_rows, KVD);

    // Store the new keys/values: cache layout [kv_head][position][head_dim].
    int32_t r0 = 0;
    for (size_t si = 0; si < batch.size(); ++si) {
      const SeqBatch& s = batch[si];
      KvCache& kv = *s.cache;
      for (int32_t i = 0; i < s.n_tokens; ++i) {
        const int32_t p = kv.n_past() + i;
        for (int32_t g = 0; g < c.n_head_kv; ++g) {
          to_fp16(k_.data() + (r0 + i) * KVD + g * HD, kv.k_row(il, g, p), HD);
          to_fp16(v_.data() + (r0 + i) * KVD + g * HD, kv.v_row(il, g, p), HD);
        }
      }
      AttentionParams& ap = attn_problems[si];
      ap.q = q_.data() + int64_t(r0) * QD;
      ap.q_stride = QD;
      kv.bind_attention(il, ap);  // contiguous or paged K/V
      ap.out = attn_out_.data() + int64_t(r0) * QD;
      ap.out_stride = QD;
      ap.n_q = s.n_tokens;
      ap.n_kv = kv.n_past() + s.n_tokens;
      ap.q_pos0 = kv.n_past();
      ap.n_head = c.n_head;
      ap.n_kv_head = c.n_head_kv;
      ap.head_dim = c.head_dim;
      ap.scale = 1.0f / std::sqrt(float(c.head_dim));
      r0 += s.n_tokens;
    }
    if (attn_.layer_uses_hip(il)) {
      dense_problems.clear();
      for (size_t si = 0; si < batch.size(); ++si) {
        if (hip_is_dense[si]) {  // sink + window cover every key: HiP is exactly dense attention here
          dense_problems.push_back(attn_problems[si]);
          continue;
        }
        const bool decode = batch[si].n_tokens == 1;
        HipMask& mask = decode ? batch[si].cache->hip_mask(il) : prefill_mask_;
        hip_attention(attn_.hip, attn_problems[si], mask, hip_estimate[si] != 0, pool, &hip_stats_);
      }
      if (dense_problems.size() == 1)
        attention_dense(dense_problems[0], pool);
      else if (!dense_problems.empty())
        attention_dense_batch(dense_problems.data(), int(dense_problems.size()), pool);
    } else if (attn_problems.size() == 1) {
      attention_dense(attn_problems[0], pool);
    } else {
      attention_dense_batch(attn_problems.data(), int(attn_problems.size()), pool);
    }
    tap("attn_out", il, attn_out_.data(), n_rows, QD);

    linear(L.wo, attn_out_.data(), n_rows, QD, xn_.data(), E, pool);
    for (int32_t r = 0; r < n_rows; ++r) add_inplace(x_.data() + r * E, xn_.data() + r * E, E);
    tap("ffn_inp", il, x_.data(), n_rows, E);

    // ---- feed-forward block (SwiGLU) ----
    rms_norm(x_.data(), E, L.ffn_norm, xn_.data(), E, n_rows, E, c.norm_eps);
    linear(L.w_gate, xn_.data(), n_rows, E, gate_.data(), FF, pool);
    linear(L.w_up, xn_.data(), n_rows, E, up_.data(), FF, pool);
    swiglu(gate_.data(), up_.data(), gate_.data(), int64_t(n_rows) * FF);
    linear(L.w_down, gate_.data(), n_rows, FF, xn_.data(), E, pool);
    for (int32_t r = 0; r < n_rows; ++r) add_inplace(x_.data() + r * E, xn_.data() + r * E, E);
    tap("l_out", il, x_.data(), n_rows, E);
  }
  for (size_t si = 0; si < batch.size(); ++si) {
    KvCache& kv = *batch[si].cache;
    const bool decode = batch[si].n_tokens == 1;
    if (attn_.kind == AttentionKind::Hip)
      kv.set_hip_refresh_pos(!decode || hip_is_dense[si] ? -1 : hip_estimate[si] ? kv.n_past() : kv.hip_refresh_pos());
    kv.advance(batch[si].n_tokens);
  }

  // Logits only for the rows that want them.
  if (n_out == 0) return;
  {
    int32_t r = 0, o = 0;
    for (const SeqBatch& s : batch) {
      if (s.logits) {
        const int32_t first = s.all_logits ? 0 : s.n_tokens - 1;
        for (int32_t i = first; i < s.n_tokens; ++i, ++o)
          std::memcpy(out_rows_.data() + int64_t(o) * E, x_.data() + int64_t(r + i) * E, E * sizeof(float));
      }
      r += s.n_tokens;
    }
  }
  rms_norm(out_rows_.data(), E, output_norm_, out_rows_.data(), E, n_out, E, c.norm_eps);
  tap("result_norm", -1, out_rows_.data(), n_out, E);
  linear(output_, out_rows_.data(), n_out, E, logits_.data(), c.n_vocab, pool);
  int32_t o = 0;
  for (const SeqBatch& s : batch) {
    if (!s.logits) continue;
    const int32_t n = s.all_logits ? s.n_tokens : 1;
    std::memcpy(s.logits, logits_.data() + int64_t(o) * c.n_vocab, size_t(n) * c.n_vocab * sizeof(float));
    o += n;
  }
}

void Model::prefill(KvCache& cache, std::span<const int32_t> tokens, float* logits, ThreadPool& pool,
                    const std::function<void(int64_t, int64_t)>& on_chunk, bool all_logits) {
  const int64_t n = int64_t(tokens.size());
  HS_CHECK(n > 0, "empty prompt");
  for (int64_t done = 0; done < n;) {
    const int32_t chunk = int32_t(std::min<int64_t>(max_batch_tokens_, n - done));
    SeqBatch s;
    s.cache = &cache;
    s.tokens = tokens.data() + done;
    s.n_tokens = chunk;
    s.all_logits = all_logits && logits != nullptr;
    if (s.all_logits)
      s.logits = logits + done * int64_t(config_.n_vocab);
    else
      s.logits = (done + chunk == n) ? logits : nullptr;
    forward(std::span<const SeqBatch>(&s, 1), pool);
    done += chunk;
    if (on_chunk) on_chunk(done, n);
  }
}

}  // namespace hs
