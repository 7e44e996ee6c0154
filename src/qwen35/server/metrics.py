"""Prometheus metrics (`GET /metrics`), on a private registry so several apps can live in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("qwen35_requests", "HTTP API requests answered, by endpoint, status and reason",
                                ["endpoint", "status", "reason"], registry=r)
        self.finished = Counter("qwen35_request_finished", "Generated sequences by finish reason "
                                "(stop, length, abort, error)", ["finish_reason"], registry=r)
        self.in_flight = Gauge("qwen35_requests_in_flight", "Generation requests accepted by the server and not "
                               "yet finished (running or waiting)", registry=r)
        self.prompt_tokens = Counter("qwen35_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("qwen35_generation_tokens", "Tokens generated", registry=r)
        self.running = Gauge("qwen35_requests_running", "Requests being processed", registry=r)
        self.waiting = Gauge("qwen35_requests_waiting", "Requests waiting for cache", registry=r)
        self.kv_usage = Gauge("qwen35_kv_cache_usage_ratio", "Fraction of K/V blocks held by running requests "
                              "(blocks only the prefix cache holds count as free: it gives them up on demand)",
                              registry=r)
        self.kv_prefix_usage = Gauge("qwen35_kv_cache_prefix_only_ratio", "Fraction of K/V blocks held only by "
                                     "the prefix cache", registry=r)
        self.prefix_entries = Gauge("qwen35_prefix_cache_entries", "Prefix-cache entries (saved GDN states)",
                                    registry=r)
        self.prefix_bytes = Gauge("qwen35_prefix_cache_bytes", "Memory held by prefix-cache entries (their "
                                  "K/V blocks and GDN state slots)", registry=r)
        self.slot_usage = Gauge("qwen35_state_slots_usage_ratio", "Fraction of GDN state slots in use", registry=r)
        self.prefix_hits = Gauge("qwen35_prefix_cache_hits", "Prefix-cache hits (requests)", registry=r)
        self.prefix_misses = Gauge("qwen35_prefix_cache_misses", "Prefix-cache misses (requests)", registry=r)
        self.preemptions = Gauge("qwen35_preemptions", "Requests preempted (recomputed) for lack of cache",
                                 registry=r)
        self.prefix_hit_tokens = Gauge("qwen35_prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache",
                                       registry=r)
        self.ttft = Histogram("qwen35_time_to_first_token_seconds", "Time to first token", registry=r,
                              buckets=LATENCY_BUCKETS)
        self.e2e = Histogram("qwen35_e2e_request_latency_seconds", "End-to-end request latency", registry=r,
                             buckets=LATENCY_BUCKETS)
        self.spec = SpecDecodeCollector()
        r.register(self.spec)
        self.expert_load = Gauge("qwen35_expert_parallel_routed_tokens", "Expert parallel: token routes to each "
                                 "rank's experts so far, all MoE layers together", ["rank"], registry=r)
        self.expert_imbalance = Gauge("qwen35_expert_parallel_imbalance_ratio", "Expert parallel: the busiest rank's "
                                      "routes over the mean (1 is perfect balance)", registry=r)
        self.itl = Histogram("qwen35_inter_token_latency_seconds", "Time between streamed tokens", registry=r,
                             buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))

    def update_cache(self, usage: dict[str, int], in_flight: int = 0) -> None:
        self.in_flight.set(in_flight)
        self.running.set(usage["running"])
        self.waiting.set(usage["waiting"])
        total = max(usage["blocks_total"], 1)
        prefix_only = usage.get("blocks_prefix_only", 0)
        self.kv_usage.set((usage["blocks_total"] - usage["blocks_free"] - prefix_only) / total)
        self.kv_prefix_usage.set(prefix_only / total)
        self.prefix_entries.set(usage["prefix_entries"])
        self.prefix_bytes.set(usage.get("prefix_cache_bytes", 0))
        self.slot_usage.set(1 - usage["slots_free"] / max(usage["slots_total"], 1))
        self.prefix_hits.set(usage["prefix_hits"])
        self.prefix_misses.set(usage["prefix_misses"])
        self.prefix_hit_tokens.set(usage["prefix_hit_tokens"])
        self.preemptions.set(usage["preemptions"])
        self.spec.usage = usage
        load = usage.get("expert_load") or []
        for rank, n in enumerate(load):
            self.expert_load.labels(rank=str(rank)).set(n)
        if load and sum(load):
            self.expert_imbalance.set(max(load) * len(load) / sum(load))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class SpecDecodeCollector:
    """Speculative-decoding counters under vLLM's names (`vllm:spec_decode_*`), read from the engine's
    latest stats; absent while the engine does not speculate."""

    def __init__(self) -> None:
        self.usage: dict[str, int] = {}

    def collect(self):
        u = self.usage
        if "spec_num_drafts" not in u or not any(k.startswith("spec_accepted_pos_") for k in u):
            return
        for name, key, doc in (("num_drafts", "spec_num_drafts", "Verification rounds with drafts"),
                               ("num_draft_tokens", "spec_num_draft_tokens", "Draft tokens proposed"),
                               ("num_accepted_tokens", "spec_num_accepted_tokens", "Draft tokens accepted")):
            yield CounterMetricFamily(f"vllm:spec_decode_{name}", doc, value=u[key])
        per_pos = CounterMetricFamily("vllm:spec_decode_num_accepted_tokens_per_pos",
                                      "Draft tokens accepted, by position in the draft", labels=["position"])
        for key in sorted((k for k in u if k.startswith("spec_accepted_pos_")), key=lambda k: int(k.rsplit("_", 1)[1])):
            per_pos.add_metric([key.rsplit("_", 1)[1]], u[key])
        yield per_pos
