"""torch SDPA baselines for bench/gpu: one layer, batch 1, H=32, H_kv=8, D=128, bf16, random normal inputs.

Times causal prefill at each T with the default backend choice (cuDNN attention on H100 with torch 2.11),
the cuDNN backend named explicitly, and the FlashAttention-2 backend; and one decode step (a single query
row against T keys) at 128K. CUDA events, median of many repetitions after warm-up. Writes JSON lines.

    python3 sdpa_bench.py --json out.jsonl [--T 32768 131072 262144]
"""
import argparse
import json
import statistics

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

H, HKV, D = 32, 8, 128


def time_ms(fn, warmup, reps):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times), min(times)


def sdpa(q, k, v, causal, backend):
    def run():
        if backend is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

    try:
        run()
        return run
    except RuntimeError:
        # A backend without GQA support: expand K/V to all heads (what it would read anyway).
        ke = k.repeat_interleave(H // HKV, dim=1)
        ve = v.repeat_interleave(H // HKV, dim=1)

        def run_expanded():
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, ke, ve, is_causal=causal)

        run_expanded()
        return run_expanded


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--T", type=int, nargs="+", default=[32768, 131072, 262144])
    args = ap.parse_args()
    dev = torch.device("cuda")
    out = open(args.json, "w")
    name = torch.cuda.get_device_name()
    print(f"device: {name}, torch {torch.__version__}")

    def emit(row):
        print(f"{row['name']:<26} T={row['T']:7d}  median {row['ms_median']:10.4f} ms  min {row['ms_min']:10.4f} ms"
              + (f"  {row['tflops']:6.1f} TFLOP/s" if row.get("tflops") else ""))
        out.write(json.dumps(row) + "\n")
        out.flush()

    backends = [("sdpa_default", None), ("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                ("sdpa_flash", SDPBackend.FLASH_ATTENTION)]
    for T in args.T:
        q = torch.randn(1, H, T, D, device=dev, dtype=torch.bfloat16) * 1.5
        k = torch.randn(1, HKV, T, D, device=dev, dtype=torch.bfloat16)
        v = torch.randn(1, HKV, T, D, device=dev, dtype=torch.bfloat16)
        flops = 4.0 * 0.5 * T * T * H * D
        for label, be in backends:
            if T > 131072 and label == "sdpa_cudnn":
                continue
            try:
                fn = sdpa(q, k, v, True, be)
            except Exception as e:  # noqa: BLE001 - report and go on
                print(f"{label} T={T}: unavailable ({type(e).__name__}: {str(e)[:120]})")
                continue
            reps = 20 if T <= 32768 else (5 if T <= 131072 else 3)
            med, mn = time_ms(fn, 1, reps)
            emit({"name": label + "_prefill", "T": T, "ms_median": med, "ms_min": mn, "reps": reps,
                  "tflops": flops / (med * 1e-3) / 1e12})
        del q, k, v
        torch.cuda.empty_cache()

    T = 131072
    q = torch.randn(1, H, 1, D, device=dev, dtype=torch.bfloat16) * 1.5
    k = torch.randn(1, HKV, T, D, device=dev, dtype=torch.bfloat16)
    v = torch.randn(1, HKV, T, D, device=dev, dtype=torch.bfloat16)
    for label, be in backends:
        try:
            fn = sdpa(q, k, v, False, be)
        except Exception as e:  # noqa: BLE001
            print(f"{label} decode: unavailable ({type(e).__name__}: {str(e)[:120]})")
            continue
        # A CUDA graph of 8 steps, as for our decode.
        g = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        with torch.cuda.graph(g):
            for _ in range(8):
                fn()
        med, mn = time_ms(g.replay, 10, 200)
        emit({"name": label + "_decode", "T": T, "ms_median": med / 8, "ms_min": mn / 8, "reps": 200, "tflops": 0})


if __name__ == "__main__":
    main()
