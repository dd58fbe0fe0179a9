"""Results of a benchmark run as docs/benchmarks.md (tables, targets) and docs/benchmarks.png (a chart)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent.parent / "docs"
SCENARIOS = ("create", "hot", "list", "mixed")
TRACING_VARIANT = "tracing on"
REALISTIC_COMMIT = "realistic commit"
AUTH_VARIANT, X_USER = "auth", "x-user"
TARGETS = {
    "product >= 0.9 x floor (req/s)": 0.9,
    "create CPU <= 0.9 ms/request (1 worker)": 0.9,
    "list CPU <= 0.65 ms/request (1 worker)": 0.65,
    "p99 <= 50 ms (create, list)": 50.0,
    "peak RSS <= 120 MB per process": 120.0,
}


def _find(rows: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    return next((row for row in rows if all(row.get(k) == v for k, v in match.items())), None)


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if not a or not b or not b["req_s"]:
        return "-"
    return f"{a['req_s'] / b['req_s']:.2f}"


def _ms(row: dict[str, Any]) -> str:
    return f"{row['p50_ms']:.1f} / {row['p90_ms']:.1f} / {row['p99_ms']:.1f} / {row['max_ms']:.0f}"


def main_table(rows: list[dict[str, Any]], workers: int) -> list[str]:
    lines = [
        f"### {workers} worker{'s' if workers > 1 else ''}",
        "",
        "| scenario | product req/s | floor req/s | ceiling tx/s | product / floor | product / ceiling "
        "| product p50/p90/p99/max ms | floor p50/p90/p99/max ms | product non-2xx | CPU ms/req product / floor "
        "| peak RSS MB product / floor |",
        "|---|---:|---:|---:|---:|---:|---|---|---:|---|---|",
    ]
    for scenario in SCENARIOS:
        product = _find(rows, scenario=scenario, target="product", workers=workers, variant="")
        floor = _find(rows, scenario=scenario, target="floor", workers=workers, variant="")
        top = _find(rows, scenario=scenario, target="ceiling", variant="")
        if not product:
            continue
        floor_cpu = floor["cpu_ms_per_request"] if floor else "-"
        floor_rss = floor["peak_rss_mb_per_process"] if floor else "-"
        lines.append(
            f"| {scenario} | {product['req_s']:.0f} | {floor['req_s'] if floor else 0:.0f} | "
            f"{top['req_s'] if top else 0:.0f} | {_ratio(product, floor)} | {_ratio(product, top)} | {_ms(product)} | "
            f"{_ms(floor) if floor else '-'} | {product['non_2xx']} | {product['cpu_ms_per_request']} / {floor_cpu} | "
            f"{product['peak_rss_mb_per_process']} / {floor_rss} |"
        )
    return [*lines, ""]


def targets(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| target | workers | measured | met |", "|---|---:|---|:-:|"]
    for workers in sorted({row["workers"] for row in rows if row["target"] == "product" and not row["variant"]}):
        for scenario in SCENARIOS:
            product = _find(rows, scenario=scenario, target="product", workers=workers, variant="")
            floor = _find(rows, scenario=scenario, target="floor", workers=workers, variant="")
            if product and floor:
                ratio = product["req_s"] / floor["req_s"]
                met = "yes" if ratio >= 0.9 else "no"
                lines.append(f"| product >= 0.9 x floor, {scenario} | {workers} | {ratio:.2f} | {met} |")
    for scenario, limit in (("create", 0.9), ("list", 0.65)):
        product = _find(rows, scenario=scenario, target="product", workers=1, variant="")
        if product:
            cpu = product["cpu_ms_per_request"]
            lines.append(f"| {scenario} CPU <= {limit} ms/request | 1 | {cpu} ms | {'yes' if cpu <= limit else 'no'} |")
    for row in rows:
        if row["target"] == "product" and not row["variant"] and row["scenario"] in {"create", "list"}:
            p99, met = row["p99_ms"], "yes" if row["p99_ms"] <= 50 else "no"
            lines.append(f"| p99 <= 50 ms, {row['scenario']} | {row['workers']} | {p99:.1f} ms | {met} |")
    for row in rows:
        if row["target"] == "product" and row["variant"] == REALISTIC_COMMIT and row["scenario"] == "create":
            floor = _find(rows, scenario="create", target="floor", workers=row["workers"], variant=REALISTIC_COMMIT)
            if floor:
                ratio = row["req_s"] / floor["req_s"]
                lines.append(
                    f"| 1 ms commits: product >= 0.9 x floor, create | {row['workers']} | {ratio:.2f} "
                    f"| {'yes' if ratio >= 0.9 else 'no'} |"
                )
    for row in rows:
        latency = row.get("extra", {}).get("events", {}).get("latency_p99_ms")
        if latency is not None:
            lines.append(
                f"| events: p99 commit -> published <= 250 ms | {row['workers']} | {latency} ms "
                f"| {'yes' if latency <= 250 else 'no'} |"
            )
    lines += flash_sale_targets(rows)
    products = [r for r in rows if r["target"] == "product" and not r["variant"]]
    errors = sum(r["non_2xx"] + r["socket_errors"] for r in products)
    lines.append(f"| zero non-2xx | all | {errors} | {'yes' if errors == 0 else 'no'} |")
    rss = max((r["peak_rss_mb_per_process"] or 0 for r in products), default=0)
    lines.append(f"| peak RSS <= 120 MB per process | all | {rss} MB | {'yes' if rss <= 120 else 'no'} |")
    return [*lines, ""]


def variants(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| scenario | variant | req/s | vs default (1 worker) | p50/p90/p99/max ms | non-2xx | CPU ms/req |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for row in rows:
        if (
            row["target"] == "product"
            and row["variant"]
            and "lines" not in row["variant"]
            and "page" not in row["variant"]
            and row["variant"] != TRACING_VARIANT
            and not row["variant"].startswith(("events", AUTH_VARIANT))
        ):
            default = _find(rows, scenario=row["scenario"], target="product", workers=1, variant="")
            lines.append(
                f"| {row['scenario']} | {row['variant']} | {row['req_s']:.0f} | {_ratio(row, default)} | {_ms(row)} | "
                f"{row['non_2xx']} | {row['cpu_ms_per_request']} |"
            )
    return [*lines, ""]


def tracing(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| scenario | req/s off / on | on / off | CPU ms/req off / on | p50/p90/p99/max ms on | non-2xx on "
        "| OTLP exports |",
        "|---|---|---:|---|---|---:|---:|",
    ]
    for row in rows:
        if row["target"] == "product" and row["variant"] == TRACING_VARIANT:
            off = _find(rows, scenario=row["scenario"], target="product", workers=1, variant="")
            lines.append(
                f"| {row['scenario']} | {off['req_s'] if off else 0:.0f} / {row['req_s']:.0f} | {_ratio(row, off)} | "
                f"{off['cpu_ms_per_request'] if off else '-'} / {row['cpu_ms_per_request']} | {_ms(row)} | "
                f"{row['non_2xx']} | {row['extra'].get('otlp_export_requests', '-')} |"
            )
    return lines


def events(rows: list[dict[str, Any]]) -> list[str]:
    """Create with the relay in serve publishing to RabbitMQ against AMQP_URL unset, run by run (alternated)."""
    off = [row for row in rows if row["variant"] == "events off"]
    on = [row for row in rows if row["variant"] == "events on"]
    if not off or not on:
        return ["- (not measured: no RabbitMQ)", ""]
    lines = [
        "| run | create req/s off / on | on / off | CPU ms/req off / on | RabbitMQ CPU ms/req on "
        "| p50 / p99 ms on | pending at end, drained in | event p50 / p99 / max ms |",
        "|---:|---|---:|---|---:|---|---|---|",
    ]
    for number, (before, after) in enumerate(zip(off, on, strict=False), start=1):
        backlog = after.get("extra", {}).get("events", {})
        lines.append(
            f"| {number} | {before['req_s']:.0f} / {after['req_s']:.0f} | {_ratio(after, before)} | "
            f"{before['cpu_ms_per_request']} / {after['cpu_ms_per_request']} | "
            f"{after.get('extra', {}).get('broker_cpu_ms_per_request', '-')} | "
            f"{after['p50_ms']:.1f} / {after['p99_ms']:.1f} | "
            f"{backlog.get('pending_at_end', '-')}, {backlog.get('drained_in_s', '-')} s | "
            f"{backlog.get('latency_p50_ms', '-')} / {backlog.get('latency_p99_ms', '-')} / "
            f"{backlog.get('latency_max_ms', '-')} |"
        )
    mean_off = sum(row["req_s"] for row in off) / len(off)
    mean_on = sum(row["req_s"] for row in on) / len(on)
    met = "yes" if mean_on >= 0.95 * mean_off else "no"
    lines.append(
        f"| mean | {mean_off:.0f} / {mean_on:.0f} | {mean_on / mean_off:.2f} (target >= 0.95: {met}) | | | | | |"
    )
    return [*lines, ""]


def _mean(rows: list[dict[str, Any]], key: str) -> float:
    return sum(float(row[key]) for row in rows) / len(rows)


def auth(rows: list[dict[str, Any]]) -> list[str]:
    """The product on X-User and with each signing algorithm (AUTH_MODE=jwt), against the floor (on X-User):
    means over the alternated runs."""
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        if row["variant"].startswith(f"{AUTH_VARIANT} "):
            runs.setdefault((row["scenario"], row["variant"].removeprefix(f"{AUTH_VARIANT} ")), []).append(row)
    if not runs:
        return ["- (not measured: run with --auth)", ""]
    lines = [
        "| scenario | identity | runs | req/s | / floor | / product on X-User | CPU ms/req | CPU ms/req over X-User "
        "| p50 / p99 ms | non-2xx |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for scenario in dict.fromkeys(scenario for scenario, _ in runs):
        floor, plain = runs.get((scenario, "floor")), runs.get((scenario, X_USER))
        for identity in dict.fromkeys(name for s, name in runs if s == scenario):
            measured = runs[(scenario, identity)]
            req_s, cpu = _mean(measured, "req_s"), _mean(measured, "cpu_ms_per_request")
            to_floor = f"{req_s / _mean(floor, 'req_s'):.2f}" if floor and identity != "floor" else "-"
            to_plain = f"{req_s / _mean(plain, 'req_s'):.2f}" if plain and identity not in {"floor", X_USER} else "-"
            extra = f"{cpu - _mean(plain, 'cpu_ms_per_request'):+.3f}" if plain and identity.startswith("jwt") else "-"
            lines.append(
                f"| {scenario} | {identity} | {len(measured)} | {req_s:.0f} | {to_floor} | {to_plain} | {cpu:.3f} | "
                f"{extra} | {_mean(measured, 'p50_ms'):.1f} / {_mean(measured, 'p99_ms'):.1f} | "
                f"{sum(row['non_2xx'] for row in measured)} |"
            )
    return [*lines, ""]


def realistic_commit(rows: list[dict[str, Any]]) -> list[str]:
    """The runs with 1 ms commits beside the default mode's, at the same number of workers."""
    measured = [row for row in rows if row["variant"] == REALISTIC_COMMIT and row["target"] == "product"]
    if not measured:
        return ["- (not measured)", ""]
    workers = measured[0]["workers"]
    lines = [
        f"| scenario ({workers} workers) | product req/s default / 1 ms | floor req/s default / 1 ms "
        "| product / floor default / 1 ms | ceiling tx/s default / 1 ms | p99 ms default / 1 ms |",
        "|---|---|---|---|---|---|",
    ]
    for row in measured:
        scenario = row["scenario"]
        product = _find(rows, scenario=scenario, target="product", workers=workers, variant="")
        floor = _find(rows, scenario=scenario, target="floor", workers=workers, variant="")
        slow_floor = _find(rows, scenario=scenario, target="floor", workers=workers, variant=REALISTIC_COMMIT)
        top = _find(rows, scenario=scenario, target="ceiling", variant="")
        slow_top = _find(rows, scenario=scenario, target="ceiling", variant=REALISTIC_COMMIT)

        def req_s(found: dict[str, Any] | None) -> str:
            return f"{found['req_s']:.0f}" if found else "-"

        lines.append(
            f"| {scenario} | {req_s(product)} / {req_s(row)} | {req_s(floor)} / {req_s(slow_floor)} | "
            f"{_ratio(product, floor)} / {_ratio(row, slow_floor)} | {req_s(top)} / {req_s(slow_top)} | "
            f"{product['p99_ms'] if product else '-'} / {row['p99_ms']} |"
        )
    return [*lines, ""]


FLASH_SALE_COLUMNS = (
    ("product hot", {"scenario": "hot", "target": "product"}),
    ("floor hot", {"scenario": "hot", "target": "floor"}),
    ("ceiling: 1 order/tx", {"scenario": "hot", "target": "ceiling"}),
    ("ceiling: bare decrement", {"scenario": "hot-row", "target": "ceiling"}),
    ("reference: 10 orders/tx", {"scenario": "hot-x10", "target": "ceiling"}),
)


def _flash_sale_modes(rows: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(variant, workers) of each mode with a product hot run: the default mode and 1 ms commits."""
    product = [row for row in rows if row["target"] == "product" and row["scenario"] == "hot"]
    workers = max((row["workers"] for row in product if row["variant"] == REALISTIC_COMMIT), default=0)
    workers = workers or max((row["workers"] for row in product if not row["variant"]), default=0)
    return [
        (variant, workers) for variant in ("", REALISTIC_COMMIT) if _find(product, variant=variant, workers=workers)
    ]


def _flash_sale_row(rows: list[dict[str, Any]], match: dict[str, Any], variant: str, workers: int) -> Any:
    extra = {} if match["target"] == "ceiling" else {"workers": workers}
    return _find(rows, **match, **extra, variant=variant)


def flash_sale(rows: list[dict[str, Any]]) -> list[str]:
    """Orders/s on one product: the product (combining), the floor, pgbench's one-order ceiling and references."""
    modes = _flash_sale_modes(rows)
    if not modes:
        return ["- (not measured)", ""]
    lines = [
        f"| commits ({modes[0][1]} workers) | {' | '.join(name + ' /s' for name, _ in FLASH_SALE_COLUMNS)} "
        "| product hot / ceiling 1 order/tx | product hot / product create | product hot p99 ms |",
        f"|---|{'---:|' * len(FLASH_SALE_COLUMNS)}---:|---:|---:|",
    ]
    for variant, workers in modes:
        found = [_flash_sale_row(rows, match, variant, workers) for _, match in FLASH_SALE_COLUMNS]
        create = _find(rows, scenario="create", target="product", workers=workers, variant=variant)
        cells = " | ".join(f"{row['req_s']:.0f}" if row else "-" for row in found)
        hot = found[0]
        lines.append(
            f"| {'1 ms' if variant else 'default'} | {cells} | {_ratio(hot, found[2])} | {_ratio(hot, create)} "
            f"| {hot['p99_ms']:.1f} |"
        )
    return [*lines, ""]


def flash_sale_targets(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    for variant, workers in _flash_sale_modes(rows):
        if variant != REALISTIC_COMMIT:
            continue
        hot = _find(rows, scenario="hot", target="product", workers=workers, variant=variant)
        top = _find(rows, scenario="hot", target="ceiling", variant=variant)
        create = _find(rows, scenario="create", target="product", workers=workers, variant=variant)
        if hot and top:
            ratio = hot["req_s"] / top["req_s"]
            lines.append(
                f"| 1 ms commits: hot >= 1.3 x ceiling (1 order/tx) | {workers} | {ratio:.2f} "
                f"| {'yes' if ratio >= 1.3 else 'no'} |"
            )
        if hot and create:
            ratio = hot["req_s"] / create["req_s"]
            lines.append(
                f"| 1 ms commits: hot >= 0.9 x create | {workers} | {ratio:.2f} | {'yes' if ratio >= 0.9 else 'no'} |"
            )
        if hot:
            p99 = hot["p99_ms"]
            lines.append(
                f"| 1 ms commits: p99 <= 100 ms, hot | {workers} | {p99:.1f} ms | {'yes' if p99 <= 100 else 'no'} |"
            )
    return lines


def growth(rows: list[dict[str, Any]]) -> list[str]:
    lines = ["| request | req/s (4 connections) | p50 / p99 ms | CPU ms/req |", "|---|---:|---|---:|"]
    for row in rows:
        if "lines" in row["variant"] or "page" in row["variant"]:
            lines.append(
                f"| {row['variant']} | {row['req_s']:.0f} | {row['p50_ms']:.2f} / {row['p99_ms']:.2f} | "
                f"{row['cpu_ms_per_request']} |"
            )
    return [*lines, ""]


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib  # noqa: PLC0415 - a dev dependency, only for the report

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = results["rows"]
    workers = sorted({row["workers"] for row in rows if row["target"] == "product" and not row["variant"]})
    figure, axes = plt.subplots(3, len(workers), figsize=(6 * len(workers), 12), squeeze=False)
    for column, count in enumerate(workers):
        for line, (metric, label) in enumerate((("req_s", "requests/s"), ("p99_ms", "p99 latency (ms)"))):
            axis = axes[line][column]
            width = 0.27
            for offset, target in enumerate(("product", "floor", "ceiling")):
                values = []
                for scenario in SCENARIOS:
                    match = (
                        {"scenario": scenario, "target": target, "variant": ""}
                        if target == "ceiling"
                        else {"scenario": scenario, "target": target, "workers": count, "variant": ""}
                    )
                    row = _find(rows, **match)
                    values.append(row[metric] if row else 0)
                axis.bar([i + (offset - 1) * width for i in range(len(SCENARIOS))], values, width, label=target)
            axis.set_xticks(range(len(SCENARIOS)), SCENARIOS)
            axis.set_ylabel(label)
            axis.set_title(f"{label}, {count} worker{'s' if count > 1 else ''} (ceiling: pgbench)")
            if metric == "p99_ms":
                axis.axhline(50, color="grey", linestyle="--", linewidth=1)
            axis.legend()
    _flash_sale_chart(rows, axes[2][0])
    for axis in axes[2][1:]:
        axis.set_visible(False)
    figure.suptitle(f"Orders service benchmark, {results['date']}, {results['machine']['cores']} cores")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def _flash_sale_chart(rows: list[dict[str, Any]], axis: Any) -> None:
    """Orders/s on one product, per mode: the product, the floor, the ceiling and the references."""
    modes = _flash_sale_modes(rows)
    width = 0.8 / len(FLASH_SALE_COLUMNS)
    for offset, (name, match) in enumerate(FLASH_SALE_COLUMNS):
        values = []
        for variant, workers in modes:
            row = _flash_sale_row(rows, match, variant, workers)
            values.append(row["req_s"] if row else 0)
        axis.bar([i + (offset - 2) * width for i in range(len(modes))], values, width, label=name)
    axis.set_xticks(range(len(modes)), ["default commits" if not variant else "1 ms commits" for variant, _ in modes])
    axis.set_ylabel("orders/s of one product")
    axis.set_title(f"Flash sale: every order takes product 1 ({modes[0][1] if modes else '-'} workers)")
    axis.legend(fontsize="small")


def write(results: dict[str, Any], name: str = "benchmarks") -> None:
    """``docs/<name>.md`` and ``docs/<name>.png``."""
    DOCS.mkdir(exist_ok=True)
    chart(results, DOCS / f"{name}.png")
    rows = results["rows"]
    machine = results["machine"]
    settings = results["settings"]
    workers = sorted({row["workers"] for row in rows if row["target"] == "product" and not row["variant"]})
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `uv run {results.get('command', 'python -m benchmarks.run')}` (see",
        "[performance.md](performance.md)), its raw figures in `benchmarks/results/`. **Compare ratios within one",
        "run, never absolute figures across runs**: the service, PostgreSQL and wrk share the machine.",
        "",
        f"- Run {results['run_id']} on {results['date']}, {results['took_s']} s in all.",
        f"- Machine: {machine['cores']} cores ({machine['cpu']}), {machine['memory']} of memory, Linux "
        f"{machine['kernel']}, Python {machine['python']}, PostgreSQL {machine['postgresql']} on the same machine.",
        f"- Load: wrk, {settings['wrk_threads']} thread, {settings['connections']} connections, "
        f"{settings['duration_s']} s per scenario after a warm-up; the ceiling is pgbench with as many clients.",
        "- Scenarios: `create` (1-3 random products of 1,000), `hot` (every order takes product 1), `list`",
        "  (the first page of one of 1,000 readers with 30 orders each), `mixed` (80 % list, 20 % create).",
        "- Product: `orders-service serve`. Floor: `benchmarks/floor/app.py` (Granian + Litestar + psycopg pool,",
        "  hand-written SQL, no ORM, metrics or guard). Ceiling: pgbench running the service's own SQL of one",
        "  request (its pipeline: timeouts and statement), prepared, on a copy of the tables.",
        "",
        f"![req/s and p99 per scenario for product, floor and ceiling]({name}.png)",
        "",
        "## Product, floor and ceiling",
        "",
    ]
    for count in workers:
        lines += main_table(rows, count)
    lines += ["## Targets", "", *targets(rows)]
    lines += ["## Prepared statements off, timeouts per transaction, through PgBouncer (1 worker)", "", *variants(rows)]
    lines += [
        "## Tracing off and on (1 worker)",
        "",
        "On: OpenTelemetry with every request sampled (no `traceparent` from wrk), a server span per request and",
        "a span per SQL statement, batched to an OTLP/HTTP sink that answers 200 (`tests/support/otlp_sink.py`,",
        "outside the measured processes). Off is the default run above.",
        "",
        *tracing(rows),
        "",
    ]
    lines += ["## Events: create with the relay publishing vs AMQP_URL unset (1 worker)", "", *events(rows)]
    lines += [
        "## Realistic commits: every commit flushed after 1 ms, as on cloud block storage",
        "",
        "`commit_delay` = 1000 us and `commit_siblings` = 0 on the database, for the product, the floor and",
        "pgbench alike; the default mode beside it, from the same run.",
        "",
        *realistic_commit(rows),
    ]
    lines += [
        "## Flash sale: one product, every order takes it",
        "",
        "Orders of one product serialise on its row. The product combines the orders of a product that arrive",
        "while its transaction runs into the next one (`ORDER_BATCH_MAX`); the ceiling places one order per",
        "transaction with the service's statement; the bare decrement is the least a transaction on that row",
        "can do; the reference places ten orders per transaction with the service's combined statement.",
        "",
        *flash_sale(rows),
    ]
    lines += ["## Cost as the work grows (1 worker)", "", *growth(rows)]
    if any(row["variant"].startswith(f"{AUTH_VARIANT} ") for row in rows):
        lines += [
            "## Identity: X-User against the Gateway's signed tokens (AUTH_MODE=jwt)",
            "",
            "The product on X-User and verifying a bearer token per request (keys from a JWKS file, a token per",
            "user made before the run), started in turn; the floor stays on X-User.",
            "",
            *auth(rows),
        ]
    checks = ", ".join(f"{name}: {'holds' if holds else 'BROKEN'}" for name, holds in results["invariants"].items())
    lines += ["## Invariants, checked in the database after every run that writes", "", checks or "-", ""]
    (DOCS / f"{name}.md").write_text("\n".join(lines))
