// Quality evaluations of an attention configuration on a real model: perplexity, passkey retrieval and the
// recall of HiP's mask against the exact top-k keys. Used by `hipserve eval` and the README's tables.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "model/llama.h"
#include "model/sequence.h"
#include "util/thread_pool.h"

namespace hs {

using EvalProgress = std::function<void(int64_t done, int64_t total)>;

// Perplexity convention (llama.cpp's): the token stream is cut into consecutive, non-overlapping windows of
// `ctx` tokens; each window starts from an empty cache, and only the second half of each window is scored
// (token i+1 predicted from the logits at i, for i in [ctx/2 - 1, ctx - 1)), so every scored token sees at least
// ctx/2 tokens of context.
struct PerplexityResult {
  int32_t ctx = 0;
  int32_t n_windows = 0;
  int64_t n_scored = 0;
  double nll_sum = 0;               // sum of -log p(token)
  std::vector<double> window_ppl;   // per window
  double seconds = 0;
  double ppl() const;
};
// Runs on any backend: `seq` (its n_ctx() >= ctx) is cleared before each window.
PerplexityResult evaluate_perplexity(Sequence& seq, const std::vector<int32_t>& tokens, int32_t ctx,
                                     int32_t max_windows, const EvalProgress& progress = {});

// Passkey retrieval (Mohtashami & Jaggi 2023): a 5-digit key hidden at a relative depth in repeated filler
// text, asked for at the end; answered by greedy decoding of 8 tokens. A trial is correct when the first
// 5-digit run in the answer equals the key.
struct PasskeyPrompt {
  std::vector<int32_t> tokens;
  int32_t key = 0;
  int32_t key_position = 0;  // token index where the key sentence starts
};
PasskeyPrompt make_passkey_prompt(const Tokenizer& tok, int32_t ctx, double depth, int32_t key);
// A trial's verdict: the first run of 5 digits in the answer is the key.
bool passkey_answer_correct(const std::string& answer, int32_t key);
struct PasskeyResult {
  std::vector<double> depths;
  std::vector<int32_t> correct, trials;
  std::vector<std::string> sample_answers;  // the first trial's answer at each depth
  std::vector<std::vector<std::pair<int32_t, std::string>>> trials_detail;  // per depth: (key, answer) of each trial
  int32_t prompt_tokens = 0;
  double seconds = 0;
};
// Runs on any backend: `seq` (its n_ctx() >= ctx) is cleared before each trial.
PasskeyResult evaluate_passkey(Sequence& seq, const Tokenizer& tok, int32_t ctx, const std::vector<double>& depths,
                               int32_t trials, uint64_t seed, const EvalProgress& progress = {});

// Where the key is lost (CPU model, any attention): the prompt is run up to its last query block, then that
// block's rows (the last (n - 1) % b_q + 1 prompt tokens: the partial block prefill ends on) run with, in
// every layer, HiP's mask of the block estimated for each query head (dense layers too, as if they ran HiP).
// For the last row (the one that predicts the first answer token), per (layer, head): the share of its exact
// softmax attention that falls on the key's digit tokens (both mentions in the needle), and whether the digit
// it attends most lies in what HiP would attend (selected blocks, sink or window). A "retrieval head" gives
// the digits at least `min_mass` of its attention. The masks probed use `probe` (default: the model's HiP
// settings, which the forward pass itself runs with).
struct NeedleResult {
  std::vector<int32_t> retrieval_heads;  // per layer
  std::vector<int32_t> covered;          // per layer: retrieval heads whose top digit HiP attends
  std::vector<double> needle_mass;       // per layer: mean over heads of the digits' attention share
  std::vector<std::pair<int32_t, int32_t>> missed;  // (layer, head) of retrieval heads HiP misses
};
NeedleResult evaluate_needle(Model& model, const PasskeyPrompt& prompt, ThreadPool& pool,
                             double min_mass = 0.1, const HipConfig* probe = nullptr);

// Mask recall on real Q/K: after prefilling `ctx - n_query` tokens of the text, the last `n_query` rows are run
// and, in every layer (dense ones too, as if they ran HiP), HiP's mask is estimated for each (head, query
// block). Recall of a row at position t = |exact top-k keys of its searchable range [n_sink, t - w] (by q.k)
// ∩ keys of the block's selected blocks| / min(k, |range|); averaged over rows, query blocks and heads.
struct RecallResult {
  int32_t ctx = 0, n_query = 0;
  std::vector<double> layer_recall;  // per layer
  double mean() const;
  double seconds = 0;
};
RecallResult evaluate_recall(Model& model, const std::vector<int32_t>& tokens, int32_t ctx, int32_t n_query,
                             ThreadPool& pool, const EvalProgress& progress = {});

// A picture of one head's HiP mask beside its true attention over the first `ctx` tokens of a text, on a
// grid x grid raster: attention[i][j] = the largest softmax probability any query row of cell i gives a key of
// cell j (dense attention, exact); mask[i][j] = the share of (row, key) pairs of the cell that HiP attends
// (selected blocks, sink or window). Causal cells above the diagonal are 0.
struct MaskPicture {
  int32_t ctx = 0, layer = 0, head = 0, grid = 0;
  std::vector<float> attention, mask;  // grid x grid, row-major (query cell, key cell)
};
MaskPicture evaluate_mask_picture(Model& model, const std::vector<int32_t>& tokens, int32_t ctx, int32_t layer,
                                  int32_t head, int32_t grid, ThreadPool& pool);

}  // namespace hs
