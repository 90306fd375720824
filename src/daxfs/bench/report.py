"""Showing a run: the console table (or Markdown) and the PNG plot, both from the JSON document.

Working from the JSON alone means a saved run can be drawn again
(``daxfs bench --from-json OUT``) and what the README shows is what the JSON holds.
"""

from __future__ import annotations

from typing import Any

Doc = dict[str, Any]


def _num(x: float | None) -> str:
    if x is None:
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}"


def _load(values: list[float] | None) -> str:
    return "?" if not values else "/".join(f"{x:.1f}" for x in values)


def table(doc: Doc, *, markdown: bool = False) -> str:
    """Every figure (median, min, max) and every ratio with its target."""
    rows = [
        [name, f["unit"], _num(f["median"]), _num(f["min"]), _num(f["max"])]
        for name, f in doc["figures"].items()
    ]
    ratio_rows = []
    for name, r in doc["ratios"].items():
        target = "" if r["target"] is None else f"{r['target_is']} {r['target']:g}"
        met = {True: "yes", False: "NO", None: ""}[r["met"]]
        ratio_rows.append([name, _num(r["median"]), _num(r["min"]), _num(r["max"]), target, met])
    m = doc["machine"]
    head = (
        f"daxfs bench ({'quick' if doc['quick'] else 'full'}, {doc['reps']} reps, "
        f"{doc['seconds']} s): {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
        f"Linux {m['kernel']}, load average {_load(doc['info'].get('loadavg_start'))} at the "
        f"start, {_load(m['loadavg'])} at the end"
    )
    digests = doc["digests"]
    bad = [k for k, d in digests.items() if not d["ok"]]
    tail = f"digests: {len(digests) - len(bad)}/{len(digests)} verified" + (
        f" (unchecked: {', '.join(bad)})" if bad else ""
    )
    parts = [head, ""]
    parts.append(_grid(["figure", "unit", "median", "min", "max"], rows, markdown))
    parts.append("")
    parts.append(_grid(["ratio (paired per run)", "median", "min", "max", "target", "met"],
                       ratio_rows, markdown))  # fmt: skip
    parts += ["", tail]
    return "\n".join(parts)


def _grid(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]  # fmt: skip

    def fmt(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    return "\n".join([fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)])


def _bars(ax: Any, doc: Doc, groups: list[str], series: list[tuple[str, str]], unit: str) -> None:
    """Grouped bars: one group per entry of ``groups``, one bar per (label, name pattern)."""
    figs = doc["figures"]
    width = 0.8 / max(len(series), 1)
    for i, (label, pat) in enumerate(series):
        xs, meds, lo, hi = [], [], [], []
        for g, group in enumerate(groups):
            f = figs.get(pat.format(group))
            if f is None or f["median"] is None:
                continue
            xs.append(g + i * width)
            meds.append(f["median"])
            lo.append(f["median"] - f["min"])
            hi.append(f["max"] - f["median"])
        ax.bar(xs, meds, width, yerr=[lo, hi], capsize=2, label=label)
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))], groups)
    ax.set_ylabel(unit)
    ax.legend(fontsize=7)


WHOLE_FILE = [
    ("gRPC Read RPC", "net.grpc_read"),
    ("DAX open+map+copy", "net.dax_read"),
    ("lib read()", "lib.read"),
    ("lib readinto()", "lib.readinto"),
    ("lib write()", "lib.write"),
    ("numpy copy 64M", "lib.numpy_copy"),
]


def _fio_series(*workloads: str) -> list[tuple[str, str]]:
    return [(f"{w} {j}j", "fio.{}." + f"{w}.{j}j") for w in workloads for j in (1, 2)]


LATENCIES = [
    ("GetLayout p50", "rpc.getlayout.p50"),
    ("health Check p50", "rpc.check.p50"),
    ("Stats p50", "rpc.stats.p50"),
    ("GetLayout p99", "rpc.getlayout.p99"),
    ("health Check p99", "rpc.check.p99"),
    ("Stats p99", "rpc.stats.p99"),
    ("store->load, region", "cross.region"),
    ("store->load, daxfs mount", "cross.daxfs"),
    ("store->load, tmpfs", "cross.tmpfs"),
]


def _latencies(ax: Any, doc: Doc) -> None:
    figs = [(label, doc["figures"][name]) for label, name in LATENCIES if name in doc["figures"]]
    ys = list(range(len(figs)))
    meds = [f["median"] for _, f in figs]
    err = [[f["median"] - f["min"] for _, f in figs], [f["max"] - f["median"] for _, f in figs]]
    ax.barh(ys, meds, xerr=err, capsize=2, color=["tab:blue"] * 6 + ["tab:purple"] * 3)
    ax.set_yticks(ys, [label for label, _ in figs], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("us (log)")
    ax.set_title("RPC round trips; cross-guest one-way latency (median trip / 2)")


def plot(doc: Doc, path: str) -> None:
    """Six panels: copies, fio 1 MiB, fio 4 KiB, whole-file reads, latencies, targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [k.rsplit(".", 1)[1] for k in doc["figures"] if k.startswith("limit.ram.") and
             not k.startswith("limit.ram.load")]  # fmt: skip
    fig, axes = plt.subplots(3, 2, figsize=(13, 13))
    ax = axes[0][0]
    _bars(ax, doc, sizes, [
        ("numpy copy, private", "limit.ram.{}"), ("numpy copy, /dev/shm map", "limit.shm.{}"),
        ("DAX array() copy out", "dax.read.{}"), ("DAX array() copy in", "dax.write.{}"),
        ("DAX open+map+copy out", "dax.read_cold.{}"),
    ], "GB/s")  # fmt: skip
    ax.set_title("Sequential copy, single thread")
    targets = ["daxfs", "tmpfs", "naive"]
    ax = axes[0][1]
    _bars(ax, doc, targets, _fio_series("seqread", "seqwrite"), "MB/s")
    ax.set_title("fio psync, 1 MiB sequential")
    ax = axes[1][0]
    _bars(ax, doc, targets, _fio_series("randread", "randwrite"), "kIOPS")
    ax.set_yscale("log")
    ax.set_title("fio psync, 4 KiB random (log scale)")
    ax = axes[1][1]
    _bars(ax, doc, ["GB/s"], WHOLE_FILE, "GB/s")
    ax.set_xticks([])
    ax.set_title(
        f"Whole-file reads ({doc['info'].get('net.size', 0) >> 20} MiB) and library 64 MiB"
    )
    _latencies(axes[2][0], doc)
    ax = axes[2][1]
    ratios = [(k, r) for k, r in doc["ratios"].items() if r["target"] is not None]
    # Normalized so that right of 1 passes for every target, ">=" and "<=" alike.
    score = [
        r["target"] / r["median"] if r["target_is"] == "<=" else r["median"] / r["target"]
        for _, r in ratios
    ]
    ys = list(range(len(ratios)))
    ax.barh(ys, score, color=["tab:green" if r["met"] else "tab:red" for _, r in ratios])
    ax.axvline(1.0, color="black", lw=1)
    ax.set_xscale("log")
    ax.set_yticks(ys, [f"{k} ({r['target_is']} {r['target']:g})" for k, r in ratios], fontsize=7)
    ax.set_xlabel("how far past the target (log; right of 1 = met)")
    ax.set_title("Targets (issues 2 and 5), median of paired ratios")
    m = doc["machine"]
    fig.suptitle(
        f"daxfs bench ({'quick' if doc['quick'] else 'full'}): {m['cpu']}, {m['cores']} cores, "
        f"Linux {m['kernel']}; bars = median, whiskers = min..max of {doc['reps']} runs"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
