#!/usr/bin/env python3
"""Summarise one bench/run.sh result directory: medians, same-run ratios, targets."""
import csv
import json
import statistics
import sys
from pathlib import Path

WARMUP = 10  # fork-loop iterations ignored


def main(res: Path) -> None:
    fork: dict[str, dict[str, list[float]]] = {}
    with open(res / "fork_timing.csv") as f:
        for row in csv.DictReader(f):
            if int(row["iter"]) <= WARMUP:
                continue
            d = fork.setdefault(row["variant"], {"exec": [], "total": []})
            d["exec"].append(float(row["exec_us"]))
            d["total"].append(float(row["total_us"]))
    fm = {v: {k: statistics.median(x) for k, x in d.items()} for v, d in fork.items()}
    fn = {v: len(d["exec"]) for v, d in fork.items()}

    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    wal: dict[tuple[str, str], list[float]] = {}
    with open(res / "pgbench.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            runs.setdefault((row["bench"], row["variant"]), []).append((float(row["tps"]), float(row["latency_ms"])))
            if row.get("wal_bytes_per_txn"):
                wal.setdefault((row["bench"], row["variant"]), []).append(float(row["wal_bytes_per_txn"]))
    tps = {k: statistics.median(t for t, _ in v) for k, v in runs.items()}
    lat = {k: statistics.median(l for _, l in v) for k, v in runs.items()}
    all_tps = {k: [t for t, _ in v] for k, v in runs.items()}

    def ms(us: float) -> str:
        return f"{us / 1000:.3f} ms"

    rows = []  # (benchmark, measured, baseline, ratio, target, met)

    r = fm["fork_10000"]["exec"] / fm["fork_10"]["exec"]
    rows.append(("1a fork 10,000 vs 10 msgs (statement)",
                 f"{ms(fm['fork_10000']['exec'])}", f"{ms(fm['fork_10']['exec'])}", f"{r:.2f}x", "<= 1.5x", r <= 1.5))
    r = fm["fork_10000"]["total"] / fm["fork_10"]["total"]
    rows.append(("1a' same, incl. COMMIT",
                 f"{ms(fm['fork_10000']['total'])}", f"{ms(fm['fork_10']['total'])}", f"{r:.2f}x", "<= 1.5x", r <= 1.5))
    r = fm["copy_10000"]["exec"] / fm["fork_10000"]["exec"]
    rows.append(("1b copy 10,000 msgs / fork (statement)",
                 f"{ms(fm['fork_10000']['exec'])}", f"{ms(fm['copy_10000']['exec'])}", f"{r:.1f}x faster", ">= 100x", r >= 100))
    r = fm["copy_10000"]["total"] / fm["fork_10000"]["total"]
    rows.append(("1b' same, incl. COMMIT",
                 f"{ms(fm['fork_10000']['total'])}", f"{ms(fm['copy_10000']['total'])}", f"{r:.1f}x faster", ">= 100x", r >= 100))
    if "copy_indexed_10000" in fm:
        r = fm["copy_indexed_10000"]["exec"] / fm["fork_10000"]["exec"]
        rows.append(("1b\" copy into an indexed message table / fork (extra)",
                     f"{ms(fm['fork_10000']['exec'])}", f"{ms(fm['copy_indexed_10000']['exec'])}", f"{r:.1f}x faster",
                     ">= 100x", r >= 100))

    f, m = ("read", "flat"), ("read", "memoriesdb")
    r = lat[m] / lat[f]
    rows.append(("2  read 1,000 msgs over 10 forks",
                 f"{tps[m]:.1f} tps ({lat[m]:.3f} ms)", f"{tps[f]:.1f} tps ({lat[f]:.3f} ms)",
                 f"{r:.2f}x slower", "<= 2x", r <= 2))

    f, m = ("read_after_writes", "flat"), ("read_after_writes", "memoriesdb")
    if m in lat:
        r = lat[m] / lat[f]
        rows.append(("2' same, after the writes + ANALYZE (extra)",
                     f"{tps[m]:.1f} tps ({lat[m]:.3f} ms)", f"{tps[f]:.1f} tps ({lat[f]:.3f} ms)",
                     f"{r:.2f}x slower", "<= 2x", r <= 2))

    f, m, o = ("write", "flat"), ("write", "memoriesdb"), ("write", "memoriesdb_one_session")
    r = tps[m] / tps[f]
    rows.append(("3  write, 8 clients, own sessions",
                 f"{tps[m]:.0f} tps", f"{tps[f]:.0f} tps", f"{r:.2f}x", ">= 0.5x", r >= 0.5))
    r = tps[o] / tps[f]
    rows.append(("3' write, 8 clients, one session (extra)",
                 f"{tps[o]:.0f} tps", f"{tps[f]:.0f} tps", f"{r:.2f}x", "(none)", None))
    i = ("write", "flat_indexed")
    if i in tps:
        r = tps[m] / tps[i]
        rows.append(("3\" write vs INSERT into the indexed flat table (extra)",
                     f"{tps[m]:.0f} tps", f"{tps[i]:.0f} tps", f"{r:.2f}x", "(none)", None))
        r = tps[i] / tps[f]
        rows.append(("3\"' indexed flat table vs bare INSERT (extra)",
                     f"{tps[i]:.0f} tps", f"{tps[f]:.0f} tps", f"{r:.2f}x", "(none)", None))

    b = ("write", "memoriesdb_batch2")
    if b in tps:
        r = 2 * tps[b] / tps[m]
        rows.append(("3\"\" write, 2 messages per add_messages_to_session call, vs one per call (extra)",
                     f"{2 * tps[b]:.0f} msg/s", f"{tps[m]:.0f} msg/s", f"{r:.2f}x", "(none)", None))
        r = 2 * tps[b] / tps[f]
        rows.append(("3\"\"' the same, messages/s vs bare INSERT rows/s (extra)",
                     f"{2 * tps[b]:.0f} msg/s", f"{tps[f]:.0f} rows/s", f"{r:.2f}x", "(none)", None))

    env = (res / "environment.txt").read_text().splitlines()
    for line in env:
        if line.startswith(("memoriesdb:", "load before:", "load after:")):
            print(line)
    print()

    head = ("benchmark", "memoriesdb", "baseline", "ratio", "target", "met")
    table = [head] + [(a, b, c, d, e, "-" if g is None else ("yes" if g else "NO")) for a, b, c, d, e, g in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    out = []
    for i, row in enumerate(table):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    print("\n".join(out))
    print()
    counts = ", ".join(f"{v} {n}" for v, n in sorted(fn.items()))
    print(f"fork/copy medians over iterations ({counts}; the first {WARMUP} of each dropped); "
          "pgbench figures are the median of the rounds:")
    for k in sorted(all_tps):
        print(f"  {k[0]:17} {k[1]:24} tps per round: {', '.join(f'{t:.1f}' for t in all_tps[k])}")
    for k in sorted(wal):
        if k[0] == "write":
            print(f"  {k[0]:17} {k[1]:24} WAL bytes per transaction (median): {statistics.median(wal[k]):.0f}")
    # the same ratios per round (the two sides of a round ran back to back): a check that the
    # ratio of medians is not an artefact of drift on the machine
    paired = {}
    for bench, num, den, invert in (("read", "memoriesdb", "flat", True), ("read_after_writes", "memoriesdb", "flat", True),
                                    ("write", "memoriesdb", "flat", False), ("write", "memoriesdb_one_session", "flat", False),
                                    ("write", "memoriesdb", "flat_indexed", False)):
        a, b = all_tps.get((bench, num)), all_tps.get((bench, den))
        if a and b:
            rr = [(y / x) if invert else (x / y) for x, y in zip(a, b)]
            paired[f"{bench}/{num}/{den}"] = rr
            what = "latency ratio (slower by)" if invert else "tps ratio"
            print(f"  {bench:17} {num + ' / ' + den:37} {what} per round: {', '.join(f'{x:.2f}' for x in rr)}"
                  f"  (median {statistics.median(rr):.2f})")
    (res / "summary.json").write_text(json.dumps({
        "fork_median_us": fm, "fork_iterations": fn,
        "pgbench_median_tps": {f"{a}/{b}": v for (a, b), v in tps.items()},
        "pgbench_median_latency_ms": {f"{a}/{b}": v for (a, b), v in lat.items()},
        "pgbench_tps_per_round": {f"{a}/{b}": v for (a, b), v in all_tps.items()},
        "paired_ratio_per_round": paired,
        "targets": [dict(zip(head, (a, b, c, d, e, g))) for a, b, c, d, e, g in rows],
    }, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
