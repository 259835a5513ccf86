#include "engine/evaluate.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <random>

#include "ops/hip_attention.h"
#include "util/common.h"

namespace hs {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Attention of n_q query rows (after RoPE, [n_q][q_dim]) at positions q_pos0.. against one layer of the cache,
// for estimating HiP masks on the side of a forward pass (the cache already holds these rows' keys).
AttentionParams layer_attention_params(const ModelConfig& c, KvCache& cache, int32_t layer, const float* q,
                                       int32_t n_q, int32_t q_pos0) {
  AttentionParams p;
  p.q = q;
  p.q_stride = c.q_dim();
  p.k = cache.k(layer);
  p.v = cache.v(layer);
  p.kv_head_stride = cache.head_stride();
  p.kv_pos_stride = cache.pos_stride();
  p.n_q = n_q;
  p.n_kv = q_pos0 + n_q;
  p.q_pos0 = q_pos0;
  p.n_head = c.n_head;
  p.n_kv_head = c.n_head_kv;
  p.head_dim = c.head_dim;
  p.scale = 1.0f / std::sqrt(float(c.head_dim));
  return p;
}

// Calls on_layer(layer, p) at every layer's attention output during the model's forward passes while it
// lives: p = layer_attention_params of that layer's query rows (after RoPE) at positions q_pos0 (read at each
// call; the cache then holds these rows' keys). The tap is removed when this object goes, also on an
// exception.
class AttentionTap {
 public:
  AttentionTap(Model& model, KvCache& cache, const int32_t& q_pos0,
               std::function<void(int32_t, const AttentionParams&)> on_layer)
      : model_(model) {
    model.set_debug_tap([&model, &cache, &q_pos0, on_layer = std::move(on_layer), q = std::vector<float>()](
                            const char* name, int layer, const float* data, int64_t rows,
                            int64_t cols) mutable {
      if (layer < 0) return;
      if (std::string(name) == "q_rope") {
        q.assign(data, data + rows * cols);
        return;
      }
      if (std::string(name) != "attn_out") return;
      on_layer(layer, layer_attention_params(model.config(), cache, layer, q.data(), int32_t(rows), q_pos0));
    });
  }
  ~AttentionTap() { model_.set_debug_tap(nullptr); }
  AttentionTap(const AttentionTap&) = delete;
  AttentionTap& operator=(const AttentionTap&) = delete;

 private:
  Model& model_;
};

// prob[j] = the exact softmax attention (double) of query row `row` of head `head` on key j, for keys
// [0, t] with t = q_pos0 + row.
void exact_attention_row(const AttentionParams& p, int32_t head, int32_t row, std::vector<double>& prob) {
  const int32_t t = p.q_pos0 + row, HD = p.head_dim;
  const float* qi = p.q + int64_t(row) * p.q_stride + int64_t(head) * HD;
  const uint16_t* kh = p.k + int64_t(head / (p.n_head / p.n_kv_head)) * p.kv_head_stride;
  prob.assign(size_t(t) + 1, 0.0);
  double mx = -1e300;
  for (int32_t j = 0; j <= t; ++j) {
    double s = 0;
    for (int32_t d = 0; d < HD; ++d) s += double(qi[d]) * fp16_to_fp32(kh[int64_t(j) * p.kv_pos_stride + d]);
    prob[size_t(j)] = s * p.scale;
    mx = std::max(mx, prob[size_t(j)]);
  }
  double sum = 0;
  for (int32_t j = 0; j <= t; ++j) sum += (prob[size_t(j)] = std::exp(prob[size_t(j)] - mx));
  for (int32_t j = 0; j <= t; ++j) prob[size_t(j)] /= sum;
}

// -log softmax(logits)[target], in double.
double nll(const float* logits, int32_t n_vocab, int32_t target) {
  float mx = logits[0];
  for (int32_t i = 1; i < n_vocab; ++i) mx = std::max(mx, logits[i]);
  double sum = 0;
  for (int32_t i = 0; i < n_vocab; ++i) sum += std::exp(double(logits[i]) - mx);
  return std::log(sum) + mx - double(logits[target]);
}
}  // namespace

double PerplexityResult::ppl() const { return n_scored ? std::exp(nll_sum / double(n_scored)) : 0.0; }

PerplexityResult evaluate_perplexity(Sequence& seq, const std::vector<int32_t>& tokens, int32_t ctx,
                                     int32_t max_windows, const EvalProgress& progress) {
  HS_CHECK(ctx <= seq.n_ctx(), "perplexity window %d exceeds the sequence's context %d", ctx, seq.n_ctx());
  HS_CHECK(ctx >= 16, "perplexity needs a context of at least 16 tokens (got %d)", ctx);
  const int64_t n_windows_avail = int64_t(tokens.size()) / ctx;
  HS_CHECK(n_windows_avail >= 1, "the text has %zu tokens, fewer than one window of %d", tokens.size(), ctx);
  const int32_t n_windows = int32_t(max_windows > 0 ? std::min<int64_t>(max_windows, n_windows_avail) : n_windows_avail);
  const auto t0 = std::chrono::steady_clock::now();
  const int32_t V = seq.config().n_vocab;
  const int32_t chunk = seq.max_batch_tokens();
  const int32_t first_scored = ctx / 2 - 1;  // logits row predicting token first_scored + 1
  PerplexityResult res;
  res.ctx = ctx;
  res.n_windows = n_windows;
  std::vector<float> logits(size_t(chunk) * V);
  for (int32_t w = 0; w < n_windows; ++w) {
    seq.truncate(0);
    const int32_t* win = tokens.data() + int64_t(w) * ctx;
    double window_nll = 0;
    int64_t window_n = 0;
    for (int32_t start = 0; start < ctx; start += chunk) {
      const int32_t n = std::min(chunk, ctx - start);
      const bool want = start + n - 1 >= first_scored;
      seq.append(std::span<const int32_t>(win + start, size_t(n)), want ? logits.data() : nullptr, true);
      if (want) {
        for (int32_t i = 0; i < n; ++i) {
          const int32_t pos = start + i;
          if (pos < first_scored || pos + 1 >= ctx) continue;
          window_nll += nll(logits.data() + int64_t(i) * V, V, win[pos + 1]);
          window_n++;
        }
      }
      if (progress) progress(int64_t(w) * ctx + start + n, int64_t(n_windows) * ctx);
    }
    res.nll_sum += window_nll;
    res.n_scored += window_n;
    res.window_ppl.push_back(std::exp(window_nll / double(std::max<int64_t>(window_n, 1))));
  }
  res.seconds = seconds_since(t0);
  return res;
}

PasskeyPrompt make_passkey_prompt(const Tokenizer& tok, int32_t ctx, double depth, int32_t key) {
  HS_CHECK(depth >= 0 && depth <= 1, "passkey depth %g is not in [0, 1]", depth);
  const std::string intro =
      "There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. "
      "I will quiz you about the important information there.\n";
  const std::string filler = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
  const std::string needle = strfmt("The pass key is %05d. Remember it. %05d is the pass key. ", key, key);
  const std::string question = "\nWhat is the pass key? The pass key is";
  // Tokens of each piece (filler repeats tokenize identically after the first since each ends with a space).
  auto enc = [&](const std::string& s) { return tok.encode(s, false, false); };
  const std::vector<int32_t> t_intro = enc(intro), t_fill = enc(filler), t_needle = enc(needle), t_q = enc(question);
  const int32_t budget = ctx - 16;  // room for the answer
  const int32_t fixed = int32_t(t_intro.size() + t_needle.size() + t_q.size()) + (tok.vocab().add_bos ? 1 : 0);
  HS_CHECK(budget > fixed + int32_t(t_fill.size()), "context %d is too small for a passkey prompt", ctx);
  const int32_t n_fill = (budget - fixed) / int32_t(t_fill.size());
  const int32_t n_before = int32_t(std::lround(depth * n_fill));
  PasskeyPrompt p;
  p.key = key;
  if (tok.vocab().add_bos && tok.bos_id() >= 0) p.tokens.push_back(tok.bos_id());
  p.tokens.insert(p.tokens.end(), t_intro.begin(), t_intro.end());
  for (int32_t i = 0; i < n_before; ++i) p.tokens.insert(p.tokens.end(), t_fill.begin(), t_fill.end());
  p.key_position = int32_t(p.tokens.size());
  p.tokens.insert(p.tokens.end(), t_needle.begin(), t_needle.end());
  for (int32_t i = n_before; i < n_fill; ++i) p.tokens.insert(p.tokens.end(), t_fill.begin(), t_fill.end());
  p.tokens.insert(p.tokens.end(), t_q.begin(), t_q.end());
  return p;
}

bool passkey_answer_correct(const std::string& answer, int32_t key) {
  // The first run of 5 digits in the answer.
  std::string digits;
  for (char ch : answer) {
    if (ch >= '0' && ch <= '9') {
      digits += ch;
      if (digits.size() == 5) break;
    } else if (!digits.empty()) {
      digits.clear();
    }
  }
  return digits == strfmt("%05d", key);
}

PasskeyResult evaluate_passkey(Sequence& seq, const Tokenizer& tok, int32_t ctx, const std::vector<double>& depths,
                               int32_t trials, uint64_t seed, const EvalProgress& progress) {
  HS_CHECK(trials >= 1, "passkey needs at least one trial");
  HS_CHECK(ctx <= seq.n_ctx(), "passkey context %d exceeds the sequence's context %d", ctx, seq.n_ctx());
  const auto t0 = std::chrono::steady_clock::now();
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> pick(10000, 99999);
  const int32_t V = seq.config().n_vocab;
  PasskeyResult res;
  res.depths = depths;
  std::vector<float> logits(V);
  int64_t done = 0;
  for (double depth : depths) {
    int32_t correct = 0;
    res.trials_detail.emplace_back();
    for (int32_t t = 0; t < trials; ++t) {
      const PasskeyPrompt p = make_passkey_prompt(tok, ctx, depth, pick(rng));
      res.prompt_tokens = int32_t(p.tokens.size());
      seq.truncate(0);
      seq.append(p.tokens, logits.data());
      std::string answer;
      for (int32_t i = 0; i < 8; ++i) {
        const int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
        if (tok.is_end_of_generation(next)) break;
        answer += tok.token_to_bytes(next);
        if (i + 1 < 8) seq.append(std::span<const int32_t>(&next, 1), logits.data());
      }
      if (passkey_answer_correct(answer, p.key)) correct++;
      if (t == 0) res.sample_answers.push_back(answer);
      res.trials_detail.back().emplace_back(p.key, answer);
      if (progress) progress(++done, int64_t(depths.size()) * trials);
    }
    res.correct.push_back(correct);
    res.trials.push_back(trials);
  }
  res.seconds = seconds_since(t0);
  return res;
}

NeedleResult evaluate_needle(Model& model, const PasskeyPrompt& prompt, ThreadPool& pool, double min_mass,
                             const HipConfig* probe) {
  const ModelConfig& c = model.config();
  const HipConfig hip = probe ? *probe : model.attention().hip;
  const std::string why = hip.validate();
  HS_CHECK(why.empty(), "needle: %s", why.c_str());
  const int32_t n = int32_t(prompt.tokens.size());
  HS_CHECK(n >= 2, "needle: prompt of %d tokens is too short", n);
  // The key's digit tokens: the digits among the needle's tokens (both mentions of the key).
  std::vector<int32_t> digits;
  const std::string key = strfmt("%05d", prompt.key);
  for (int32_t i = prompt.key_position; i < n; ++i) {
    std::string piece = model.tokenizer().token_to_bytes(prompt.tokens[size_t(i)]);
    piece.erase(0, piece.find_first_not_of(' '));  // " 1" is a digit token too
    bool all_digits = !piece.empty();
    for (char ch : piece) all_digits = all_digits && ch >= '0' && ch <= '9';
    if (all_digits && key.find(piece) != std::string::npos) digits.push_back(i);
    if (digits.size() >= 2 * key.size()) break;
  }
  HS_CHECK(!digits.empty(), "needle: no digit token of the key %s in the prompt", key.c_str());

  const int32_t n_rows = (n - 1) % hip.block_q + 1, pos0 = n - n_rows;
  NeedleResult res;
  res.retrieval_heads.assign(size_t(c.n_layer), 0);
  res.covered.assign(size_t(c.n_layer), 0);
  res.needle_mass.assign(size_t(c.n_layer), 0.0);
  KvCache cache(c, n);
  if (pos0 > 0)
    model.prefill(cache, std::span<const int32_t>(prompt.tokens.data(), size_t(pos0)), nullptr, pool);
  AttentionTap tap(model, cache, pos0, [&](int32_t layer, const AttentionParams& p) {
    const int32_t t = n - 1, last = p.n_q - 1;
    std::vector<double> mass(size_t(c.n_head), 0.0);
    std::vector<uint8_t> hit(size_t(c.n_head), 0);
    pool.parallel_for(c.n_head, 1, [&](int64_t b, int64_t e) {
      std::vector<double> prob;
      for (int64_t h = b; h < e; ++h) {
        exact_attention_row(p, int32_t(h), last, prob);
        double best = -1;
        int32_t top = -1;
        for (int32_t j : digits) {
          mass[size_t(h)] += prob[size_t(j)];
          if (prob[size_t(j)] > best) best = prob[size_t(j)], top = j;
        }
        // What HiP attends for row t: the selected blocks of the last query block, the sink, the window.
        const std::vector<int32_t> blocks = hip_estimate_blocks(hip, p, int32_t(h), last / hip.block_q);
        bool in = top < hip.n_sink || top > t - hip.window;
        for (int32_t blk : blocks) in = in || (top >= blk * hip.block_k && top < (blk + 1) * hip.block_k);
        hit[size_t(h)] = in;
      }
    });
    for (int32_t h = 0; h < c.n_head; ++h) {
      res.needle_mass[size_t(layer)] += mass[size_t(h)] / c.n_head;
      if (mass[size_t(h)] < min_mass) continue;
      res.retrieval_heads[size_t(layer)]++;
      if (hit[size_t(h)])
        res.covered[size_t(layer)]++;
      else
        res.missed.emplace_back(layer, h);
    }
  });
  model.prefill(cache, std::span<const int32_t>(prompt.tokens.data() + pos0, size_t(n_rows)), nullptr, pool);
  return res;
}

double RecallResult::mean() const {
  double s = 0;
  for (double r : layer_recall) s += r;
  return layer_recall.empty() ? 0 : s / double(layer_recall.size());
}

RecallResult evaluate_recall(Model& model, const std::vector<int32_t>& tokens, int32_t ctx, int32_t n_query,
                             ThreadPool& pool, const EvalProgress& progress) {
  HS_CHECK(int64_t(tokens.size()) >= ctx, "the text has %zu tokens, fewer than the context %d", tokens.size(), ctx);
  HS_CHECK(n_query >= 1 && n_query < ctx, "query rows %d must be in [1, ctx)", n_query);
  HS_CHECK(n_query <= model.max_batch_tokens(), "query rows %d must fit one forward chunk (%d)", n_query,
           model.max_batch_tokens());
  const auto t0 = std::chrono::steady_clock::now();
  const ModelConfig& c = model.config();
  const HipConfig hip = model.attention().hip;
  const int32_t HD = c.head_dim, QD = c.q_dim();
  RecallResult res;
  res.ctx = ctx;
  res.n_query = n_query;
  res.layer_recall.assign(c.n_layer, 0.0);

  KvCache cache(c, ctx);
  const int32_t n_ctx_tokens = ctx - n_query;
  model.prefill(cache, std::span<const int32_t>(tokens.data(), n_ctx_tokens), nullptr, pool,
                [&](int64_t d, int64_t) { if (progress) progress(d, ctx); });

  AttentionTap tap(model, cache, n_ctx_tokens, [&](int32_t layer, const AttentionParams& p) {
    const int32_t n_qb = (p.n_q + hip.block_q - 1) / hip.block_q;
    std::vector<std::pair<double, int32_t>> per_row(c.n_head * n_qb, {0.0, 0});
    pool.parallel_for(int64_t(c.n_head) * n_qb, 1, [&](int64_t b, int64_t e) {
      std::vector<float> scores;
      std::vector<float> kf(HD);
      for (int64_t job = b; job < e; ++job) {
        const int32_t h = int32_t(job / n_qb), m = int32_t(job % n_qb);
        const std::vector<int32_t> blocks = hip_estimate_blocks(hip, p, h, m);
        const int32_t g = h / (c.n_head / c.n_head_kv);
        const uint16_t* kh = p.k + g * p.kv_head_stride;
        double sum = 0;
        int32_t n_rows = 0;
        for (int32_t i = m * hip.block_q; i < std::min(p.n_q, (m + 1) * hip.block_q); ++i) {
          const int32_t t = p.q_pos0 + i;
          const int32_t lo = hip.n_sink, hi = t - hip.window + 1;  // searchable keys [lo, hi)
          if (hi - lo <= 0) continue;
          const float* qi = p.q + int64_t(i) * QD + h * HD;
          scores.resize(hi - lo);
          for (int32_t j = lo; j < hi; ++j) {
            const uint16_t* kj = kh + int64_t(j) * p.kv_pos_stride;
            float s = 0;
            for (int32_t d = 0; d < HD; ++d) s += qi[d] * fp16_to_fp32(kj[d]);
            scores[j - lo] = s;
          }
          const int32_t kk = std::min(hip.k, hi - lo);
          std::vector<float> sorted = scores;
          std::nth_element(sorted.begin(), sorted.begin() + (kk - 1), sorted.end(), std::greater<float>());
          const float thresh = sorted[kk - 1];
          // Keys of the selected blocks, as a bitmap over [lo, hi).
          std::vector<uint8_t> sel(hi - lo, 0);
          for (int32_t blk : blocks)
            for (int32_t j = blk * hip.block_k; j < (blk + 1) * hip.block_k; ++j)
              if (j >= lo && j < hi) sel[j - lo] = 1;
          int32_t hit = 0, counted = 0;
          for (int32_t j = 0; j < hi - lo && counted < kk; ++j) {
            if (scores[j] > thresh) counted++, hit += sel[j];
          }
          for (int32_t j = 0; j < hi - lo && counted < kk; ++j) {  // ties at the threshold fill the rest
            if (scores[j] == thresh) counted++, hit += sel[j];
          }
          sum += double(hit) / kk;
          n_rows++;
        }
        per_row[job] = {sum, n_rows};
      }
    });
    double s = 0;
    int64_t n = 0;
    for (auto& [sum, rows_] : per_row) s += sum, n += rows_;
    res.layer_recall[layer] = n ? s / double(n) : 1.0;
    if (progress) progress(n_ctx_tokens + int64_t(layer + 1) * n_query / c.n_layer, ctx);
  });
  std::vector<float> dummy(c.n_vocab);
  model.prefill(cache, std::span<const int32_t>(tokens.data() + n_ctx_tokens, n_query), dummy.data(), pool);
  res.seconds = seconds_since(t0);
  return res;
}

MaskPicture evaluate_mask_picture(Model& model, const std::vector<int32_t>& tokens, int32_t ctx, int32_t layer,
                                  int32_t head, int32_t grid, ThreadPool& pool) {
  const ModelConfig& c = model.config();
  HS_CHECK(int64_t(tokens.size()) >= ctx, "the text has %zu tokens, fewer than the context %d", tokens.size(), ctx);
  HS_CHECK(layer >= 0 && layer < c.n_layer, "layer %d is out of range [0, %d)", layer, c.n_layer);
  HS_CHECK(head >= 0 && head < c.n_head, "head %d is out of range [0, %d)", head, c.n_head);
  HS_CHECK(grid >= 8 && grid <= ctx, "grid %d must be in [8, ctx]", grid);
  const HipConfig hip = model.attention().hip;
  MaskPicture pic;
  pic.ctx = ctx, pic.layer = layer, pic.head = head, pic.grid = grid;
  pic.attention.assign(size_t(grid) * grid, 0.0f);
  std::vector<double> covered(size_t(grid) * grid, 0.0), pairs(size_t(grid) * grid, 0.0);
  auto cell = [&](int32_t pos) { return int32_t(int64_t(pos) * grid / ctx); };

  KvCache cache(c, ctx);
  int32_t chunk_pos0 = 0;
  AttentionTap tap(model, cache, chunk_pos0, [&](int32_t il, const AttentionParams& p) {
    if (il != layer) return;
    const int32_t n_qb = (p.n_q + hip.block_q - 1) / hip.block_q;
    std::vector<double> prob;
    for (int32_t m = 0; m < n_qb; ++m) {
      const std::vector<int32_t> blocks = hip_estimate_blocks(hip, p, head, m);
      std::vector<uint8_t> sel(p.n_kv, 0);
      for (int32_t b : blocks)
        for (int32_t j = b * hip.block_k; j < std::min(p.n_kv, (b + 1) * hip.block_k); ++j) sel[j] = 1;
      for (int32_t i = m * hip.block_q; i < std::min(p.n_q, (m + 1) * hip.block_q); ++i) {
        const int32_t t = p.q_pos0 + i;
        exact_attention_row(p, head, i, prob);
        const int32_t ci = cell(t);
        for (int32_t j = 0; j <= t; ++j) {
          const size_t at = size_t(ci) * grid + cell(j);
          pic.attention[at] = std::max(pic.attention[at], float(prob[j]));
          const bool attended = j < hip.n_sink || j > t - hip.window || (sel[j] && j <= t - hip.window);
          covered[at] += attended;
          pairs[at] += 1;
        }
      }
    }
  });
  const int32_t chunk = model.max_batch_tokens();
  for (int32_t start = 0; start < ctx; start += chunk) {
    chunk_pos0 = start;
    const int32_t n = std::min(chunk, ctx - start);
    SeqBatch s{&cache, tokens.data() + start, n, false, nullptr};
    model.forward(std::span<const SeqBatch>(&s, 1), pool);
  }
  pic.mask.assign(size_t(grid) * grid, 0.0f);
  for (size_t i = 0; i < pic.mask.size(); ++i) pic.mask[i] = pairs[i] > 0 ? float(covered[i] / pairs[i]) : 0.0f;
  return pic;
}

}  // namespace hs
