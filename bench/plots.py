"""PNG plots from benchmark JSON results: RTFx vs batch size, latency vs concurrent streams.

    python bench/plots.py bench/results/levers_cpu.json bench/results/stream_cpu.json --out docs/img
    python bench/plots.py bench/results/gpu/gpu_suite.json --out docs/img --tag h100

Each input is a benchmark's JSON line (bench/gpu_levers.py: batch sweep; bench/stream_bench.py:
levels) or a gpu_suite.json holding several. One figure per kind, one line per input, labelled
with the device the run names.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def collect(obj, label: str, sweeps: list, streams: list) -> None:
    if isinstance(obj, dict):
        device = obj.get("device", label)
        if obj.get("model"):
            device = f"{device}, {Path(str(obj['model'])).stem}"
        if isinstance(obj.get("levers"), dict) and isinstance(obj["levers"].get("batch"), list):
            sweeps.append((device, obj["levers"]["batch"]))
        if isinstance(obj.get("levels"), list):
            cfg = obj.get("stream_config", {})
            tag = f"chunk {cfg.get('chunk_s')} s, eou {cfg.get('eou_ms')} ms" if cfg else ""
            streams.append((f"{device} {tag}".strip(), obj["levels"]))
        has_levers = isinstance(obj.get("levers"), dict) and "batch" in obj["levers"]
        consumed = {"levels"} | ({"levers"} if has_levers else set())
        for k, v in obj.items():
            if k not in consumed and isinstance(v, (dict, list)):
                collect(v, label, sweeps, streams)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("docs/img"))
    ap.add_argument("--tag", default="cpu", help="file name suffix")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps, streams = [], []
    for p in args.inputs:
        text = p.read_text().strip()
        collect(json.loads(text.splitlines()[-1] if not text.startswith("{\n") else text), p.stem, sweeps, streams)
    args.out.mkdir(parents=True, exist_ok=True)

    def save(fig, ax, name: str, legend_size: int) -> None:
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)
        fig.tight_layout()
        path = args.out / f"{name}_{args.tag}.png"
        fig.savefig(path, dpi=110)
        print(path)

    if sweeps:
        fig, ax = plt.subplots(figsize=(6, 4))
        for device, rows in sweeps:
            ax.plot([r["batch"] for r in rows], [r["rtfx"] for r in rows], marker="o", label=device)
        ax.set(
            xscale="log",
            xlabel="batch size (clips per forward pass)",
            ylabel="RTFx (audio s / wall s)",
            title="Batch throughput vs batch size",
        )
        ax.set_xticks([r["batch"] for r in sweeps[0][1]], [str(r["batch"]) for r in sweeps[0][1]])
        save(fig, ax, "rtfx_vs_batch", 8)
    if streams:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, rows in streams:
            ns = [r["streams"] for r in rows]
            ax.plot(ns, [r["eos_to_final_p95"] for r in rows], marker="o", label=f"{label} p95")
            ax.plot(ns, [r["eos_to_final_p50"] for r in rows], marker=".", linestyle="--", label=f"{label} p50")
        ax.set(
            xlabel="concurrent real-time streams",
            ylabel="end of speech -> final (s)",
            title="Streaming latency vs concurrent streams",
        )
        save(fig, ax, "latency_vs_streams", 7)


if __name__ == "__main__":
    main()
