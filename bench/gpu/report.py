"""Merges the JSON lines of gpu_bench and sdpa_bench into one JSON file and a markdown table (bench/gpu/run.sh)."""
import argparse
import json


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--machine", required=True)
    ap.add_argument("--out-json", required=True)
    ap.add_argument("--out-md", required=True)
    ap.add_argument("inputs", nargs="+")
    a = ap.parse_args()
    rows = []
    for path in a.inputs:
        try:
            with open(path) as f:
                rows += [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            pass
    machine = open(a.machine).read()
    card = next((l for l in machine.splitlines() if "NVIDIA" in l or "H100" in l or "H200" in l), "unknown card")
    with open(a.out_json, "w") as f:
        json.dump({"machine": machine, "results": rows}, f, indent=1)
    by = {(r["name"], r["T"]): r for r in rows}
    md = [f"Card: {card.strip()}", "", "| measurement | T | median ms | min ms | TFLOP/s |", "|---|---|---|---|---|"]
    for r in rows:
        tf = f"{r['tflops']:.0f}" if r.get("tflops") else ""
        md.append(f"| {r['name']} | {r['T']} | {r['ms_median']:.4f} | {r['ms_min']:.4f} | {tf} |")
    md.append("")
    for T in sorted({r["T"] for r in rows}):
        hip = by.get(("hip_prefill", T))
        for base in ("sdpa_default_prefill", "sdpa_flash_prefill", "dense_prefill_v0"):
            b = by.get((base, T))
            if hip and b:
                md.append(f"- T={T}: HiP prefill {hip['ms_median']:.2f} ms, {b['ms_median'] / hip['ms_median']:.2f}x faster "
                          f"than {base} ({b['ms_median']:.2f} ms)")
        ours = by.get(("dense_prefill_cudnn", T))
        for base in ("sdpa_default_prefill", "sdpa_flash_prefill"):
            b = by.get((base, T))
            if ours and b:
                md.append(f"- T={T}: our dense prefill through cuDNN {ours['ms_median']:.2f} ms, "
                          f"{b['ms_median'] / ours['ms_median']:.2f}x {base} ({b['ms_median']:.2f} ms)")
    for base in ("sdpa_default_decode", "dense_decode"):
        h, b = by.get(("hip_decode_amortized", 131072)), by.get((base, 131072))
        if h and b:
            md.append(f"- decode 128K: HiP amortized {h['ms_median'] * 1e3:.1f} us/step vs {base} {b['ms_median'] * 1e3:.1f} us")
    with open(a.out_md, "w") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
