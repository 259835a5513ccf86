// Dumps real attention inputs of a model for the GPU tests (src/backends/cuda/attention_cuda_test.cpp): the
// model reads a text, and for the last n_query tokens the query rows (after RoPE) and the whole K/V cache of a
// few layers are written, one file per layer:
//   int32 {n_q, n_kv, q_pos0, n_head, n_kv_head, head_dim}, q fp32 [n_q][n_head*head_dim],
//   k fp16 [n_kv_head][n_kv][head_dim], v fp16 [n_kv_head][n_kv][head_dim]
//
//   hipserve_dump_activations MODEL.gguf TEXT.txt OUT_DIR [n_ctx=4096] [n_query=512] [layers=4,15,29]
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "model/llama.h"
#include "util/common.h"
#include "util/thread_pool.h"

using namespace hs;

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MODEL.gguf TEXT.txt OUT_DIR [n_ctx] [n_query] [layers]\n", argv[0]);
    return 2;
  }
  const int32_t n_ctx = argc > 4 ? std::atoi(argv[4]) : 4096;
  const int32_t n_query = argc > 5 ? std::atoi(argv[5]) : 512;
  std::vector<int> layers = {4, 15, 29};
  if (argc > 6) {
    layers.clear();
    std::stringstream ss(argv[6]);
    for (std::string t; std::getline(ss, t, ',');) layers.push_back(std::atoi(t.c_str()));
  }
  LoadOptions lo;
  lo.show_progress = false;
  auto model = Model::load(argv[1], lo);
  const ModelConfig& c = model->config();
  std::ifstream in(argv[2]);
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<int32_t> tokens = model->tokenizer().encode(text, true, false);
  if (int32_t(tokens.size()) < n_ctx) {
    std::fprintf(stderr, "the text has %zu tokens, fewer than %d\n", tokens.size(), n_ctx);
    return 1;
  }
  tokens.resize(n_ctx);
  ThreadPool pool(std::max(1u, std::thread::hardware_concurrency()));
  model->set_max_batch_tokens(n_query);
  KvCache cache(c, n_ctx);
  const int32_t q_pos0 = n_ctx - n_query;
  model->prefill(cache, std::span<const int32_t>(tokens.data(), q_pos0), nullptr, pool);
  std::vector<float> q;
  int written = 0;
  model->set_debug_tap([&](const char* name, int layer, const float* data, int64_t rows, int64_t cols) {
    if (layer < 0) return;
    if (std::string(name) == "q_rope") q.assign(data, data + rows * cols);
    if (std::string(name) != "attn_out") return;
    bool want = false;
    for (int l : layers) want |= l == layer;
    if (!want) return;
    const std::string path = std::string(argv[3]) + "/layer" + std::to_string(layer) + ".bin";
    std::ofstream out(path, std::ios::binary);
    const int32_t hdr[6] = {int32_t(rows), n_ctx, q_pos0, c.n_head, c.n_head_kv, c.head_dim};
    out.write(reinterpret_cast<const char*>(hdr), sizeof(hdr));
    out.write(reinterpret_cast<const char*>(q.data()), q.size() * sizeof(float));
    for (const uint16_t* base : {cache.k(layer), cache.v(layer)})
      for (int32_t g = 0; g < c.n_head_kv; ++g)
        out.write(reinterpret_cast<const char*>(base + g * cache.head_stride()),
                  sizeof(uint16_t) * size_t(n_ctx) * c.head_dim);
    std::printf("%s: %lld query rows at %d, %d keys, %d/%d heads, dim %d\n", path.c_str(), (long long)rows, q_pos0,
                n_ctx, c.n_head, c.n_head_kv, c.head_dim);
    ++written;
  });
  std::vector<float> logits(c.n_vocab);
  model->prefill(cache, std::span<const int32_t>(tokens.data() + q_pos0, n_query), logits.data(), pool);
  model->set_debug_tap(nullptr);
  return written == int(layers.size()) ? 0 : 1;
}
