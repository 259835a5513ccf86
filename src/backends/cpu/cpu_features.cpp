#include "backends/cpu/cpu_features.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "util/common.h"

namespace hs::cpu {

namespace {

CpuFeatures detect() {
  CpuFeatures f;
#if defined(__x86_64__)
  __builtin_cpu_init();
  f.avx2 = __builtin_cpu_supports("avx2");
  f.fma = __builtin_cpu_supports("fma");
  f.f16c = true;  // x86-64-v3 baseline; the binary would not have started without it
  f.avx512f = __builtin_cpu_supports("avx512f");
  f.avx512bw = __builtin_cpu_supports("avx512bw");
  f.avx512vl = __builtin_cpu_supports("avx512vl");
  f.avx512vnni = __builtin_cpu_supports("avx512vnni");
  f.avx512bf16 = __builtin_cpu_supports("avx512bf16");
  // AMX-INT8: CPUID.(EAX=7,ECX=0):EDX bit 25 (gcc 12's __builtin_cpu_supports does not know "amx-int8").
  unsigned eax = 7, ebx = 0, ecx = 0, edx = 0;
  __asm__("cpuid" : "+a"(eax), "=b"(ebx), "+c"(ecx), "=d"(edx));
  f.amx_int8 = (edx >> 25) & 1u;
#endif
  return f;
}

// -1 until first use, then a SimdPath value.
std::atomic<int> g_path{-1};

}  // namespace

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = detect();
  return features;
}

SimdPath simd_path() {
  int p = g_path.load(std::memory_order_relaxed);
  if (p < 0) {
    p = int(simd_path_from_env(std::getenv("HIPSERVE_CPU")));
    g_path.store(p, std::memory_order_relaxed);
  }
  return SimdPath(p);
}

void set_simd_path(SimdPath path) {
  HS_CHECK(path == SimdPath::kAvx2 || cpu_features().has_avx512_path(),
           "SIMD path %s is not supported by this CPU", simd_path_name(path));
  g_path.store(int(path), std::memory_order_relaxed);
}

SimdPath simd_path_from_env(const char* value) {
  const CpuFeatures& f = cpu_features();
  if (value && *value) {
    if (std::strcmp(value, "avx2") == 0) return SimdPath::kAvx2;
    if (std::strcmp(value, "avx512") == 0) {
      HS_CHECK(f.has_avx512_path(), "HIPSERVE_CPU=avx512, but this CPU lacks AVX-512 F/BW/VL/VNNI");
      return SimdPath::kAvx512;
    }
    fail(strfmt("HIPSERVE_CPU=%s: expected avx2 or avx512", value));
  }
  return f.has_avx512_path() ? SimdPath::kAvx512 : SimdPath::kAvx2;
}

std::vector<SimdPath> supported_simd_paths() {
  std::vector<SimdPath> paths{SimdPath::kAvx2};
  if (cpu_features().has_avx512_path()) paths.push_back(SimdPath::kAvx512);
  return paths;
}

const char* simd_path_name(SimdPath path) {
  return path == SimdPath::kAvx512 ? "avx512" : "avx2";
}

}  // namespace hs::cpu
