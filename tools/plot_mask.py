#!/usr/bin/env python3
"""Draws a HiP mask beside the true attention of the same head: the JSON of `hipserve eval mask` -> a PNG.

usage: tools/plot_mask.py mask.json docs/hip_mask.png
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    d = json.load(open(sys.argv[1]))
    g = d["grid"]
    att = np.array(d["attention"], dtype=np.float64).reshape(g, g)
    mask = np.array(d["mask"], dtype=np.float64).reshape(g, g)
    causal = np.tril(np.ones((g, g), dtype=bool))
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.6), constrained_layout=True)
    extent = [0, d["ctx"], d["ctx"], 0]
    a = np.where(causal, np.maximum(att, 1e-6), np.nan)
    im0 = axes[0].imshow(a, norm=LogNorm(vmin=1e-5, vmax=1), cmap="magma", extent=extent, interpolation="nearest")
    axes[0].set_title(f"true attention (max prob per cell), layer {d['layer']} head {d['head']}")
    fig.colorbar(im0, ax=axes[0], shrink=0.8)
    m = np.where(causal, mask, np.nan)
    im1 = axes[1].imshow(m, vmin=0, vmax=1, cmap="viridis", extent=extent, interpolation="nearest")
    axes[1].set_title(
        f"HiP mask (share attended): k={d['k']}, b_q={d['block_q']}, b_k={d['block_k']}, "
        f"sink {d['sink']}, window {d['window']}")
    fig.colorbar(im1, ax=axes[1], shrink=0.8)
    for ax in axes:
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
    fig.suptitle(f"SmolLM2-135M on {d['file'].split('/')[-1]}, first {d['ctx']} tokens")
    fig.savefig(sys.argv[2], dpi=110)
    print(f"wrote {sys.argv[2]}")


if __name__ == "__main__":
    main()
