"""What the terminal shows: the progress bar and the results tables."""

from __future__ import annotations

import statistics
import sys
from typing import Any


def progress(detail: dict[str, Any], elapsed: float, last: tuple | None) -> tuple:
    """Redraw the bar in place on a terminal; elsewhere (logs, CI) print a line per change."""
    p, c = detail["progress"], detail["counts"]
    state = (p["finished"], c["RUNNING"], c["FAILED"])
    tty = sys.stderr.isatty()
    if tty or state != last:
        width = 30
        done = int(width * p["fraction"])
        line = (
            f"[{'#' * done}{'.' * (width - done)}] {p['finished']}/{p['total']} trials"
            f"  running {c['RUNNING']}  failed {c['FAILED']}  {elapsed:5.0f}s"
        )
        print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
    return state


def _pct(x: float | None) -> str:
    return "   -  " if x is None else f"{100 * x:6.2f}"


def format_results(trials: list[dict[str, Any]], best: dict[str, Any], seconds: float) -> str:
    """One row per trial, then mean ± std per grid cell over seeds, then the best."""
    head = f"{'optimizer':>9} {'batch':>5} {'method':>12}"
    out = [
        "trials (accuracies in %):",
        f"{head} {'seed':>4} {'state':>10} {'train':>6} {'test':>6} {'gap':>6} {'secs':>6}",
    ]
    cells: dict[tuple, list[dict[str, Any]]] = {}
    for t in sorted(trials, key=lambda t: _cell(t) + (t["params"]["seed"],)):
        m = t["metrics"] or {}
        out.append(
            f"{_label(t)} {t['params']['seed']:>4} {t['state']:>10} "
            f"{_pct(m.get('train_accuracy'))} {_pct(m.get('test_accuracy'))} "
            f"{_pct(m.get('gap'))} {m.get('wall_seconds', 0):6.1f}"
            + (f"  {t['error']}" if t["error"] else "")
        )
        if t["state"] == "COMPLETE":
            cells.setdefault(_cell(t), []).append(t)
    out += [
        "",
        "per cell, mean ± std over seeds (accuracies in %; sharpness: loss increase in the"
        " sharpness rho-ball, and the top Hessian eigenvalue):",
        f"{head} {'n':>2} {'train':>13} {'test':>13} {'gap':>13} {'secs':>6}"
        f" {'sharpness':>9} {'hess_max':>9}",
    ]
    for _, ts in sorted(cells.items()):
        ms = [t["metrics"] for t in ts]
        accuracies = " ".join(
            _mean_std([m[k] for m in ms]) for k in ("train_accuracy", "test_accuracy", "gap")
        )
        out.append(
            f"{_label(ts[0])} {len(ms):>2} {accuracies} "
            f"{statistics.fmean(m['wall_seconds'] for m in ms):6.1f}"
            f" {_mean(ms, 'sharpness')} {_mean(ms, 'hessian_max_eig')}"
        )
    b = best["best"]
    out.append("")
    if b is None:
        out.append(f"no complete trial; counts: {best['counts']}")
    else:
        p, m = b["params"], b["metrics"]
        out.append(
            f"best by {best['objective']}: {p['base_optimizer']} batch {p['batch_size']} "
            f"{_method(p)} seed {p['seed']}: test {100 * m['test_accuracy']:.2f}%  "
            f"train {100 * m['train_accuracy']:.2f}%  gap {100 * m['gap']:.2f}"
        )
    out.append(f"{len(trials)} trials, {best['counts']['COMPLETE']} complete, in {seconds:.0f}s")
    return "\n".join(out)


def _method(p: dict[str, Any]) -> str:
    """'rho 0' for the base optimizer alone, else e.g. 'sam 0.05', 'asam 1 m=32'."""
    if p["rho"] == 0:
        return "rho 0"
    m = p.get("m")
    return f"{p.get('sam_variant') or 'sam'} {p['rho']:g}" + (f" m={m}" if m else "")


def _label(t: dict[str, Any]) -> str:
    p = t["params"]
    return f"{p['base_optimizer']:>9} {p['batch_size']:>5} {_method(p):>12}"


def _cell(t: dict[str, Any]) -> tuple:
    p = t["params"]
    variant = p.get("sam_variant") or ""
    return (p["base_optimizer"], p["batch_size"], variant, p.get("m") or 0, p["rho"])


def _mean(ms: list[dict[str, Any]], key: str) -> str:
    values = [m[key] for m in ms if m.get(key) is not None]
    return f"{statistics.fmean(values):9.4g}" if values else f"{'-':>9}"


def _mean_std(xs: list[float]) -> str:
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{100 * statistics.fmean(xs):6.2f}±{100 * sd:5.2f}"
