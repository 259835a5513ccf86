// The GPU forward pass against the CPU model (the oracle), on a real llama-family GGUF: HIPSERVE_MODEL, else
// models/SmolLM2-135M-Instruct.Q4_1.gguf. On the GPU machine, where the full file cannot be carried, a reduced
// copy written by `hipserve shrink --layers 8` stands in (the first 8 layers, byte-identical weights).
//
// Error budget: the GPU rounds weights and GEMM inputs (RMSNorm outputs, attention outputs, SwiGLU) to bf16
// (relative rounding 2^-9) and keeps K/V in bf16 (the CPU: fp16 K/V, fp32 everything else). Such roundings
// are independent, so the logits move by a few tenths of a percent per layer relative to their spread; the
// bounds below (relative L2 over the whole vocabulary <= 3e-2 for dense, <= 6e-2 for HiP, whose selection can
// flip on near-tied blocks) leave a margin of ~3x over what bf16 gives and fail on any real bug (a wrong
// rotation pair, a missing bias, a stale cache row each move the logits by O(1)).
#include "backends/cuda/llama_cuda.h"

#include "backends/cuda/attention_cuda.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "engine/evaluate.h"
#include "engine/session.h"
#include "model/kv_cache.h"
#include "model/sequence.h"
#include "model/slot_backend.h"
#include "model/llama.h"
#include "model/test_model.h"
#include "util/common.h"
#include "util/thread_pool.h"

namespace hs {
namespace {

#define HS_REQUIRE_GPU()                                   \
  do {                                                     \
    std::string why;                                       \
    if (!cuda::device_available(&why)) GTEST_SKIP() << why; \
  } while (0)

double rel_l2(const std::vector<float>& a, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    num += (double(a[i]) - ref[i]) * (double(a[i]) - ref[i]);
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

int argmax(const std::vector<float>& v) { return int(std::max_element(v.begin(), v.end()) - v.begin()); }

// Gap between the largest and second largest logit.
float top2_gap(const std::vector<float>& v) {
  std::vector<float> c = v;
  std::partial_sort(c.begin(), c.begin() + 2, c.end(), std::greater<float>());
  return c[0] - c[1];
}

const char* kText =
    "It was a dark and stormy night; the rain fell in torrents, except at occasional intervals, when it was "
    "checked by a violent gust of wind which swept up the streets (for it is in London that our scene lies), "
    "rattling along the housetops, and fiercely agitating the scanty flame of the lamps that struggled against "
    "the darkness. Through one of the obscurest quarters of London, and among haunts little loved by the "
    "gentlemen of the police, a man, evidently of the lowest orders, was wending his solitary way. ";

std::vector<int32_t> text_tokens(const Model& m, int n) {
  std::string s;
  std::vector<int32_t> ids;
  for (int rep = 0; int(ids.size()) < n; ++rep) {
    s += kText;
    s += "Chapter " + std::to_string(rep + 2) + ". ";
    ids = m.tokenizer().encode(s, true, false);
  }
  ids.resize(size_t(n));
  return ids;
}

struct Pair {
  Model* cpu;
  std::unique_ptr<cuda::GpuModel> gpu;
  std::unique_ptr<KvCache> cache;
  ThreadPool pool{2};
};

std::unique_ptr<Pair> make_pair(const AttentionConfig& attn, int n_ctx, bool graphs = true,
                                bool cudnn = false) {
  auto p = std::make_unique<Pair>();
  p->cpu = testing::smollm2();
  p->cpu->set_attention(attn);
  cuda::GpuModelOptions o;
  o.n_ctx = n_ctx;
  o.max_batch_tokens = 256;  // several chunks for the longer prompts
  o.attn = attn;
  o.cuda_graphs = graphs;
  o.cudnn_prefill = cudnn;
  p->gpu = cuda::GpuModel::upload(*p->cpu, o);
  if (cudnn) {
    EXPECT_TRUE(p->gpu->uses_cudnn());
    std::printf("  cuDNN warm-up: %d plans\n", p->gpu->warm_up_cudnn());
  }
  p->cache = std::make_unique<KvCache>(p->cpu->config(), n_ctx);
  return p;
}

AttentionConfig dense() {
  AttentionConfig a;
  a.kind = AttentionKind::Dense;
  return a;
}

// What the model tests run: the paper's HiP defaults (or dense attention) with only layer 0 dense, so that the
// reduced 4-layer model still has HiP layers.
AttentionConfig one_dense_layer(bool hip) {
  AttentionConfig a = hip ? AttentionConfig() : dense();
  a.dense_layers = 1;
  return a;
}

// Prefill logits, then greedy decode: every step's logits close to the CPU's, and the same tokens except
// where the CPU's top two logits lie within the error budget (those are printed and the runs continue from
// the CPU's token so the comparison stays aligned).
void compare_generation(const AttentionConfig& attn, int n_prompt, int n_gen, double bound,
                        bool cudnn = false) {
  HS_REQUIRE_SMOLLM2();
  auto p = make_pair(attn, n_prompt + n_gen + 8, true, cudnn);
  const int V = p->cpu->config().n_vocab;
  const std::vector<int32_t> ids = text_tokens(*p->cpu, n_prompt);
  std::vector<float> lc(static_cast<size_t>(V)), lg(static_cast<size_t>(V));
  p->cpu->prefill(*p->cache, ids, lc.data(), p->pool);
  p->gpu->prefill(ids, lg.data());
  double worst = rel_l2(lg, lc);
  EXPECT_LE(worst, bound) << "prefill logits";
  int ties = 0;
  int32_t tok = argmax(lc);
  for (int i = 0; i < n_gen; ++i) {
    p->cpu->prefill(*p->cache, std::span<const int32_t>(&tok, 1), lc.data(), p->pool);
    const int32_t g = p->gpu->decode(tok, 0.0f, 0, lg.data());
    const double e = rel_l2(lg, lc);
    worst = std::max(worst, e);
    EXPECT_LE(e, bound) << "decode step " << i;
    EXPECT_EQ(g, argmax(lg)) << "GPU sampling disagrees with the GPU's own logits at step " << i;
    if (g != argmax(lc)) {
      ++ties;
      const float gap = top2_gap(lc);
      std::printf("  step %d: GPU token %d, CPU token %d; CPU top-2 gap %.4f\n", i, g, argmax(lc), gap);
      EXPECT_LT(gap, 0.25f) << "a token differs where the CPU's choice was clear";
    }
    tok = argmax(lc);
  }
  std::printf("  %s, %d prompt + %d decode tokens: worst relative L2 logit error %.4f, %d near-tie flips\n",
              attn.describe().c_str(), n_prompt, n_gen, worst, ties);
  EXPECT_LE(ties, n_gen / 8);
}

TEST(LlamaCuda, DenseMatchesCpu) {
  HS_REQUIRE_GPU();
  compare_generation(dense(), 100, 24, 3e-2);
}

TEST(LlamaCuda, DenseChunkedLongPromptMatchesCpu) {
  HS_REQUIRE_GPU();
  compare_generation(dense(), 700, 8, 3e-2);  // 3 prefill chunks of 256
}

// The dense prefill attention through cuDNN (GpuModelOptions::cudnn_prefill, what serve runs, after its plan
// warm-up): chunks of 256 rows after 0, 256 and 512 cached keys (padded plans; the last chunk's 188 rows
// split into 128 through cuDNN and 60 through our kernel).
TEST(LlamaCuda, DenseChunkedLongPromptWithCudnnMatchesCpu) {
  HS_REQUIRE_GPU();
  if (!cuda::cudnn_attention_available())
    GTEST_SKIP() << "cuDNN attention: " << cuda::cudnn_attention_status();
  compare_generation(dense(), 700, 8, 3e-2, true);
}

TEST(LlamaCuda, HipMatchesCpu) {
  HS_REQUIRE_GPU();
  // Paper defaults; with sink 16 + window 256, 700 tokens leave a real searchable range.
  compare_generation(one_dense_layer(true), 700, 20, 6e-2);  // decode crosses two mask refreshes (r_m = 8)
}

TEST(LlamaCuda, HipWithWholeRangeSelectedEqualsDense) {
  HS_REQUIRE_GPU();
  HS_REQUIRE_SMOLLM2();
  // k >= context and no sink/window: HiP keeps every key, so it must give dense attention's logits (to the
  // rounding of the different kernels).
  AttentionConfig h;
  h.dense_layers = 0;
  h.hip.k = 1024;
  h.hip.n_sink = 0;
  h.hip.window = 0;
  h.hip.refresh = 1;  // no window to cover the tokens since a refresh: estimate at every step
  auto ph = make_pair(h, 600);
  auto pd = make_pair(dense(), 600);
  const std::vector<int32_t> ids = text_tokens(*ph->cpu, 500);
  const int V = ph->cpu->config().n_vocab;
  std::vector<float> a(static_cast<size_t>(V)), b(static_cast<size_t>(V));
  ph->gpu->prefill(ids, a.data());
  pd->gpu->prefill(ids, b.data());
  EXPECT_LE(rel_l2(a, b), 1e-2);
  int32_t t = argmax(b);
  for (int i = 0; i < 10; ++i) {
    ph->gpu->decode(t, 0.0f, 0, a.data());
    pd->gpu->decode(t, 0.0f, 0, b.data());
    EXPECT_LE(rel_l2(a, b), 1e-2) << "decode step " << i;
    t = argmax(b);
  }
}

TEST(LlamaCuda, GraphsGiveTheSameResultAsEagerLaunches) {
  HS_REQUIRE_GPU();
  HS_REQUIRE_SMOLLM2();
  const AttentionConfig a = one_dense_layer(true);
  auto pg = make_pair(a, 700, true);
  auto pe = make_pair(a, 700, false);
  const std::vector<int32_t> ids = text_tokens(*pg->cpu, 400);
  pg->gpu->prefill(ids, nullptr);
  pe->gpu->prefill(ids, nullptr);
  const int V = pg->cpu->config().n_vocab;
  std::vector<float> lg(static_cast<size_t>(V)), le(static_cast<size_t>(V));
  int32_t t = ids.back();
  for (int i = 0; i < 20; ++i) {  // refresh and cached-mask steps, graph updates in both shapes
    const int32_t g = pg->gpu->decode(t, 0.0f, 0, lg.data());
    const int32_t e = pe->gpu->decode(t, 0.0f, 0, le.data());
    ASSERT_EQ(g, e) << "step " << i;
    ASSERT_EQ(0, std::memcmp(lg.data(), le.data(), lg.size() * 4)) << "logits differ at step " << i;
    t = g;
  }
}

TEST(LlamaCuda, TemperatureSamplingFollowsTheSoftmax) {
  HS_REQUIRE_GPU();
  // Random small model; sample the first decode step many times with different seeds at temperature 1 and
  // compare the frequency of the GPU's argmax token with its softmax probability.
  cuda::GpuModelOptions o;
  o.n_ctx = 64;
  o.attn = dense();
  auto m = cuda::GpuModel::random(cuda::random_preset("smollm2-135m"), 7, o);
  std::vector<float> logits(size_t(m->config().n_vocab));
  m->prefill(std::vector<int32_t>{1, 2, 3, 4}, nullptr);
  m->decode(5, 0.0f, 0, logits.data());  // position 4
  // Scale so the distribution is peaked enough to measure: temperature T on the raw logits.
  const float mx = *std::max_element(logits.begin(), logits.end());
  double z = 0;
  for (float l : logits) z += std::exp(double(l - mx) / 0.05);
  const int best = argmax(logits);
  const double p_best = 1.0 / z;
  int hits = 0;
  const int n = 400;
  for (int s = 0; s < n; ++s) {
    m->truncate(4);  // the same position as the greedy step above, so the same logits
    hits += m->decode(5, 0.05f, uint64_t(s) * 7919 + 1, nullptr) == best;
  }
  const double sd = std::sqrt(p_best * (1 - p_best) / n);
  EXPECT_NEAR(double(hits) / n, p_best, 5 * sd + 0.01) << "p_best " << p_best;
}

TEST(LlamaCuda, RandomPresetsAndBadInput) {
  HS_REQUIRE_GPU();
  EXPECT_THROW(cuda::random_preset("no-such-model"), Error);
  cuda::GpuModelOptions o;
  o.n_ctx = 32;
  o.attn = dense();
  auto m = cuda::GpuModel::random(cuda::random_preset("smollm2-135m"), 1, o);
  EXPECT_THROW(m->prefill(std::vector<int32_t>{-1}, nullptr), Error);
  EXPECT_THROW(m->prefill(std::vector<int32_t>(40, 1), nullptr), Error);  // longer than n_ctx
  m->prefill(std::vector<int32_t>{1, 2, 3}, nullptr);
  const int32_t t = m->decode(4, 0.0f, 0, nullptr);
  EXPECT_GE(t, 0);
  EXPECT_LT(t, m->config().n_vocab);
  EXPECT_EQ(m->n_past(), 4);
  // A K/V cache that cannot fit is refused up front with the sizes, not by a CUDA out-of-memory error.
  cuda::GpuModelOptions huge = o;
  huge.n_ctx = 1 << 20;
  huge.n_seq = 64;  // 64 x 1M positions of the 8B shape: ~8 TiB
  try {
    cuda::GpuModel::random(cuda::random_preset("llama3.1-8b"), 1, huge);
    ADD_FAILURE() << "an 8 TiB K/V cache was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("lower -c"), std::string::npos) << e.what();
  }
}


// The Sequence interface on the GPU (what run, chat and eval use with --device cuda) against the CPU's.
cuda::GpuModelOptions seq_options(const AttentionConfig& attn, int n_ctx) {
  cuda::GpuModelOptions o;
  o.n_ctx = n_ctx;
  o.max_batch_tokens = 256;
  o.attn = attn;
  return o;
}

TEST(GpuSequence, AllLogitsMatchCpuRowByRow) {
  HS_REQUIRE_GPU();
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  for (const bool hip : {false, true}) {
    const AttentionConfig attn = one_dense_layer(hip);
    m.set_attention(attn);
    ThreadPool pool(2);
    const int V = m.config().n_vocab, n = 600;  // 3 chunks of 256 on the GPU; 64-row head pieces
    const std::vector<int32_t> ids = text_tokens(m, n);
    CpuSequence cpu(m, 1024, pool);
    cuda::GpuSequence gpu(cuda::GpuModel::upload(m, seq_options(attn, 1024)));
    std::vector<float> lc(size_t(n) * V, 0.0f), lg(size_t(n) * V, 0.0f);
    cpu.append(ids, lc.data(), true);
    int64_t chunks = 0;
    gpu.append(ids, lg.data(), true, [&](int64_t, int64_t) { ++chunks; });
    EXPECT_EQ(chunks, 3);
    EXPECT_EQ(gpu.n_past(), n);
    double worst = 0;
    for (int r = 0; r < n; ++r) {
      const std::vector<float> a(lg.begin() + int64_t(r) * V, lg.begin() + int64_t(r + 1) * V);
      const std::vector<float> b(lc.begin() + int64_t(r) * V, lc.begin() + int64_t(r + 1) * V);
      worst = std::max(worst, rel_l2(a, b));
    }
    std::printf("  %s: all-logits rows 0..%d, worst relative L2 vs CPU %.4f\n", attn.describe().c_str(), n - 1,
                worst);
    EXPECT_LE(worst, hip ? 6e-2 : 3e-2);
    // Last-token logits (the decode head path) agree with the all-logits row of the same position.
    gpu.truncate(n - 50);
    std::vector<float> last(size_t(V), 0.0f);
    gpu.append(std::span<const int32_t>(ids.data() + n - 50, 50), last.data());
    const std::vector<float> row(lg.end() - V, lg.end());
    EXPECT_LE(rel_l2(last, row), 1e-2);
    // One token after the prompt takes the decode step; its logits match the CPU's next row.
    gpu.truncate(n - 1);
    cpu.truncate(n - 1);
    std::vector<float> dg(size_t(V), 0.0f), dc(size_t(V), 0.0f);
    gpu.append(std::span<const int32_t>(&ids[size_t(n - 1)], 1), dg.data());
    cpu.append(std::span<const int32_t>(&ids[size_t(n - 1)], 1), dc.data());
    EXPECT_LE(rel_l2(dg, dc), hip ? 6e-2 : 3e-2);
    EXPECT_THROW(gpu.append(std::vector<int32_t>(2000, 1), nullptr), Error);  // past n_ctx
    EXPECT_EQ(gpu.n_past(), n);
  }
}

TEST(GpuSequence, PerplexityAndGreedySessionMatchCpu) {
  HS_REQUIRE_GPU();
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  const AttentionConfig attn = one_dense_layer(true);
  m.set_attention(attn);
  ThreadPool pool(2);
  const std::vector<int32_t> ids = text_tokens(m, 1024);
  CpuSequence cpu(m, 512, pool);
  cuda::GpuSequence gpu(cuda::GpuModel::upload(m, seq_options(attn, 512)));
  const PerplexityResult pc = evaluate_perplexity(cpu, ids, 512, 2);
  const PerplexityResult pg = evaluate_perplexity(gpu, ids, 512, 2);
  std::printf("  perplexity over 2 x 512 tokens: CPU %.4f, GPU %.4f\n", pc.ppl(), pg.ppl());
  EXPECT_EQ(pc.n_scored, pg.n_scored);
  EXPECT_NEAR(pg.ppl() / pc.ppl(), 1.0, 0.01);

  GenerateOptions g;
  g.n_predict = 24;
  g.sampling.temperature = 0.0f;
  g.ignore_eos = true;
  g.show_progress = false;
  const std::vector<int32_t> prompt(ids.begin(), ids.begin() + 300);
  Session sc(cpu, m.tokenizer()), sg(gpu, m.tokenizer());
  const GenerationResult rc = sc.generate(prompt, g), rg = sg.generate(prompt, g);
  size_t same = 0;
  while (same < rc.tokens.size() && same < rg.tokens.size() && rc.tokens[same] == rg.tokens[same]) ++same;
  std::printf("  greedy session, 24 tokens: first %zu identical on CPU and GPU\n", same);
  EXPECT_GE(same, size_t(12)) << "CPU: " << rc.text << "\nGPU: " << rg.text;
}

// Serve's GPU backend: three slots prefilled in chunks, then batched decode steps of all three (one forward,
// the batched GEMV over the rows, attention per slot on its own cache): every slot's logits close to the CPU
// backend's (the oracle) and bit-identical to a lone GPU sequence's; a reopened slot starts empty; misuse is
// refused.
TEST(GpuSlotBackend, BatchedSlotsMatchCpuAndLoneRuns) {
  HS_REQUIRE_GPU();
  HS_REQUIRE_SMOLLM2();
  Model& m = *testing::smollm2();
  for (const bool hip : {false, true}) {
    const AttentionConfig attn = one_dense_layer(hip);
    m.set_attention(attn);
    const double bound = hip ? 6e-2 : 3e-2;
    ThreadPool pool(2);
    const int V = m.config().n_vocab, n_ctx = 512, n_gen = 12;
    cuda::GpuModelOptions o = seq_options(attn, n_ctx);
    o.n_seq = 4;
    o.max_batch_tokens = 128;  // the 300-token prompt in 3 chunks
    cuda::GpuSlotBackend gpu(cuda::GpuModel::upload(m, o));
    CpuSlotBackend cpu(m, pool, 4, n_ctx, 256, 0, 128);
    EXPECT_EQ(gpu.n_slots(), 4);
    EXPECT_EQ(gpu.kv_units_total(), 4);
    const std::vector<int32_t> all = text_tokens(m, 700);
    // Prompts of 300 (HiP's sparse path past sink + window), 120, 40 and 200 tokens, from different offsets.
    const std::vector<std::vector<int32_t>> prompts = {std::vector<int32_t>(all.begin(), all.begin() + 300),
                                                       std::vector<int32_t>(all.begin() + 300, all.begin() + 420),
                                                       std::vector<int32_t>(all.begin() + 500, all.begin() + 540),
                                                       std::vector<int32_t>(all.begin() + 450, all.begin() + 650)};
    std::vector<std::vector<float>> lg(4, std::vector<float>(size_t(V), 0.0f)), lc = lg;
    double worst = 0;
    for (int s = 0; s < 4; ++s) {
      gpu.open(s, n_ctx);
      cpu.open(s, n_ctx);
      const std::vector<int32_t>& p = prompts[size_t(s)];
      for (size_t done = 0; done < p.size(); done += 128) {
        const int32_t n = int32_t(std::min<size_t>(128, p.size() - done));
        const bool last = done + size_t(n) == p.size();
        gpu.forward(std::vector<SlotBackend::Feed>{{s, p.data() + done, n, last ? lg[size_t(s)].data() : nullptr}});
        cpu.forward(std::vector<SlotBackend::Feed>{{s, p.data() + done, n, last ? lc[size_t(s)].data() : nullptr}});
      }
      EXPECT_EQ(gpu.n_past(s), int32_t(p.size()));
      worst = std::max(worst, rel_l2(lg[size_t(s)], lc[size_t(s)]));
    }
    EXPECT_LE(worst, bound) << "prefill";
    // Lone GPU runs of every slot's sequence (prefilled in the same 128-token chunks, then decode steps through
    // graphs), fed the same tokens: the batched rows must give exactly their bits.
    std::vector<std::unique_ptr<cuda::GpuSequence>> lone;
    for (int s = 0; s < 4; ++s) {
      cuda::GpuModelOptions lo = seq_options(attn, n_ctx);
      lo.max_batch_tokens = 128;
      lone.push_back(std::make_unique<cuda::GpuSequence>(cuda::GpuModel::upload(m, lo)));
      lone.back()->append(prompts[size_t(s)], nullptr);
    }
    ASSERT_GE(gpu.bit_exact_decode_rows(), 4);
    double worst_lone = 0;
    int flips = 0, rows_fed = 0;
    std::vector<int32_t> next(4);
    for (int s = 0; s < 4; ++s) next[size_t(s)] = argmax(lc[size_t(s)]);
    // Decode steps of 4, 2 and 3 rows in turn (every batched GEMV shape), fed the CPU's greedy tokens.
    const std::vector<std::vector<int>> groups = {{0, 1, 2, 3}, {0, 2}, {1, 2, 3}};
    for (int step = 0; step < n_gen; ++step) {
      const std::vector<int>& g = groups[size_t(step) % groups.size()];
      std::vector<SlotBackend::Feed> fg, fc;
      for (int s : g) {
        fg.push_back({s, &next[size_t(s)], 1, lg[size_t(s)].data()});
        fc.push_back({s, &next[size_t(s)], 1, lc[size_t(s)].data()});
      }
      gpu.forward(fg);
      cpu.forward(fc);
      std::vector<float> ll(size_t(V), 0.0f);
      for (int s : g) {
        lone[size_t(s)]->append(std::span<const int32_t>(&next[size_t(s)], 1), ll.data());
        worst_lone = std::max(worst_lone, rel_l2(lg[size_t(s)], ll));
        EXPECT_EQ(lg[size_t(s)], ll) << "slot " << s << " step " << step << ": batched logits differ from the lone run";
        const double e = rel_l2(lg[size_t(s)], lc[size_t(s)]);
        worst = std::max(worst, e);
        EXPECT_LE(e, bound) << "slot " << s << " step " << step;
        if (argmax(lg[size_t(s)]) != argmax(lc[size_t(s)])) {
          ++flips;
          EXPECT_LT(top2_gap(lc[size_t(s)]), 0.25f) << "slot " << s << " step " << step;
        }
        next[size_t(s)] = argmax(lc[size_t(s)]);
        ++rows_fed;
      }
    }
    std::printf("  %s, 4 slots (300/120/40/200-token prompts) + %d batched decode steps of 4/2/3 rows: worst "
                "relative L2 vs CPU %.4f, vs lone GPU runs %.4f, %d near-tie flips in %d rows\n",
                attn.describe().c_str(), n_gen, worst, worst_lone, flips, rows_fed);
    EXPECT_EQ(worst_lone, 0.0);
    EXPECT_LE(flips, 3);
    // A reopened slot starts empty: the 40-token prompt again gives its first logits again.
    gpu.close(2);
    EXPECT_EQ(gpu.kv_units_free(), 1);  // 4 slots, 3 open
    gpu.open(2, n_ctx);
    EXPECT_EQ(gpu.n_past(2), 0);
    std::vector<float> again(size_t(V), 0.0f);
    gpu.forward(std::vector<SlotBackend::Feed>{{2, prompts[2].data(), 40, again.data()}});
    cpu.close(2);
    cpu.open(2, n_ctx);
    cpu.forward(std::vector<SlotBackend::Feed>{{2, prompts[2].data(), 40, lc[2].data()}});
    EXPECT_LE(rel_l2(again, lc[2]), bound);
    // Misuse changes nothing.
    const int32_t t = 5;
    EXPECT_THROW(gpu.forward(std::vector<SlotBackend::Feed>{{0, &t, 1, nullptr}, {0, &t, 1, nullptr}}), Error);
    gpu.close(1);
    EXPECT_THROW(gpu.forward(std::vector<SlotBackend::Feed>{{1, &t, 1, nullptr}}), Error);
    const std::vector<int32_t> big(200, 5);
    EXPECT_THROW(gpu.forward(std::vector<SlotBackend::Feed>{{0, big.data(), 200, nullptr}}), Error);  // > 128 rows
    const int32_t bad = V;
    EXPECT_THROW(gpu.forward(std::vector<SlotBackend::Feed>{{0, &bad, 1, nullptr}}), Error);
    EXPECT_EQ(gpu.n_past(0), lone[0]->n_past());  // the refused calls changed nothing

    // Six slots: decode rows beyond the batched GEMV's 4 go through cuBLAS (close to the CPU, not bit-exact).
    cuda::GpuSlotBackend six(cuda::GpuModel::upload(m, [&] {
      cuda::GpuModelOptions o6 = o;
      o6.n_seq = 6;
      return o6;
    }()));
    CpuSlotBackend cpu6(m, pool, 6, n_ctx, 256, 0, 128);
    std::vector<std::vector<float>> g6(6, std::vector<float>(size_t(V), 0.0f)), c6 = g6;
    std::vector<int32_t> t6(6);
    for (int s = 0; s < 6; ++s) {
      six.open(s, n_ctx);
      cpu6.open(s, n_ctx);
      const int32_t* p = all.data() + 60 * s;  // 6 different 50-token prompts
      six.forward(std::vector<SlotBackend::Feed>{{s, p, 50, g6[size_t(s)].data()}});
      cpu6.forward(std::vector<SlotBackend::Feed>{{s, p, 50, c6[size_t(s)].data()}});
      t6[size_t(s)] = argmax(c6[size_t(s)]);
    }
    double worst6 = 0;
    for (int step = 0; step < 4; ++step) {
      std::vector<SlotBackend::Feed> fg, fc;
      for (int s = 0; s < 6; ++s) {
        fg.push_back({s, &t6[size_t(s)], 1, g6[size_t(s)].data()});
        fc.push_back({s, &t6[size_t(s)], 1, c6[size_t(s)].data()});
      }
      six.forward(fg);
      cpu6.forward(fc);
      for (int s = 0; s < 6; ++s) {
        worst6 = std::max(worst6, rel_l2(g6[size_t(s)], c6[size_t(s)]));
        t6[size_t(s)] = argmax(c6[size_t(s)]);
      }
    }
    std::printf("  %s, 6 slots x 4 batched decode steps (cuBLAS rows): worst relative L2 vs CPU %.4f\n",
                attn.describe().c_str(), worst6);
    EXPECT_LE(worst6, bound);
  }
}

}  // namespace
}  // namespace hs
