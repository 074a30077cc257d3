"""Prometheus series of the gateway (`thinkscale_*`), served next to vLLM's `vllm:*` series.

Why these shapes: operators compare methods, so every series has a bounded `method` label
(never a per-request label); histogram buckets span milliseconds to many minutes because a
baseline completion and a wide REBASE tree differ by four orders of magnitude in latency and
FLOPs. vLLM registers its own collectors in the same default registry, so one `/metrics`
endpoint serves both; vLLM unregisters anything named `vllm:*` at start-up, hence our prefix.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600,
)  # fmt: skip
FLOPS_BUCKETS = tuple(10.0**e for e in range(6, 18)) + tuple(3 * 10.0**e for e in range(6, 17))
FLOPS_BUCKETS = tuple(sorted(FLOPS_BUCKETS))
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)
RATIO_BUCKETS = (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)

ENGINE = Info(
    "thinkscale_engine",
    "How the engine serves, once it passed its warm-up: device, dtype actually used, whether the "
    "CPU has native bf16, the model threads' binding, the Quiet-STaR engine. Benchmarks record it "
    "with every result.",
)
REQUESTS = Counter(
    "thinkscale_requests",
    "Completion requests by method and outcome (ok, client_error, server_error, cancelled, "
    "timeout, rejected).",
    ["method", "status"],
)
REQUEST_LATENCY = Histogram(
    "thinkscale_request_latency_seconds",
    "End-to-end latency of successful requests, from admission to the last byte.",
    ["method"],
    buckets=LATENCY_BUCKETS,
)
TIME_TO_FIRST_TOKEN = Histogram(
    "thinkscale_time_to_first_token_seconds",
    "Time from admission to the first output token sent (for search methods: the answer).",
    ["method"],
    buckets=LATENCY_BUCKETS,
)
REQUEST_FLOPS = Histogram(
    "thinkscale_request_flops",
    "FLOPs per successful request (executed = cache-aware, all components).",
    ["method"],
    buckets=FLOPS_BUCKETS,
)
FLOPS = Counter(
    "thinkscale_flops",
    "FLOPs spent, by method, component (policy, reward) and accounting (executed, nominal).",
    ["method", "component", "accounting"],
)
TOKENS = Counter(
    "thinkscale_tokens",
    "Tokens by method and kind: prompt, completion (visible output), cached (prefix-cache "
    "hits), forward (positions that ran), forward_unreported (the part of forward charged for "
    "engine calls cut before their first output), thought (Quiet-STaR), tree (REBASE node "
    "text), reward.",
    ["method", "kind"],
)
ENGINE_CALLS = Counter(
    "thinkscale_engine_calls",
    "Engine requests made on behalf of API requests, by method and component.",
    ["method", "component"],
)
# The accounting identity against vLLM's own counter (docs/architecture.md):
# vllm:iteration_tokens_total_sum moves by forward + emitting calls - forward_unreported.
ENGINE_CALLS_EMITTING = Counter(
    "thinkscale_engine_calls_emitting",
    "Engine requests that produced at least one token, by method and component.",
    ["method", "component"],
)
ENGINE_TOKENS = Counter(
    "thinkscale_engine_tokens",
    "Tokens the engine's own vllm:iteration_tokens_total counts for these engine requests "
    "(their uncached prompts and every token they emitted), by method and component.",
    ["method", "component"],
)
IN_FLIGHT = Gauge(
    "thinkscale_requests_in_flight",
    "Requests admitted and not yet finished, by method.",
    ["method"],
)
QUEUE_DEPTH = Gauge(
    "thinkscale_queue_depth",
    "Work items waiting for a slot in a method's scheduler (e.g. REBASE node expansions).",
    ["method"],
)
# Read from the scheduler itself at scrape time (bound in server/methods/rebase.py), so it shows
# the scheduler's own slot count: 0 whenever no REBASE work runs, or slots have leaked.
REBASE_JOBS_IN_FLIGHT = Gauge(
    "thinkscale_rebase_jobs_in_flight",
    "Engine jobs (expansions, scoring calls) holding a slot of the REBASE scheduler "
    "(at most --rebase-max-in-flight).",
)
# The `priority` scheduler's KV-aware admission (server/rebase/scheduler.py: PriorityScheduler).
REBASE_KV_RESERVED = Gauge(
    "thinkscale_rebase_kv_reserved_blocks",
    "KV-cache blocks the REBASE priority scheduler has reserved for the jobs it runs.",
)
REBASE_KV_DEFERRALS = Counter(
    "thinkscale_rebase_kv_deferrals",
    "REBASE jobs the priority scheduler held back at least once for lack of KV-cache room "
    "(engine preemptions: vllm:num_preemptions_total).",
)

# --- REBASE ------------------------------------------------------------------------------
REBASE_NODES = Histogram(
    "thinkscale_rebase_nodes_expanded",
    "Tree nodes (steps) generated per REBASE request.",
    ["method"],
    buckets=COUNT_BUCKETS,
)
REBASE_DEPTH = Histogram(
    "thinkscale_rebase_depth",
    "Depth reached per REBASE request.",
    ["method"],
    buckets=(1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 32),
)
REBASE_LEAVES = Histogram(
    "thinkscale_rebase_leaves",
    "Completed leaves (candidate solutions) per REBASE request.",
    ["method"],
    buckets=COUNT_BUCKETS,
)
SEARCH_ENDS = Counter(
    "thinkscale_search_ends",
    "REBASE trees by why the search ended: complete (all width leaves), decided (the exact "
    "early stop: the vote could no longer change), confident (the adaptive early stop), budget "
    "(the request's budget ran out), depth (max_depth cut the open paths).",
    ["method", "reason"],
)
EARLY_STOP_SAVED = Counter(
    "thinkscale_early_stop_saved",
    "Work an early stop did not spend, estimated as the leaves it did not grow at the average "
    "cost of a leaf so far, by method, reason (decided, confident) and kind (flops, tokens).",
    ["method", "reason", "kind"],
)
REWARD_CALLS = Counter(
    "thinkscale_reward_calls",
    "Process-reward-model scoring calls, by method and reward model.",
    ["method", "reward_model"],
)

# --- Quiet-STaR --------------------------------------------------------------------------
FORWARD_TOKENS_PER_OUTPUT = Histogram(
    "thinkscale_forward_tokens_per_output_token",
    "Forward (computed) token positions per visible output token, per request.",
    ["method"],
    buckets=RATIO_BUCKETS,
)


# --- budgets ------------------------------------------------------------------------------
BUDGET_CUTS = Counter(
    "thinkscale_budget_cuts",
    "Choices whose per-request budget ended them, by method and budget (flops, seconds, tokens).",
    ["method", "budget"],
)


def record_request_outcome(method: str, status: str) -> None:
    REQUESTS.labels(method=method, status=status).inc()


def init_method_series(methods: list[str]) -> None:
    """Create every label combination at zero so dashboards show 0, not 'no data'.
    Requests naming no valid method are counted under method="unknown"."""
    REQUESTS.labels(method="unknown", status="client_error")
    for method in methods:
        for status in ("ok", "client_error", "server_error", "cancelled", "timeout", "rejected"):
            REQUESTS.labels(method=method, status=status)
        IN_FLIGHT.labels(method=method)
        for budget in ("flops", "seconds", "tokens"):
            BUDGET_CUTS.labels(method=method, budget=budget)
        if "rebase" in method:
            for reason in ("complete", "decided", "confident", "budget", "depth"):
                SEARCH_ENDS.labels(method=method, reason=reason)
            for reason in ("decided", "confident"):
                for kind in ("flops", "tokens"):
                    EARLY_STOP_SAVED.labels(method=method, reason=reason, kind=kind)
        QUEUE_DEPTH.labels(method=method)
        for component in ("policy", "reward"):
            for accounting in ("executed", "nominal"):
                FLOPS.labels(method=method, component=component, accounting=accounting)
