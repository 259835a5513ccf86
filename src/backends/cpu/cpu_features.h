// CPU feature detection and the choice of SIMD code path for the hot kernels.
//
// The build baseline is x86-64-v3 (AVX2, FMA, F16C), so the AVX2 path always exists. The AVX-512 path
// (F, BW, VL, VNNI) lives in functions compiled with a target attribute and is chosen once at run time,
// when the CPU has it. HIPSERVE_CPU=avx2|avx512 in the environment forces a path; tests and benchmarks
// switch paths with set_simd_path().
#pragma once

#include <vector>

namespace hs::cpu {

struct CpuFeatures {
  bool avx2 = false, fma = false, f16c = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512vnni = false, avx512bf16 = false;
  bool amx_int8 = false;  // reported for information; no kernel uses AMX yet

  bool has_avx512_path() const { return avx512f && avx512bw && avx512vl && avx512vnni; }
};

enum class SimdPath { kAvx2 = 0, kAvx512 = 1 };

const CpuFeatures& cpu_features();  // detected once

// The path the kernels use now. On first use: HIPSERVE_CPU if set (an unknown value, or a path the CPU lacks,
// throws hs::Error), else the best one the CPU supports.
SimdPath simd_path();

// Overrides the path for the whole process (tests, benchmarks). Throws hs::Error if the CPU lacks it. Not
// synchronized with kernels running concurrently: switch only between calls.
void set_simd_path(SimdPath path);

// The path a HIPSERVE_CPU value selects: "avx2", "avx512", or nullptr / "" for the best the CPU supports.
// Throws hs::Error for other values and for a path the CPU lacks.
SimdPath simd_path_from_env(const char* value);

std::vector<SimdPath> supported_simd_paths();  // kAvx2 first
const char* simd_path_name(SimdPath path);     // "avx2", "avx512"

}  // namespace hs::cpu
