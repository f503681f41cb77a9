"""Calibration: the text a person reads, made from a comparison's JSON-shaped dict (Comparison.as_dict()),
so that a saved --json document renders the same."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from .compare import Doc
from .plan import SAMPLE_S

ROWS_HEAD = ("t", "phase", "sim MiB", "sim use%", "sim work", "real MiB", "real use%", "real work", "Δ MiB", "Δ use%")
# (label, summary key or None for grows / shrinks, whether the difference also shows in percent)
SUMMARY_LINES: Tuple[Tuple[str, Optional[str], bool], ...] = (
    ("idle size before the ramp (MiB)", "idle_actual_mib", True),
    ("idle usable %", "idle_usable_pct", False),
    ("idle used = actual - usable (MiB)", "idle_used_mib", True),
    ("idle size reached at (s)", "idle_settled_at_s", False),
    ("workload fully held after ramp start (s)", "work_full_after_s", False),
    ("lowest usable % during the ramp/hold", "lowest_usable_pct_ramp", False),
    ("  ... at (s)", "lowest_usable_at_s", False),
    ("ramp start -> usable >= {minimal:g}% for good (s; 0: never below)", "relief_s", False),
    ("peak actual from the ramp on (MiB)", "peak_actual_mib", True),
    ("size holding the workload (MiB)", "held_actual_mib", True),
    ("used holding the workload (MiB)", "held_used_mib", True),
    ("size at the end (MiB)", "end_actual_mib", True),
    ("OOM kills", "oom_kills", False),
    ("returned: maximum - actual, time average (GiB)", "returned_gib", False),
    ("starved: usable under 5% of actual (s)", "starved_s", False),
    ("setmem calls", "setmem_calls", False),
    ("  grows / shrinks", None, False),
)


def fmt(v: object, nd: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def diff(sim: object, real: object, pct: bool = False) -> str:
    """real - sim with a sign, and (pct) relative to sim; "-" when either is missing."""
    if not isinstance(sim, (int, float)) or not isinstance(real, (int, float)):
        return "-"
    d = f"{real - sim:+.1f}"
    if pct and sim:
        d += f" ({(real - sim) * 100.0 / sim:+.0f}%)"
    return d


def aligned(cells: Sequence[Sequence[str]], left: Sequence[int]) -> List[str]:
    """Columns padded to their widest cell: the `left` ones left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return ["  ".join(x.ljust(w) if i in left else x.rjust(w) for i, (x, w) in enumerate(zip(row, widths)))
            for row in cells]


def rows_table(rows: List[Doc]) -> List[str]:
    """The side-by-side rows; an empty row is a gap ("...")."""
    cells: List[Sequence[str]] = [ROWS_HEAD]
    for r in rows:
        if not r:
            cells.append(("...",) + ("",) * (len(ROWS_HEAD) - 1))
            continue
        cells.append((f"{r['t']:g}", r["phase"], fmt(r["sim_actual_mib"]), fmt(r["sim_usable_pct"]),
                      fmt(r["sim_work_mib"]), fmt(r["real_actual_mib"]), fmt(r["real_usable_pct"]),
                      fmt(r["real_work_mib"]),
                      diff(r["sim_actual_mib"], r["real_actual_mib"]).split(".")[0],
                      diff(r["sim_usable_pct"], r["real_usable_pct"]).split(".")[0]))
    return aligned(cells, left=[1])


def summary_table(sim: Doc, real: Doc, minimal: float) -> List[str]:
    cells: List[Sequence[str]] = [("summary", "sim", "real", "real - sim")]
    for label, key, pct in SUMMARY_LINES:
        if key is None:
            cells.append((label, f"{sim['grows']} / {sim['shrinks']}", f"{real['grows']} / {real['shrinks']}", ""))
        else:
            cells.append((label.format(minimal=minimal), fmt(sim[key], 1), fmt(real[key], 1),
                          diff(sim[key], real[key], pct)))
    if sim["oom_at_s"] or real["oom_at_s"]:
        cells.append(("  OOM kill at (s)", ",".join(f"{x:g}" for x in sim["oom_at_s"]) or "-",
                      ",".join(f"{x:g}" for x in real["oom_at_s"]) or "-", ""))
    return aligned(cells, left=[0])


def probe_lines(model: Doc, probe: object) -> List[str]:
    """The real guest's measured facts next to the model's ("failed" or the like when it was not measured)."""
    if not isinstance(probe, dict):
        return [f"real guest probe: {probe}"]
    d, i = probe["deflate"], probe["inflate"]
    return [
        f"guest facts at {probe['size_mib']} MiB, daemon stopped (model -> real):",
        f"  balloon speed: {model['balloon_mib_s']} MiB/s -> grow {d['mib']} MiB in {d['s']:.2f} s "
        f"(>= {d['mib_s']} MiB/s), shrink {i['mib']} MiB in {i['s']:.2f} s (>= {i['mib_s']} MiB/s)",
        f"  memory outside MemTotal: {model['outside_memtotal_mib']:g} -> {probe['outside_memtotal_mib']:g} MiB",
        f"  a workload's most before the OOM killer (no swap): {model['capacity_mib']:g} -> "
        f"{probe['capacity_mib']} MiB{'' if probe['capacity_oom_killed'] else ' (not OOM-killed!)'}",
        f"  usable when idle: {probe['usable_mib']:g} MiB; meminfo kB: "
        + ", ".join(f"{k} {v}" for k, v in probe["meminfo_kib"].items()),
    ]


def heading(c: Doc) -> str:
    plan = c["plan"]
    return (f"== {plan['scenario']} / policy {c['policy']}: {plan['current_mib']} MiB current / "
            f"{plan['max_mib']} MiB max, band {plan['minimal']:g}-{plan['maximal']:g}%, workload "
            f"+{plan['ramp_rate_mib_s']:g} MiB/s from t={plan['ramp_start_s']:g}s up to {plan['ramp_top_mib']} MiB, "
            f"freed at t={plan['free_at_s']:g}s, {plan['duration_s']:g}s ==")


def closing_lines(c: Doc) -> List[str]:
    """How far apart the runs are, the real balloon, both runs' changes, the real run's notes and probe."""
    m, b = c["mean_abs_diff"], c["real_balloon"]
    out = [f"mean |sim - real| over {m['seconds']} s: actual {fmt(m['actual_mib'], 1)} MiB, "
           f"usable {fmt(m['usable_pct'], 1)} percentage points",
           f"real balloon: actual at a change's target after {fmt(b['target_reached_median_s'], 1)} s median "
           f"(max {fmt(b['target_reached_max_s'], 1)} s, sampled every {SAMPLE_S:g} s); fastest move seen "
           f"{fmt(b['fastest_move_mib_s'])} MiB/s; usable figure {fmt(b['stats_age_median_s'], 1)} s old "
           f"median (max {fmt(b['stats_age_max_s'], 1)} s; last_update is whole seconds, so up to 1 s high)"]
    for src in ("sim", "real"):
        out.append(f"{src} changes: " + (", ".join(
            f"{fmt(x['t'], 1)}s {x['action']} {x['from_mib']}->{x['to_mib']}" for x in c["changes"][src]) or "none"))
    notes = dict(c["real_notes"])
    probe = notes.pop("probe", None)
    out.append("real run: " + ", ".join(f"{k} {v}" for k, v in notes.items()))
    if probe is not None:
        out += probe_lines(c["model"], probe)
    return out


def render(c: Doc) -> str:
    """One policy's comparison: rows every --every seconds, per second through the ramp and the free, the
    summary table and the closing lines."""
    out = [heading(c)] + rows_table(c["rows"])
    out += ["", "per second through the ramp and the free:"] + rows_table(c["detail"])
    out += [""] + summary_table(c["summary"]["sim"], c["summary"]["real"], c["plan"]["minimal"])
    out += closing_lines(c)
    return "\n".join(out)
