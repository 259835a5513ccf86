#!/usr/bin/env python3
"""Prefill and decode time against context length, dense vs HiP, with fitted log-log slopes.

Runs `hipserve bench` once per (attention, context) in a fresh process (so peak memory is per run), then writes
docs/scaling.json, docs/scaling.md (table) and docs/scaling.png (plot).

usage: tools/scaling_bench.py [--bin build/hipserve] [--contexts 1024,2048,...] [--threads 2] [--out docs]
"""
import argparse
import json
import math
import subprocess
import sys
from pathlib import Path


def run_bench(binary, attn, ctx, n_gen, threads, extra):
    cmd = [binary, "bench", "--json", "-p", str(ctx), "-n", str(n_gen), "-d", str(ctx), "-r", "1",
           "--no-warmup", "-c", str(ctx + n_gen + 1), "-t", str(threads), "--attn", attn] + extra
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    pp = next(r for r in rows if r["test"].startswith("pp"))
    tg = next(r for r in rows if r["test"].startswith("tg"))
    return {
        "attn": attn, "ctx": ctx,
        "prefill_s": ctx / pp["avg_ts"], "prefill_tok_s": pp["avg_ts"],
        "decode_ms": 1000.0 / tg["avg_ts"], "decode_tok_s": tg["avg_ts"],
        "peak_rss_mib": tg["peak_rss_mib"], "attention": pp["attention"],
        "hip_mask_ms_prefill": pp.get("hip_mask_ms", 0), "hip_attn_ms_prefill": pp.get("hip_attn_ms", 0),
    }


def slope(points):
    """Least-squares slope of log(y) against log(x)."""
    xs = [math.log(x) for x, _ in points]
    ys = [math.log(y) for _, y in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx if sxx > 0 else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="build/hipserve")
    ap.add_argument("--contexts", default="1024,2048,4096,8192,16384,32768")
    ap.add_argument("--n-gen", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="docs")
    ap.add_argument("--fit-from", type=int, default=2048, help="fit slopes over contexts >= this")
    ap.add_argument("extra", nargs="*", help="more hipserve flags (after --)")
    a = ap.parse_args()
    contexts = [int(c) for c in a.contexts.split(",")]
    results = []
    for attn in ("dense", "hip"):
        for ctx in contexts:
            results.append(run_bench(a.bin, attn, ctx, a.n_gen, a.threads, a.extra))
            r = results[-1]
            print(f"{attn:5s} {ctx:6d}: prefill {r['prefill_s']:8.2f} s ({r['prefill_tok_s']:7.1f} tok/s), "
                  f"decode {r['decode_ms']:7.2f} ms/token, peak {r['peak_rss_mib']:.0f} MiB", file=sys.stderr, flush=True)
    fits = {}
    for attn in ("dense", "hip"):
        pts = [r for r in results if r["attn"] == attn and r["ctx"] >= a.fit_from]
        fits[attn] = {"prefill_slope": slope([(r["ctx"], r["prefill_s"]) for r in pts]),
                      "decode_slope": slope([(r["ctx"], r["decode_ms"]) for r in pts])}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaling.json").write_text(json.dumps({"results": results, "fits": fits}, indent=2))

    lines = ["| context | dense prefill (s) | HiP prefill (s) | speedup | dense decode (ms/tok) | HiP decode (ms/tok) "
             "| speedup | dense peak MiB | HiP peak MiB |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for ctx in contexts:
        d = next(r for r in results if r["attn"] == "dense" and r["ctx"] == ctx)
        h = next(r for r in results if r["attn"] == "hip" and r["ctx"] == ctx)
        lines.append(f"| {ctx} | {d['prefill_s']:.2f} | {h['prefill_s']:.2f} | {d['prefill_s'] / h['prefill_s']:.2f}x | "
                     f"{d['decode_ms']:.2f} | {h['decode_ms']:.2f} | {d['decode_ms'] / h['decode_ms']:.2f}x | "
                     f"{d['peak_rss_mib']:.0f} | {h['peak_rss_mib']:.0f} |")
    lines.append("")
    lines.append(f"Fitted log-log slopes over contexts >= {a.fit_from}: prefill dense {fits['dense']['prefill_slope']:.2f}, "
                 f"HiP {fits['hip']['prefill_slope']:.2f}; decode per token dense {fits['dense']['decode_slope']:.2f}, "
                 f"HiP {fits['hip']['decode_slope']:.2f}.")
    (out / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    for attn, style in (("dense", "o-"), ("hip", "s-")):
        rs = [r for r in results if r["attn"] == attn]
        f = fits[attn]
        axes[0].loglog([r["ctx"] for r in rs], [r["prefill_s"] for r in rs], style,
                       label=f"{attn} (slope {f['prefill_slope']:.2f})", base=2)
        axes[1].loglog([r["ctx"] for r in rs], [r["decode_ms"] for r in rs], style,
                       label=f"{attn} (slope {f['decode_slope']:.2f})", base=2)
    axes[0].set_title("prefill time of the whole prompt")
    axes[0].set_ylabel("seconds")
    axes[1].set_title("decode time per token at that depth")
    axes[1].set_ylabel("ms / token")
    for ax in axes:
        ax.set_xlabel("context length (tokens)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"SmolLM2-135M Q4_1 on the CPU ({a.threads} threads): dense vs HiP ({results[-1]['attention']})",
                 fontsize=9)
    fig.savefig(out / "scaling.png", dpi=110)
    print(f"wrote {out / 'scaling.png'}", file=sys.stderr)


if __name__ == "__main__":
    main()
