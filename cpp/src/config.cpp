#include "capsched/config.hpp"

#include <cmath>
#include <string>

#include "capsched/errors.hpp"

namespace capsched {

Policy parse_policy(const std::string& name) {
    if (name == "fcfs") return Policy::Fcfs;
    if (name == "priority") return Policy::Priority;
    if (name == "edf") return Policy::Edf;
    if (name == "srtf") return Policy::Srtf;
    if (name == "weighted") return Policy::Weighted;
    throw ConfigError("unknown policy '" + name +
                      "': expected one of 'fcfs', 'priority', 'edf', 'srtf', 'weighted'");
}

const char* policy_name(Policy p) noexcept {
    switch (p) {
        case Policy::Fcfs: return "fcfs";
        case Policy::Priority: return "priority";
        case Policy::Edf: return "edf";
        case Policy::Srtf: return "srtf";
        case Policy::Weighted: return "weighted";
    }
    return "?";
}

namespace {
void require_nonneg(double v, const char* name) {
    if (!std::isfinite(v) || v < 0.0)
        throw ConfigError(std::string(name) + " must be a finite number >= 0, got " +
                          format_number(v));
}
void require_pos(double v, const char* name) {
    if (!std::isfinite(v) || v <= 0.0)
        throw ConfigError(std::string(name) + " must be a finite number > 0, got " +
                          format_number(v));
}
}  // namespace

void validate(const SchedulerConfig& cfg) {
    const PolicyConfig& o = cfg.order;
    if (static_cast<unsigned>(o.policy) > static_cast<unsigned>(Policy::Weighted))
        throw ConfigError("unknown policy value " + std::to_string(static_cast<unsigned>(o.policy)));
    require_nonneg(o.w_urgency, "weight_urgency");
    require_nonneg(o.w_resource, "weight_resource");
    require_nonneg(o.w_deadline, "weight_deadline");
    require_pos(o.resource_scale_tokens, "resource_scale_tokens");
    if (o.deadline_levels < 1 || o.deadline_levels > kMaxDeadlineLevels)
        throw ConfigError("deadline_levels must be in 1.." + std::to_string(kMaxDeadlineLevels) +
                          ", got " + std::to_string(o.deadline_levels));
    require_nonneg(o.aging_priority, "aging_priority");
    require_nonneg(o.aging_weighted, "aging_weighted");
    require_nonneg(o.aging_srtf, "aging_srtf");
    require_nonneg(o.aging_edf, "aging_edf");
    require_pos(o.no_deadline_horizon, "no_deadline_horizon");
    const PlacementConfig& pl = cfg.placement;
    if (!std::isfinite(pl.fit_margin) || pl.fit_margin < 1.0)
        throw ConfigError("fit_margin must be a finite number >= 1, got " + format_number(pl.fit_margin));
    require_nonneg(pl.w_compute, "score_compute");
    require_nonneg(pl.w_memory, "score_memory");
    require_pos(pl.pelt_period, "pelt_period");
    require_pos(pl.default_work_per_token, "default_work_per_token");
    if (!(pl.dl_bandwidth_limit > 0.0 && pl.dl_bandwidth_limit <= 1.0))
        throw ConfigError("dl_bandwidth_limit must be in (0, 1], got " + format_number(pl.dl_bandwidth_limit));
    if (cfg.max_batch_size < 1 || cfg.max_batch_size > kMaxBatchSize)
        throw ConfigError("max_batch_size must be in 1.." + std::to_string(kMaxBatchSize) +
                          ", got " + std::to_string(cfg.max_batch_size));
    const BatchingConfig& b = cfg.batching;
    if (b.max_batch_tokens < 0 || b.max_batch_tokens > kMaxBatchTokens)
        throw ConfigError("max_batch_tokens must be in 0.." + std::to_string(kMaxBatchTokens) +
                          " (0 = no budget), got " + std::to_string(b.max_batch_tokens));
    if (b.preferred_batch_sizes.size() > kMaxPreferredSizes)
        throw ConfigError("preferred_batch_sizes lists " + std::to_string(b.preferred_batch_sizes.size()) +
                          " sizes (limit " + std::to_string(kMaxPreferredSizes) + ")");
    for (std::size_t i = 0; i < b.preferred_batch_sizes.size(); ++i) {
        const std::uint32_t v = b.preferred_batch_sizes[i];
        if (v < 1 || v > cfg.max_batch_size)
            throw ConfigError("preferred_batch_sizes[" + std::to_string(i) + "] must be in 1..max_batch_size (" +
                              std::to_string(cfg.max_batch_size) + "), got " + std::to_string(v));
        if (i > 0 && v <= b.preferred_batch_sizes[i - 1])
            throw ConfigError("preferred_batch_sizes must be strictly ascending, got " +
                              std::to_string(b.preferred_batch_sizes[i - 1]) + " then " + std::to_string(v));
    }
    require_nonneg(b.max_queue_delay, "max_queue_delay");
    require_nonneg(b.latency_target, "latency_target");
    if (cfg.max_queued > kMaxQueued)
        throw ConfigError("max_queued must be in 0.." + std::to_string(kMaxQueued) + " (0 = no bound), got " +
                          std::to_string(cfg.max_queued));
    if (cfg.max_queued_per_tenant > kMaxQueued)
        throw ConfigError("max_queued_per_tenant must be in 0.." + std::to_string(kMaxQueued) +
                          " (0 = no bound), got " + std::to_string(cfg.max_queued_per_tenant));
    if (cfg.max_dependents < 1 || cfg.max_dependents > kMaxDependentsLimit)
        throw ConfigError("max_dependents must be in 1.." + std::to_string(kMaxDependentsLimit) + ", got " +
                          std::to_string(cfg.max_dependents));
    if (cfg.breaker_failures > 1000000)
        throw ConfigError("breaker_failures must be in 0..1000000 (0 = no breaker), got " +
                          std::to_string(cfg.breaker_failures));
    require_nonneg(cfg.breaker_cooldown, "breaker_cooldown");
    require_nonneg(cfg.retry_base, "retry_base");
    require_nonneg(cfg.retry_cap, "retry_cap");
    if (cfg.max_retries > 1000)
        throw ConfigError("max_retries must be in 0..1000, got " + std::to_string(cfg.max_retries));
    require_nonneg(cfg.fair.input_weight, "fair_input_weight");
    require_nonneg(cfg.fair.output_weight, "fair_output_weight");
}

}  // namespace capsched
