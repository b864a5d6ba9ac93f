#!/usr/bin/env python3
"""Summarise one bench/compare.sh result directory: old vs new build, medians over rounds."""
import csv
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

WARMUP = 10  # fork-loop iterations ignored in each round
LIMIT = 0.05  # the hot paths may cost at most 5% more


def main(res: Path) -> None:
    # fork: per side, variant and round the median over the iterations; then the median of rounds
    it = defaultdict(list)  # (side, variant, round, what) -> [us]
    with open(res / "fork_timing.csv") as f:
        for row in csv.DictReader(f):
            if int(row["iter"]) <= WARMUP:
                continue
            for what in ("exec", "total"):
                it[(row["side"], row["variant"], int(row["round"]), what)].append(float(row[f"{what}_us"]))
    fork_round = defaultdict(dict)  # (side, variant, what) -> {round: median us}
    for (side, variant, rnd, what), xs in it.items():
        fork_round[(side, variant, what)][rnd] = statistics.median(xs)
    # serial: server time of one append / fork in its own transaction (first 3 of each block dropped)
    ser = defaultdict(list)
    if (res / "serial_timing.csv").exists():
        with open(res / "serial_timing.csv") as f:
            for row in csv.DictReader(f):
                if int(row["iter"]) > 3:
                    ser[(row["side"], row["variant"], int(row["round"]))].append(float(row["exec_us"]))
    serial_round = defaultdict(dict)
    for (side, variant, rnd), xs in ser.items():
        serial_round[(side, variant)][rnd] = statistics.median(xs)

    pg = defaultdict(dict)  # (side, bench, variant) -> {round: (tps, latency)}
    wal = defaultdict(list)
    with open(res / "pgbench.tsv") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            pg[(row["side"], row["bench"], row["variant"])][int(row["round"])] = (float(row["tps"]), float(row["latency_ms"]))
            if row.get("wal_bytes_per_txn"):
                wal[(row["side"], row["bench"], row["variant"])].append(float(row["wal_bytes_per_txn"]))

    # rows: (label, unit, per-round old, per-round new, lower is better, hot path?)
    rows = []

    def fork_row(label, variant, what, hot):
        o, n = fork_round.get(("old", variant, what)), fork_round.get(("new", variant, what))
        if o and n:
            rows.append((label, "ms", {k: v / 1000 for k, v in o.items()}, {k: v / 1000 for k, v in n.items()}, True, hot))

    def pg_row(label, bench, variant, unit, hot, factor=1.0):
        o, n = pg.get(("old", bench, variant)), pg.get(("new", bench, variant))
        if not (o and n):
            return
        if unit == "ms":
            rows.append((label, "ms", {k: v[1] for k, v in o.items()}, {k: v[1] for k, v in n.items()}, True, hot))
        else:
            rows.append((label, unit, {k: factor * v[0] for k, v in o.items()}, {k: factor * v[0] for k, v in n.items()}, False, hot))

    fork_row("fork: fork_session of the 10,000-message session (statement)", "fork_10000", "exec", True)
    fork_row("fork: the same including COMMIT", "fork_10000", "total", True)
    fork_row("fork: fork_session of the 10-message session (statement)", "fork_10", "exec", True)
    def serial_row(label, variant):
        o, n = serial_round.get(("old", variant)), serial_round.get(("new", variant))
        if o and n:
            rows.append((label, "ms", {k: v / 1000 for k, v in o.items()}, {k: v / 1000 for k, v in n.items()}, True, True))

    serial_row("fork: the same, serial block of its own (bench.time_forks, no copies around it)", "fork_10000")
    pg_row("read: get_formatted_conversation, 1,000 msgs over 10 forks (latency, 1 client)", "read", "memoriesdb", "ms", True)
    pg_row("write: add_message_to_session, 8 clients, own sessions", "write", "memoriesdb", "tps", True)
    serial_row("write: add_message_to_session, server time of one call, serial (bench.time_adds)", "append")
    pg_row("write: add_messages_to_session, 2 msgs a call (messages/s, extra)", "write", "memoriesdb_batch2", "msg/s", True, 2.0)
    fork_row("check: INSERT ... SELECT copy of 10,000 msgs, no extension code", "copy_10000", "exec", False)
    fork_row("check: the same copy into bench.flat_indexed", "copy_indexed_10000", "exec", False)
    pg_row("check: flat read (latency)", "read", "flat", "ms", False)
    pg_row("check: bare INSERT, 8 clients", "write", "flat", "tps", False)

    out = []
    head = ("benchmark", "old", "new", "new/old", "cost change", "per-round new/old", "within 5%")
    table = [head]
    verdicts = {}
    for label, unit, o, n, lower_better, hot in rows:
        mo, mn = statistics.median(o.values()), statistics.median(n.values())
        ratio = mn / mo
        cost = ratio - 1 if lower_better else mo / mn - 1  # > 0: the new build is slower
        paired = [n[k] / o[k] for k in sorted(o) if k in n]
        ok = cost <= LIMIT
        fmt = (lambda x: f"{x:.3f} {unit}") if unit == "ms" else (lambda x: f"{x:,.0f} {unit}")
        table.append((label, fmt(mo), fmt(mn), f"{ratio:.3f}", f"{cost:+.1%}",
                      " ".join(f"{p:.3f}" for p in paired), ("yes" if ok else "NO") if hot else "(check)"))
        verdicts[label] = {"old": mo, "new": mn, "unit": unit, "new_over_old": ratio, "cost_change": cost,
                           "paired_new_over_old": paired, "hot_path": hot, "within_5pct": ok if hot else None,
                           "old_per_round": o, "new_per_round": n}
    widths = [max(len(str(r[i])) for r in table) for i in range(len(head))]
    for i, r in enumerate(table):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))

    env = (res / "environment.txt").read_text().splitlines()
    for line in env:
        if line.startswith(("parameters:", "date:", "load before:", "load after:", "elapsed:", "memoriesdb:", "source:", "== ")):
            print(line)
    print()
    print("\n".join(out))
    print()
    print("medians over rounds (fork: per round the median of the iterations after the first "
          f"{WARMUP}; serial: after the first 3); cost change > 0 means the new build is slower; 'check' rows run no extension "
          "code and show how alike the two clusters are")
    for k in sorted(wal):
        if k[1] == "write":
            print(f"  WAL bytes per transaction, {k[0]} {k[2]}: {statistics.median(wal[k]):.0f}")

    # functions per operation
    fn = res / "functions.tsv"
    calls = {}
    if fn.exists():
        per = defaultdict(lambda: defaultdict(dict))  # op -> function -> side -> row
        with open(fn) as f:
            for row in csv.DictReader(f, delimiter="\t"):
                per[row["op"]][row["function"].split(".", 1)[1]][row["side"]] = row
        print()
        print("function calls per operation (track_functions = all; 'via fmgr_security_definer' = SECURITY DEFINER "
              "or a SET clause, which saves and restores the GUCs around every call):")
        for op in ("append", "batch2", "fork", "read"):
            if op not in per:
                continue
            tot = {}
            for side in ("old", "new"):
                rows_ = [r[side] for r in per[op].values() if side in r]
                allc = sum(float(r["calls_per_op"]) for r in rows_)
                sd = sum(float(r["calls_per_op"]) for r in rows_ if r["security_definer"] == "t" or r["set_clause"] == "t")
                tot[side] = (allc, sd)
            calls[op] = tot
            print(f"  {op:7} old: {tot['old'][0]:.1f} calls ({tot['old'][1]:.1f} via fmgr_security_definer);"
                  f" new: {tot['new'][0]:.1f} calls ({tot['new'][1]:.1f} via fmgr_security_definer)")
            for name, sides in sorted(per[op].items(), key=lambda kv: -max(float(r["calls_per_op"]) for r in kv[1].values())):
                o, n = sides.get("old"), sides.get("new")
                def d(r):
                    if r is None:
                        return "-"
                    flags = "".join(x for x, c in (("D", r["security_definer"]), ("S", r["set_clause"])) if c == "t")
                    return f"{float(r['calls_per_op']):g}{'[' + flags + ']' if flags else ''}"
                if (o and n and o["calls_per_op"] == n["calls_per_op"] and o["security_definer"] == n["security_definer"]
                        and o["set_clause"] == n["set_clause"]):
                    continue  # unchanged
                print(f"          {name:36} old {d(o):>10}  new {d(n):>10}")
        print("  (listed: functions whose calls or flags differ; D = SECURITY DEFINER, S = SET clause)")

    (res / "summary.json").write_text(json.dumps({"rows": verdicts, "function_calls": calls}, indent=2, default=str))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
