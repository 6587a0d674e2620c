// Configuration of the core. Every tunable says its default, unit and why.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace capsched {

enum class Policy : std::uint8_t { Fcfs = 0, Priority = 1, Edf = 2, Srtf = 3, Weighted = 4 };

// Parses "fcfs" | "priority" | "edf" | "srtf" | "weighted"; throws ConfigError otherwise.
Policy parse_policy(const std::string& name);
const char* policy_name(Policy p) noexcept;

// Ordering parameters; docs/policies.md gives the exact key of each policy.
struct PolicyConfig {
    Policy policy = Policy::Weighted;
    // Seed weights of the weighted score (default 0.5 / 0.3 / 0.2, unitless, >= 0).
    double w_urgency = 0.5;
    double w_resource = 0.3;
    double w_deadline = 0.2;
    // Token count at which a request counts as using "all" resources in the resource term
    // (default 4096 tokens, > 0): smaller requests score higher, as the seed's
    // 1/(usage + 0.1) intends.
    double resource_scale_tokens = 4096.0;
    // Steps of the quantised deadline-proximity term (default 16, 1..1024): each request's
    // key changes at most this many times; the term is within 1/Q of the exact proximity.
    std::uint32_t deadline_levels = 16;
    // Aging rates (>= 0). Units: priority per second (default 0.01: 100 s of waiting is
    // worth a full priority unit), score per second for weighted (default 0.01), tokens
    // per second for srtf (default 64), seconds per second for edf (default 0: EDF does
    // not starve).
    double aging_priority = 0.01;
    double aging_weighted = 0.01;
    double aging_srtf = 64.0;
    double aging_edf = 0.0;
    // EDF treats a request without a deadline as due this long after arrival
    // (default 60 s, > 0), so it cannot be starved by deadline traffic.
    double no_deadline_horizon = 60.0;
};

// Capacity-aware placement; docs/placement.md gives the exact rule.
struct PlacementConfig {
    // Linux fits_capacity margin: util * 1280 < capacity * 1024 (default 1.25, >= 1).
    double fit_margin = 1.25;
    // Device score = w_compute * compute headroom + w_memory * memory headroom (seed
    // scoreNode: 0.6 / 0.4; >= 0).
    double w_compute = 0.6;
    double w_memory = 0.4;
    // Among fitting devices prefer the lowest energy per token (Linux EAS), then score.
    bool energy_aware = false;
    // PELT period (default 1/32 s, so a signal's half-life is 1 s; > 0).
    double pelt_period = 1.0 / 32.0;
    // Invariant work per token before a class has been seen to finish: seconds on the
    // strongest device at full clock per token of prompt + max_new (default 1e-4 s:
    // a 7-8B model on an H100, batch 32, about 1,000 prompt and 200 output tokens).
    double default_work_per_token = 1e-4;
    // Share of a device's usable capacity that admitted deadline-class requests may
    // reserve (default 0.95, as Linux's sched_rt_runtime_us / sched_rt_period_us; (0, 1]).
    double dl_bandwidth_limit = 0.95;
    // A request with a deadline that only too-slow devices have room for (their service
    // model says it would end late) waits for a device that would finish it in time,
    // instead of running late (default false: it takes the best of those with room).
    bool defer_late = false;
    // A request with a deadline that fits no device with room waits in its queue (until
    // one fits, or it expires) instead of taking the fallback: placement as admission
    // control, so devices are not overcommitted past what keeps deadlines (default
    // false: Linux's rule, the fallback runs it somewhere). A request that would fit no
    // device it may use even when idle does not wait for one: it runs on an idle device
    // whose seeded service model says it ends it in time, and waits only while there is
    // none.
    bool wait_for_fit = false;
};

// Batch assembly; docs/batching.md gives the exact rule.
struct BatchingConfig {
    // Token budget of one batch: the sum of prompt + max_new tokens of its members
    // (default 0 = none, else 1..kMaxBatchTokens). A request larger than the budget runs
    // alone. In continuous mode it bounds the tokens of the requests joining per step.
    std::int64_t max_batch_tokens = 0;
    // Preferred batch sizes (Triton's dynamic batcher), ascending, each <= max_batch_size;
    // empty = none. With waiting on, a batch that is not full is cut to the largest
    // preferred size it reaches and goes; below the smallest it waits.
    std::vector<std::uint32_t> preferred_batch_sizes;
    // Longest a request waits for its batch to fill, s (default 0: a batch goes at once;
    // >= 0). Only with dynamic batching on and in batch mode.
    double max_queue_delay = 0.0;
    // Batch latency target for the adaptive batch size limit, s (default 0 = none, the
    // limit stays max_batch_size). With dynamic batching on: additive increase by one
    // when a batch finished within it, halving when it did not.
    double latency_target = 0.0;
    // Continuous mode: a queued deadline- or strict-class request with no room evicts the
    // lowest-priority normal request in flight that frees enough (default true).
    bool preemption = true;
};

// Weighted fair share between tenants (a virtual token counter, as VTC); docs/policies.md
// gives the exact rule. Off by default: the policy's order alone decides across tenants.
struct FairShareConfig {
    // Order the normal class by tenant: the tenant that has been given the least service
    // (its counter) goes first; within a tenant the policy's order.
    bool enabled = false;
    // Service charged per dispatch: input_weight x prompt tokens + output_weight x
    // max_new_tokens, over the tenant's weight (defaults 1 and 2, VTC's w_p and w_q;
    // finite, >= 0). A completion that reports its output tokens gives back the
    // output_weight x the unused max_new_tokens.
    double input_weight = 1.0;
    double output_weight = 2.0;
};

struct SchedulerConfig {
    PolicyConfig order;
    FairShareConfig fair;
    PlacementConfig placement;
    BatchingConfig batching;
    // Requests per batch (default 32, 1..65536).
    std::uint32_t max_batch_size = 32;
    // Extra tries after a retryable failure (default 3, 0..1000).
    std::uint32_t max_retries = 3;
    // Backoff before the k-th retry: min(retry_cap, retry_base x 2^(k-1)) x (1 + u) / 2,
    // u uniform in [0, 1) from a splitmix64 stream seeded with retry_seed ("equal
    // jitter"). Seconds, >= 0; retry_base 0 re-queues at once.
    // Back-pressure: requests not in flight (waiting, queued, retrying) in all and per
    // tenant; a submit beyond either raises QueueFull and accepts nothing (1..kMaxQueued,
    // or 0 = no bound; defaults kDefaultMaxQueued in all and no bound per tenant).
    // Re-queued requests (retries, preemption) are never refused.
    std::uint64_t max_queued = 16'777'216;  // kDefaultMaxQueued
    std::uint64_t max_queued_per_tenant = 0;
    // Fan-out: live requests waiting on one request (its dependents); a submit whose
    // depends_on names a request that already has this many raises DependencyError
    // (1..kMaxDependentsLimit, default 65536).
    std::uint32_t max_dependents = 65'536;
    // Circuit breaker per device: this many consecutive failures (fail()) of requests on
    // it open it for breaker_cooldown seconds; then one probe batch (one request in
    // continuous mode) decides: a completion closes it, a failure opens it again
    // (default 5, 0 = no breaker; cool-down default 30 s, >= 0). With breaker_degrade,
    // a device's usable capacity is also scaled by 1 - min(0.9, its failure rate, an
    // EWMA with weight 1/8): an intermittently failing device gets less work rather than
    // none (default true).
    std::uint32_t breaker_failures = 5;
    double breaker_cooldown = 30.0;
    bool breaker_degrade = true;
    double retry_base = 0.1;
    double retry_cap = 10.0;
    std::uint64_t retry_seed = 0;
    // Waiting to fill batches (max_queue_delay, preferred sizes) and the adaptive limit
    // (latency_target) apply only when this is on; off means a fixed max_batch_size and
    // immediate dispatch.
    bool dynamic_batching = true;
};

// Limits that keep one request or call from exhausting memory.
inline constexpr std::int64_t kMaxTokens = 10'000'000;        // per request, prompt or output
inline constexpr std::size_t kMaxDependencies = 1024;           // per request
inline constexpr std::uint32_t kMaxBatchSize = 65536;
inline constexpr std::size_t kMaxDevices = 65536;
inline constexpr std::uint32_t kMaxDeadlineLevels = 1024;
inline constexpr std::uint32_t kMaxClasses = 1u << 20;
// Tenant indexes a request may carry (capsched.config.MAX_TENANTS): per-tenant arrays
// are sized by the largest index seen, so an unbounded one could ask for gigabytes.
inline constexpr std::uint32_t kMaxTenants = 1u << 16;
inline constexpr std::int64_t kMaxBatchTokens = 1'000'000'000;
inline constexpr std::uint64_t kMaxQueued = 1'000'000'000'000ull;
inline constexpr std::uint64_t kDefaultMaxQueued = 16'777'216;  // 2^24: about 2 GB of records
inline constexpr std::uint32_t kMaxDependentsLimit = 1u << 24;   // the largest max_dependents
inline constexpr std::uint32_t kMaxPools = 65535;
inline constexpr std::size_t kMaxPreferredSizes = 64;
inline constexpr double kMaxTenantWeight = 1e6;  // a tenant's fair-share weight: (0, 1e6]

// Throws ConfigError naming the first bad field.
void validate(const SchedulerConfig& cfg);

}  // namespace capsched
