#include "capsched/scheduler.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <tuple>
#include <string>

#include "capsched/errors.hpp"

namespace capsched {

namespace {

const char* outcome_name(Outcome how) noexcept {
    switch (how) {
        case Outcome::Completed: return "completed";
        case Outcome::Failed: return "failed";
        case Outcome::Expired: return "expired";
        case Outcome::Cancelled: return "cancelled";
    }
    return "?";
}

const char* state_name(State s) noexcept {
    switch (s) {
        case State::Waiting: return "waiting on its dependencies";
        case State::Queued: return "queued";
        case State::InFlight: return "in flight";
        case State::Retrying: return "waiting to retry";
        case State::Free: break;
    }
    return "free";
}

std::string id_text(std::uint64_t id) { return std::to_string(id); }

}  // namespace

void StepOutput::clear() noexcept {
    preempted.clear();
    preempted_from.clear();
    next_step_at = kInf;
    held = 0;
    migrated.clear();
    migrated_from.clear();
    batch_device.clear();
    batch_offsets.clear();
    request_ids.clear();
    expired.clear();
    failed.clear();
    failed_reasons.clear();
}

Scheduler::Scheduler(const SchedulerConfig& cfg, const std::vector<DeviceSpec>& devices)
    : cfg_(cfg), pelt_(cfg.placement.pelt_period), fair_on_(cfg.fair.enabled), rng_(cfg.retry_seed) {
    validate(cfg_);
    if (devices.empty()) throw ConfigError("the device list is empty: give at least one device");
    if (devices.size() > kMaxDevices)
        throw ConfigError("too many devices: " + std::to_string(devices.size()) + " (limit " +
                          std::to_string(kMaxDevices) + ")");
    double max_cap = 0.0;
    std::uint32_t max_tenant = 0;
    for (std::size_t i = 0; i < devices.size(); ++i) {
        const DeviceSpec& d = devices[i];
        const std::string where = "device " + std::to_string(i) + ": ";
        if (!std::isfinite(d.capacity) || d.capacity <= 0.0)
            throw ConfigError(where + "capacity must be a finite number > 0, got " + format_number(d.capacity));
        if (d.max_inflight_batches < 1)
            throw ConfigError(where + "max_inflight_batches must be >= 1, got " +
                              std::to_string(d.max_inflight_batches));
        if (!std::isfinite(d.max_clock) || d.max_clock <= 0.0)
            throw ConfigError(where + "max clock must be a finite number > 0, got " + format_number(d.max_clock));
        if (!(d.cur_clock > 0.0 && d.cur_clock <= d.max_clock))
            throw ConfigError(where + "current clock must be in (0, max clock " + format_number(d.max_clock) +
                              "], got " + format_number(d.cur_clock));
        if (!std::isnormal(d.cur_clock / d.max_clock))
            throw ConfigError(where + "current clock " + format_number(d.cur_clock) + " is too small against max clock " +
                              format_number(d.max_clock) + ": their ratio underflows to 0");
        if (d.kv_tokens < kUnlimitedTokens)
            throw ConfigError(where + "kv_tokens must be >= 0 (or -1 for unlimited), got " +
                              std::to_string(d.kv_tokens));
        if (!std::isfinite(d.energy_per_token) || d.energy_per_token < 0.0)
            throw ConfigError(where + "energy per token must be a finite number >= 0, got " +
                              format_number(d.energy_per_token));
        const double seeds[3] = {d.prefill_s_per_token, d.decode_step_s, d.decode_s_per_seq};
        const char* seed_names[3] = {"prefill_s_per_token", "decode_step_s", "decode_s_per_seq"};
        for (int k = 0; k < 3; ++k)
            if (!std::isfinite(seeds[k]) || seeds[k] < 0.0)
                throw ConfigError(where + seed_names[k] + " must be a finite number >= 0, got " +
                                  format_number(seeds[k]));
        if (d.pool > kMaxPools)
            throw ConfigError(where + "pool must be in 0.." + std::to_string(kMaxPools) + ", got " + std::to_string(d.pool));
        for (std::uint32_t t : d.tenants) max_tenant = std::max(max_tenant, t + 1);
        max_cap = std::max(max_cap, d.capacity);
    }
    tenant_group_.assign(max_tenant, 0);
    devices_.resize(devices.size());
    for (std::size_t i = 0; i < devices.size(); ++i) {
        const DeviceSpec& spec = devices[i];
        Device& d = devices_[i];
        d.capacity_orig = spec.capacity == max_cap ? kCapacityScale : spec.capacity / max_cap * kCapacityScale;
        if (!std::isnormal(d.capacity_orig))  // (a device of no capacity would never fit anything)
            throw ConfigError("device " + std::to_string(i) + ": capacity " + format_number(spec.capacity) +
                              " is too small against the largest, " + format_number(max_cap) +
                              ": their ratio underflows to 0");
        d.max_clock = spec.max_clock;
        d.clock_scale = spec.cur_clock / spec.max_clock;
        d.kv_budget = spec.kv_tokens;
        d.energy_per_token = spec.energy_per_token;
        d.tenants = spec.tenants;
        d.pool = spec.pool;
        if (d.pool >= pool_exists_.size()) pool_exists_.resize(d.pool + std::size_t{1}, 0);
        pool_exists_[d.pool] = 1;
        d.max_inflight_batches = spec.max_inflight_batches;
        d.inv_slots = 1.0 / (static_cast<double>(cfg_.max_batch_size) * static_cast<double>(d.max_inflight_batches));
        d.service.seed[0] = spec.prefill_s_per_token;
        d.service.seed[1] = spec.decode_step_s;
        d.service.seed[2] = spec.decode_s_per_seq;
        d.batch_limit = static_cast<double>(cfg_.max_batch_size);
        refresh_capacity(d);
    }
    device_order_.resize(devices_.size());
    std::iota(device_order_.begin(), device_order_.end(), 0u);
    std::stable_sort(device_order_.begin(), device_order_.end(), [this](std::uint32_t a, std::uint32_t b) {
        return devices_[a].capacity_orig > devices_[b].capacity_orig;
    });
    step_batch_.assign(devices_.size(), kNoIndex);
    step_solo_.assign(devices_.size(), 0);
    step_slots_.assign(devices_.size(), 0);
    step_kv_.assign(devices_.size(), -1);
    // Placement groups: 0 = the shared devices, then one per pinned tenant (by tenant id).
    group_devices_.emplace_back();
    for (std::uint32_t t = 0; t < max_tenant; ++t) {
        std::vector<std::uint32_t> members;
        for (const std::uint32_t dev : device_order_) {
            const auto& ts = devices_[dev].tenants;
            if (std::find(ts.begin(), ts.end(), t) != ts.end()) members.push_back(dev);
        }
        if (members.empty()) continue;
        tenant_group_[t] = static_cast<std::uint32_t>(group_devices_.size());
        group_devices_.push_back(std::move(members));
    }
    for (const std::uint32_t dev : device_order_)
        if (devices_[dev].tenants.empty()) group_devices_[0].push_back(dev);
    group_symmetric_.assign(group_devices_.size(), 0);
    group_cursor_.assign(group_devices_.size(), 0);
    pool_down_.assign(pool_exists_.size(), 0);
    group_queued_.assign(group_devices_.size(), 0);
    group_blocked_.assign(group_devices_.size(), 0);
    group_skipped_.assign(group_devices_.size(), 0);
    for (const Device& d : devices_)
        if (d.kv_budget != kUnlimitedTokens) min_kv_budget_ = std::min(min_kv_budget_, d.kv_budget);
    // Placement's fitting choice (offer_fit) and its heaps (build_fit_heaps): each device's
    // place in device order, its KV class and its heap (numbered by first appearance in
    // device order). Too many heaps (over kMaxFitHeaps): none, every placement scans.
    const std::size_t n_dev = devices_.size();
    order_pos_.assign(n_dev, 0);
    kv_class_.assign(n_dev, 0);
    fit_part_.assign(n_dev, 0);
    std::map<std::int64_t, std::uint32_t> budgets;
    std::map<std::tuple<std::int64_t, std::uint32_t, std::vector<std::uint32_t>>, std::uint32_t> parts;
    std::vector<std::uint32_t> part_sizes;
    for (std::uint32_t i = 0; i < n_dev; ++i) {
        const std::uint32_t dev = device_order_[i];
        const Device& d = devices_[dev];
        order_pos_[dev] = i;
        kv_class_[dev] = budgets.emplace(d.kv_budget, static_cast<std::uint32_t>(budgets.size())).first->second;
        const auto p = parts.emplace(std::make_tuple(d.kv_budget, d.pool, d.tenants),
                                     static_cast<std::uint32_t>(parts.size())).first->second;
        if (p == part_sizes.size()) part_sizes.push_back(0);
        ++part_sizes[p];
        fit_part_[dev] = p;
    }
    if (part_sizes.size() > kMaxFitHeaps) part_sizes.clear();
    kv_best_.assign(budgets.size(), FitBest{});
    kv_touched_.reserve(budgets.size());
    fit_pos_.assign(n_dev, FitHeap::kNpos);
    spare_pos_.assign(n_dev, FitHeap::kNpos);
    fit_heaps_.reserve(part_sizes.size());
    spare_heaps_.reserve(part_sizes.size());
    part_max_capacity_.assign(part_sizes.size(), 0.0);
    part_member_.assign(part_sizes.size(), 0);
    for (std::size_t dev = n_dev; dev-- > 0;)  // (each partition's first device)
        if (fit_part_[dev] < part_member_.size()) part_member_[fit_part_[dev]] = static_cast<std::uint32_t>(dev);
    for (std::size_t p = 0; p < part_sizes.size(); ++p) {
        fit_heaps_.emplace_back(SharedPositions(&fit_pos_));
        fit_heaps_.back().reserve(part_sizes[p]);
        spare_heaps_.emplace_back(SharedPositions(&spare_pos_));
        spare_heaps_.back().reserve(part_sizes[p]);
    }
}

void Scheduler::reserve(std::size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    slab_.reserve(n);
    free_handles_.reserve(n);
    ids_.reserve(n, id_of());
    if (fair_on_)
        fair_.reserve(n);
    else
        ready_.reserve(n);
    timers_.reserve(n);
    // In-flight requests each hold a RequestExt: room for every device's full batches.
    std::size_t flight = 0;
    for (const Device& d : devices_) flight += std::size_t{d.max_inflight_batches} * cfg_.max_batch_size;
    ext_.reserve(std::min(n, flight) + 64);
    free_ext_.reserve(ext_.capacity());
    ext_dependents_.reserve(ext_.capacity());
    batches_.reserve(n / cfg_.max_batch_size + devices_.size() + 1);
    free_batches_.reserve(batches_.capacity());
}

// ---------------------------------------------------------------- time and validation

double Scheduler::advance_clock(double now) {
    // |now| <= 1e15 s (31 million years): beyond it the PELT arithmetic overflows (a jump
    // to 1e308 made every device's util_avg NaN and nothing was dispatched again).
    if (!std::isfinite(now) || !(std::fabs(now) <= 1e15))
        throw InvalidArgument("now must be a finite number of seconds within +-1e15, got " + format_number(now));
    return now > now_ ? now : now_;
}

void Scheduler::validate_spec(const RequestSpec& s, double now) const {
    if (s.prompt_tokens < 0 || s.prompt_tokens > kMaxTokens)
        throw InvalidRequest("prompt_tokens must be in 0.." + std::to_string(kMaxTokens) + ", got " +
                             std::to_string(s.prompt_tokens));
    if (s.max_new_tokens < 1 || s.max_new_tokens > kMaxTokens)
        throw InvalidRequest("max_new_tokens must be in 1.." + std::to_string(kMaxTokens) + ", got " +
                             std::to_string(s.max_new_tokens));
    if (!(s.priority >= 0.0 && s.priority <= 1.0))
        throw InvalidRequest("priority must be in [0, 1], got " + format_number(s.priority));
    const bool has_timeout = !std::isnan(s.timeout);
    const bool has_deadline = !std::isnan(s.deadline);
    if (has_timeout && has_deadline)
        throw InvalidRequest("give timeout or deadline, not both (timeout " + format_number(s.timeout) +
                             ", deadline " + format_number(s.deadline) + ")");
    if (has_timeout && !(std::isfinite(s.timeout) && s.timeout > 0.0))
        throw InvalidRequest("timeout must be a finite number of seconds > 0, got " + format_number(s.timeout));
    if (has_timeout && !std::isfinite(now + s.timeout))
        throw InvalidRequest("timeout " + format_number(s.timeout) + " puts the deadline beyond the clock's range");
    if (has_timeout && !(now + s.timeout > now))  // (below the clock's resolution at now)
        throw InvalidRequest("timeout " + format_number(s.timeout) + " is too small to put the deadline after now (" +
                             format_number(now) + ")");
    if (has_deadline && !std::isfinite(s.deadline))
        throw InvalidRequest("deadline must be a finite time in seconds, got " + format_number(s.deadline));
    if (has_deadline && !(s.deadline > now))
        throw InvalidRequest("deadline " + format_number(s.deadline) + " is not after now (" +
                             format_number(now) + ")");
    if (!(s.uclamp_min >= 0.0 && s.uclamp_min <= 1.0))
        throw InvalidRequest("uclamp_min must be in [0, 1], got " + format_number(s.uclamp_min));
    if (!(s.uclamp_max >= 0.0 && s.uclamp_max <= 1.0))
        throw InvalidRequest("uclamp_max must be in [0, 1], got " + format_number(s.uclamp_max));
    if (s.uclamp_min > s.uclamp_max)
        throw InvalidRequest("uclamp_min " + format_number(s.uclamp_min) + " exceeds uclamp_max " +
                             format_number(s.uclamp_max));
    if (static_cast<unsigned>(s.sched_class) > static_cast<unsigned>(SchedClass::Background))
        throw InvalidRequest("unknown scheduling class " + std::to_string(static_cast<unsigned>(s.sched_class)));
    if (s.sched_class == SchedClass::Deadline && !has_timeout && !has_deadline)
        throw InvalidRequest("a deadline-class request needs a timeout or a deadline");
    if (s.tenant >= kMaxTenants)
        throw InvalidRequest("tenant " + std::to_string(s.tenant) + " is beyond the limit of " +
                             std::to_string(kMaxTenants) + " tenants");
    if (s.request_class >= kMaxClasses)
        throw InvalidRequest("request class " + std::to_string(s.request_class) + " is beyond the limit of " +
                             std::to_string(kMaxClasses) + " classes");
    if (s.pool != 0 && (s.pool >= pool_exists_.size() || !pool_exists_[s.pool]))
        throw InvalidRequest("pool " + std::to_string(s.pool) + " has no device");
    if (s.fallback_pool != 0 && (s.pool == 0 || s.fallback_pool == s.pool || s.fallback_pool >= pool_exists_.size() ||
                                 !pool_exists_[s.fallback_pool]))
        throw InvalidRequest("fallback pool " + std::to_string(s.fallback_pool) +
                             " must be a pool with devices, other than the request's pool (and needs one)");
    if (s.n_depends_on > kMaxDependencies)
        throw InvalidRequest("depends_on lists " + std::to_string(s.n_depends_on) +
                             " requests (limit " + std::to_string(kMaxDependencies) + ")");
    // A request that no device is open to (its tenant's placement group has none, or none
    // in its pool or fallback pool) would wait forever: refused.
    {
        const std::vector<std::uint32_t>& members = group_devices_[group_of(s.tenant)];
        bool open = s.pool == 0 && !members.empty();
        for (std::size_t i = 0; !open && i < members.size(); ++i) {
            const std::uint32_t p = devices_[members[i]].pool;
            open = p == s.pool || (s.fallback_pool != 0 && p == s.fallback_pool);
        }
        if (!open)
            throw InvalidRequest("no device is open to tenant " + std::to_string(s.tenant) +
                                 (s.pool == 0 ? std::string(" (no device is shared, and none lists it)")
                                              : std::string(" in the request's pool or fallback pool")));
    }
    // A request that no device open to it could ever hold in KV memory would wait forever
    // and hold back its placement group: refused. (Only checked when some device's budget
    // is below its tokens, so the usual submit does not scan the devices.)
    const std::int64_t tokens = s.prompt_tokens + s.max_new_tokens;
    if (tokens > min_kv_budget_) {
        std::int64_t largest = -1;
        for (const std::uint32_t dev : group_devices_[group_of(s.tenant)]) {
            const Device& d = devices_[dev];
            if (s.pool != 0 && d.pool != s.pool && d.pool != s.fallback_pool) continue;
            if (d.kv_budget == kUnlimitedTokens) return;
            if (d.kv_budget > largest) largest = d.kv_budget;
        }
        if (largest >= 0 && tokens > largest)
            throw InvalidRequest("the request needs " + std::to_string(tokens) +
                                 " KV tokens (prompt_tokens + max_new_tokens), more than any device open to it "
                                 "holds (the largest kv_tokens is " + std::to_string(largest) + ")");
    }
}

void Scheduler::validate_dependencies(const RequestSpec& s) {
    // Scratch marks catch a live dependency listed twice; they are cleared before return.
    std::string problem;
    std::size_t checked = 0;
    for (; checked < s.n_depends_on; ++checked) {
        const std::uint64_t dep = s.depends_on[checked];
        if (dep == 0 || dep >= next_id_) {
            problem = "depends_on names request " + id_text(dep) + ", which this scheduler never issued";
            break;
        }
        const Handle h = ids_.find(dep, id_of());
        if (h == kNoHandle) {
            const Outcome how = outcome(dep);
            if (how != Outcome::Completed) {
                problem = "depends_on names request " + id_text(dep) + ", which already ended as " +
                          outcome_name(how) + " and so can never complete";
                break;
            }
            continue;
        }
        if (slab_[h].mark) {
            problem = "depends_on lists request " + id_text(dep) + " twice";
            break;
        }
        const std::uint32_t x = slab_[h].ext;
        if (x != kNoIndex && ext_dependents_[x] >= cfg_.max_dependents && prune_dependents(h) >= cfg_.max_dependents) {
            problem = "depends_on names request " + id_text(dep) + ", which already has " +
                      std::to_string(ext_dependents_[x]) + " requests waiting on it (max_dependents = " +
                      std::to_string(cfg_.max_dependents) + ")";
            break;
        }
        slab_[h].mark = true;
    }
    for (std::size_t i = 0; i < checked; ++i) {
        const Handle h = ids_.find(s.depends_on[i], id_of());
        if (h != kNoHandle) slab_[h].mark = false;
    }
    if (problem.empty() && s.n_depends_on > 1) {
        // Completed dependencies carry no mark; sort a copy to catch one listed twice.
        dep_scratch_.assign(s.depends_on, s.depends_on + s.n_depends_on);
        std::sort(dep_scratch_.begin(), dep_scratch_.end());
        const auto dup = std::adjacent_find(dep_scratch_.begin(), dep_scratch_.end());
        if (dup != dep_scratch_.end()) problem = "depends_on lists request " + id_text(*dup) + " twice";
    }
    if (!problem.empty()) throw DependencyError(problem);
}

// ---------------------------------------------------------------- submission

Handle Scheduler::alloc_request() {
    if (!free_handles_.empty()) {
        const Handle h = free_handles_.back();
        free_handles_.pop_back();
        return h;
    }
    if (slab_.size() >= static_cast<std::size_t>(kNoHandle) - 1)
        throw InvalidRequest("too many live requests (limit " + std::to_string(kNoHandle - 1) + ")");
    slab_.emplace_back();
    return static_cast<Handle>(slab_.size() - 1);
}

RequestExt& Scheduler::ext_of(Handle h) {
    Request& r = slab_[h];
    if (r.ext == kNoIndex) {
        if (!free_ext_.empty()) {
            r.ext = free_ext_.back();
            free_ext_.pop_back();
            ext_[r.ext] = RequestExt{};
            ext_dependents_[r.ext] = 0;
        } else {
            ext_.emplace_back();
            ext_dependents_.push_back(0);
            r.ext = static_cast<std::uint32_t>(ext_.size() - 1);
        }
    }
    return ext_[r.ext];
}

std::uint64_t Scheduler::submit(const RequestSpec& spec, double now) {
    std::lock_guard<std::mutex> lock(mu_);
    const double t = advance_clock(now);
    validate_spec(spec, t);
    validate_dependencies(spec);
    check_room(spec.tenant, 1);
    if (spec.sched_class == SchedClass::Deadline) {
        const double d = !std::isnan(spec.timeout) ? t + spec.timeout : spec.deadline;
        (void)admit(spec, d, t);  // throws AdmissionError if no device can take it
    }
    now_ = t;
    return accept(spec, t);
}

void Scheduler::submit_many(std::size_t n, const std::int64_t* prompt_tokens,
                            const std::int64_t* max_new_tokens, const double* priority,
                            const double* timeout, const double* deadline, double now,
                            std::uint64_t* ids) {
    std::lock_guard<std::mutex> lock(mu_);
    const double t = advance_clock(now);
    RequestSpec s;
    for (std::size_t i = 0; i < n; ++i) {
        s.prompt_tokens = prompt_tokens[i];
        s.max_new_tokens = max_new_tokens[i];
        s.priority = priority[i];
        s.timeout = timeout[i];
        s.deadline = deadline[i];
        try {
            validate_spec(s, t);
        } catch (const InvalidRequest& e) {
            throw InvalidRequest("element " + std::to_string(i) + ": " + e.what());
        }
    }
    check_room(0, n);
    now_ = t;
    // Room for all n at once (growing geometrically, as one-by-one pushes would), so the
    // loop below does not reallocate the slab and the ready heap several times over.
    const std::size_t live = slab_.size() - free_handles_.size();
    if (live + n > slab_.capacity()) slab_.reserve(std::max(live + n, 2 * slab_.capacity()));
    if (!fair_on_ && live + n > ready_.capacity()) ready_.reserve(std::max(live + n, 2 * ready_.capacity()));
    for (std::size_t i = 0; i < n; ++i) {
        s.prompt_tokens = prompt_tokens[i];
        s.max_new_tokens = max_new_tokens[i];
        s.priority = priority[i];
        s.timeout = timeout[i];
        s.deadline = deadline[i];
        ids[i] = accept(s, t);
    }
}

double Scheduler::static_key(const Request& r) const noexcept {
    // The part of the policy key that does not depend on `now` (docs/policies.md).
    const PolicyConfig& o = cfg_.order;
    const double tokens = static_cast<double>(r.prompt_tokens) + static_cast<double>(r.max_new_tokens);
    switch (o.policy) {
        case Policy::Fcfs: return r.arrival;
        case Policy::Priority: return -r.priority + o.aging_priority * r.arrival;
        case Policy::Edf:
            return (std::isinf(r.deadline) ? r.arrival + o.no_deadline_horizon : r.deadline) + o.aging_edf * r.arrival;
        case Policy::Srtf: return tokens + o.aging_srtf * r.arrival;
        case Policy::Weighted: {
            const double u = std::min(1.0, tokens / o.resource_scale_tokens);
            const double resource = 0.1 / (u + 0.1);
            return o.w_urgency * r.priority + o.w_resource * resource;
        }
    }
    return 0.0;
}

void Scheduler::add_edge(Handle dependency, Handle dependent) {
    // dependent waits on dependency: one more edge in dependency's list of dependents.
    std::uint32_t e;
    if (free_edge_ != kNoIndex) {
        e = free_edge_;
        free_edge_ = edges_[e].next;
    } else {
        e = static_cast<std::uint32_t>(edges_.size());
        edges_.emplace_back();
    }
    RequestExt& x = ext_of(dependency);
    edges_[e] = Edge{slab_[dependent].id, dependent, x.dependents};
    x.dependents = e;
    ++ext_dependents_[slab_[dependency].ext];
    ++slab_[dependent].slot;  // (Waiting: its live dependencies)
}

std::uint32_t Scheduler::prune_dependents(Handle h) noexcept {
    // Unlinks (and frees) the edges whose dependent ended or was replaced; the order of
    // the edges left is kept. Runs only when a list reaches max_dependents.
    RequestExt& x = ext_[slab_[h].ext];
    std::uint32_t* link = &x.dependents;
    std::uint32_t kept = 0;
    while (*link != kNoIndex) {
        const std::uint32_t e = *link;
        const Request& d = slab_[edges_[e].dependent];
        if (d.id == edges_[e].dependent_id && d.state == State::Waiting) {
            ++kept;
            link = &edges_[e].next;
        } else {
            *link = edges_[e].next;
            free_edge(e);
        }
    }
    ext_dependents_[slab_[h].ext] = kept;
    return kept;
}

std::uint64_t Scheduler::accept(const RequestSpec& s, double now) {
    const Handle h = alloc_request();
    const std::uint64_t id = next_id_++;
    if ((id - 1) / 32 >= outcomes_.size()) outcomes_.push_back(0);
    Request& r = slab_[h];
    r = Request{};
    r.id = id;
    ids_.insert(h, id_of());
    r.arrival = now;
    r.deadline = !std::isnan(s.timeout) ? now + s.timeout : !std::isnan(s.deadline) ? s.deadline : kInf;
    r.priority = s.priority;
    r.prompt_tokens = static_cast<std::uint32_t>(s.prompt_tokens);
    r.max_new_tokens = static_cast<std::uint32_t>(s.max_new_tokens);
    r.tenant = s.tenant;
    r.request_class = s.request_class;
    r.sched_class = s.sched_class;
    if (s.uclamp_min != 0.0 || s.uclamp_max != 1.0 || s.pool != 0 || s.fallback_pool != 0 ||
        s.sched_class == SchedClass::Deadline) {
        RequestExt& x = ext_of(h);
        x.uclamp_min = s.uclamp_min;
        x.uclamp_max = s.uclamp_max;
        x.pool = static_cast<std::uint16_t>(s.pool);
        x.fallback_pool = static_cast<std::uint16_t>(s.fallback_pool);
        if (s.sched_class == SchedClass::Deadline) {
            x.dl_device = admit(s, r.deadline, now);
            x.dl_bw = util_of(s.request_class,
                              static_cast<double>(s.prompt_tokens) + static_cast<double>(s.max_new_tokens), r.deadline,
                              s.uclamp_min, s.uclamp_max, now);
            devices_[x.dl_device].dl_bw += x.dl_bw;
        }
    }
    if (s.request_class >= classes_.size()) classes_.resize(s.request_class + std::size_t{1});
    r.batchable = s.batchable;

    for (std::size_t i = 0; i < s.n_depends_on; ++i) {
        const Handle dh = ids_.find(s.depends_on[i], id_of());
        if (dh != kNoHandle) add_edge(dh, h);  // (not found: completed already, validated)
    }

    ++counters_.accepted;
    pending(r.tenant, true);
    if (r.slot > 0) {
        r.state = State::Waiting;
        ++waiting_;
        arm_timer(h);
    } else {
        make_ready(h, now);
    }
    return id;
}

// ---------------------------------------------------------------- keys and levels

double Scheduler::level_time(const Request& r, std::uint32_t k) const noexcept {
    // c_k = d + 1 - Q/k: the instant at which 1/(d - now + 1) reaches k/Q.
    return r.deadline + 1.0 - static_cast<double>(cfg_.order.deadline_levels) / static_cast<double>(k);
}

void Scheduler::set_level(Handle h, double now) {
    Request& r = slab_[h];
    if (!std::isfinite(r.deadline)) return;
    const std::uint32_t q = cfg_.order.deadline_levels;
    // Estimate from the closed form, then correct against the exact c_k comparisons.
    const double est = std::floor(static_cast<double>(q) / (r.deadline - now + 1.0));
    std::uint32_t level = r.slot;
    if (est > static_cast<double>(level)) level = est >= static_cast<double>(q) ? q : static_cast<std::uint32_t>(est);
    while (level > r.slot && now < level_time(r, level)) --level;
    while (level < q && now >= level_time(r, level + 1)) ++level;
    r.slot = level;
}

ReadyKey Scheduler::ready_key(const Request& r) const noexcept {
    if (r.sched_class == SchedClass::Deadline) return ReadyKey{r.deadline, static_cast<std::uint32_t>(r.id)};
    if (r.sched_class == SchedClass::Background) return ReadyKey{r.arrival, static_cast<std::uint32_t>(r.id)};
    if (r.sched_class == SchedClass::Strict)
        return ReadyKey{-r.priority + cfg_.order.aging_priority * r.arrival, static_cast<std::uint32_t>(r.id)};
    if (cfg_.order.policy != Policy::Weighted) return ReadyKey{static_key(r), static_cast<std::uint32_t>(r.id)};
    const PolicyConfig& o = cfg_.order;
    const double proximity = static_cast<double>(r.slot) / static_cast<double>(o.deadline_levels);
    return ReadyKey{-(static_key(r) + o.w_deadline * proximity) + o.aging_weighted * r.arrival, static_cast<std::uint32_t>(r.id)};
}

void Scheduler::make_ready(Handle h, double now, bool lift) {
    Request& r = slab_[h];
    r.state = State::Queued;
    r.slot = 0;  // its level, computed afresh below (weighted)
    ++queued_;
    if (r.sched_class == SchedClass::Normal || r.sched_class == SchedClass::Strict) ++group_queued_[group_of(r.tenant)];
    if (r.sched_class != SchedClass::Normal) {
        queue_of(r).push(h, ready_key(r));
        arm_timer(h);
        return;
    }
    if (cfg_.order.policy == Policy::Weighted) set_level(h, now);
    push_normal(h, ready_key(r), lift);
    arm_timer(h);
}

void Scheduler::push_normal(Handle h, const ReadyKey& key, bool lift) {
    if (!fair_on_) {
        ready_.push(h, key);
        return;
    }
    // A tenant whose backlog starts now starts from the virtual time at least: service it
    // was not given while it had nothing queued is not banked (VTC's counter lift).
    const std::uint32_t t = slab_[h].tenant;
    if (lift && fair_.tenant_size(t) == 0 && fair_.counter(t) < fair_vtime_) fair_.set_counter(t, fair_vtime_);
    fair_.push(t, h, key);
}

const ReadyKey& Scheduler::queued_key(const Request& r, Handle h) const noexcept {
    if (fair_on_ && r.sched_class == SchedClass::Normal) return fair_.key_of(r.tenant, h);
    return queue_of(r).key_of(h);
}

void Scheduler::pass_over(const Request& r, Handle h) {
    if (fair_on_ && r.sched_class == SchedClass::Normal) {
        skipped_.push_back({h, fair_.key_of(r.tenant, h)});
        fair_.erase(r.tenant, h);
        return;
    }
    ReadyQueue& q = queue_of(r);
    skipped_.push_back({h, q.top().key});
    q.pop();
}

void Scheduler::put_back(Handle h, const ReadyKey& key) {
    const Request& r = slab_[h];
    if (fair_on_ && r.sched_class == SchedClass::Normal)
        fair_.push(r.tenant, h, key);  // (no lift: it never left the tenant's backlog)
    else
        queue_of(r).push(h, key);
}

Handle Scheduler::normal_head() const noexcept {
    if (fair_on_) return fair_.empty() ? kNoHandle : fair_.top().handle;
    return ready_.empty() ? kNoHandle : ready_.top().handle;
}

double Scheduler::fair_cost(const Request& r) const noexcept {
    const double w = weight_of(r.tenant);
    return (cfg_.fair.input_weight * static_cast<double>(r.prompt_tokens) +
            cfg_.fair.output_weight * static_cast<double>(r.max_new_tokens)) / w;
}

void Scheduler::fair_charge(const Request& r, double sign) {
    const double c = fair_.counter(r.tenant);
    if (sign > 0.0 && c > fair_vtime_) fair_vtime_ = c;
    fair_.set_counter(r.tenant, sign > 0.0 ? c + fair_cost(r) : c - fair_cost(r));
}

void Scheduler::arm_timer(Handle h) {
    Request& r = slab_[h];
    if (!std::isfinite(r.deadline)) return;
    if (timers_.size() >= 2 * (waiting_ + queued_ + retrying_) + 1024) {
        // Compact: drop the stale entries (amortised O(1): at least as many arms as live
        // entries happened since the last compaction).
        timers_.drop_if([this](const Timer& e) { return !timer_current(e); });
    }
    timers_.push(Timer{timer_at(r), static_cast<std::uint32_t>(r.id), h});
}

bool Scheduler::timer_current(const Timer& e) const noexcept {
    const Request& r = slab_[e.handle];
    return static_cast<std::uint32_t>(r.id) == e.id_lo &&
           (r.state == State::Queued || r.state == State::Waiting || r.state == State::Retrying) &&
           (e.at == r.deadline || e.at == timer_at(r));
}

double Scheduler::timer_at(const Request& r) const noexcept {
    // The next level change, but never after the deadline: the last level's c_Q = d + 1 -
    // Q/Q is d itself in exact arithmetic, and computed in doubles it can round above d;
    // a timer there would miss the expiry at d.
    const bool level = r.state == State::Queued && r.sched_class == SchedClass::Normal &&
                       cfg_.order.policy == Policy::Weighted && r.slot < cfg_.order.deadline_levels;
    return level ? std::min(level_time(r, r.slot + 1u), r.deadline) : r.deadline;
}

void Scheduler::pop_timer() noexcept {
    timers_.pop();
}

// ---------------------------------------------------------------- step

void Scheduler::step(double now, StepOutput& out) {
    std::lock_guard<std::mutex> lock(mu_);
    const double t = advance_clock(now);
    continuous_ = false;
    run_step(t, out);
}

void Scheduler::step_continuous(double now, const std::int64_t* free_slots, const std::int64_t* free_kv,
                                StepOutput& out) {
    std::lock_guard<std::mutex> lock(mu_);
    const double t = advance_clock(now);
    for (std::size_t i = 0; i < devices_.size(); ++i) {
        if (free_slots[i] < -1 || free_slots[i] > static_cast<std::int64_t>(kMaxBatchSize))
            throw InvalidArgument("free_slots of device " + std::to_string(i) + " must be in 0.." +
                                  std::to_string(kMaxBatchSize) + " (or -1: not reported), got " +
                                  std::to_string(free_slots[i]));
        // (KV left + KV freed by preemption is summed in 64 bits: at most 2^62 each)
        if (free_kv != nullptr && free_kv[i] > (std::int64_t{1} << 62))
            throw InvalidArgument("free_kv of device " + std::to_string(i) + " must be at most 2^62 (< 0: not reported), got " +
                                  std::to_string(free_kv[i]));
    }
    for (std::size_t i = 0; i < devices_.size(); ++i) {
        step_slots_[i] = free_slots[i];
        step_kv_[i] = free_kv != nullptr && free_kv[i] >= 0 ? free_kv[i] : -1;
    }
    continuous_ = true;
    run_step(t, out);
    continuous_ = false;
}

void Scheduler::run_step(double t, StepOutput& out) {
    now_ = t;
    out.clear();
    out.now = t;

    // 1. Expire waiting and queued requests whose deadline has come, in (deadline, id)
    //    order; then fail the dependents of those that expired. Expiring all first means a
    //    dependent that is itself past its deadline is reported as expired, not failed.
    //    Deadline-level changes that are due (weighted policy) come off the same timer
    //    heap; they only change queued requests' keys, so doing them here is the same as
    //    doing them after the retries below.
    expired_heads_.clear();
    while (!timers_.empty() && timers_.front().at <= t) {
        const Timer e = timers_.front();
        pop_timer();
        if (!timer_current(e)) continue;
        const Handle h = e.handle;
        Request& r = slab_[h];
        if (r.deadline <= t) {
            if (e.at < r.deadline) {  // a level change overtaken by its deadline: expire in deadline order
                timers_.push(Timer{r.deadline, e.id_lo, h});
                continue;
            }
            const std::uint64_t id = r.id;
            out.expired.push_back(id);
            const std::uint32_t dependents = detach(h, Outcome::Expired);
            if (dependents != kNoIndex) expired_heads_.push_back({dependents, id});
            continue;
        }
        set_level(h, t);
        if (fair_on_)
            fair_.update(r.tenant, h, ready_key(r));
        else
            ready_.update(h, ready_key(r));
        arm_timer(h);
    }
    for (const auto& [dependents, id] : expired_heads_) fail_dependents(dependents, id, Outcome::Expired, "");

    // Retries whose backoff has ended are queued again, in (time, id) order.
    while (!retries_.empty() && retries_.top().key.key <= t) {
        const Handle h = retries_.pop();
        --retrying_;
        make_ready(h, t);
    }

    // 3. Placement and batch assembly, in policy order. Breakers whose cool-down ended
    //    let one probe through.
    for (Device& d : devices_) {
        touch(d, t);
        if (d.breaker == Breaker::Open && t >= d.open_until) {
            d.breaker = Breaker::HalfOpen;
            d.probe_out = false;
        }
    }
    // A pool is down while every device of it has an open breaker.
    std::fill(pool_down_.begin(), pool_down_.end(), 1);
    for (const Device& d : devices_)
        if (d.breaker != Breaker::Open) pool_down_[d.pool] = 0;
    step_batches_.clear();
    step_members_.clear();
    fair_vtime_before_step_ = fair_vtime_;
    refresh_groups();
    migrate_misfits(t, out);
    open_listed_ = false;
    fit_phase_ = fit_heaps_on_ = false;  // (also reset by place_by_fitness; here in case one threw)
    place_deadline(t);
    place_by_fitness(t);
    // Background work only when no online request is left queued (docs/placement.md):
    // in batch mode, after the online batches are held back or trimmed (which queues
    // their members again); then the background batches may wait to fill in turn.
    if (!continuous_) hold_batches(t, out);
    const bool background = place_background(t);
    if (continuous_ && cfg_.batching.preemption) preempt(t, out);
    if (!continuous_ && background) hold_batches(t, out);  // (else nothing changed since)
    if (!retries_.empty()) out.next_step_at = std::min(out.next_step_at, retries_.top().key.key);
    emit_step(out);

    // 4. Failures that happened since the last step (dependency cascades).
    out.failed.swap(pending_failed_);
    out.failed_reasons.swap(pending_reasons_);
    pending_failed_.clear();
    pending_reasons_.clear();
}

// ---------------------------------------------------------------- devices and placement

void Scheduler::refresh_capacity(Device& d) noexcept {
    const double degrade = cfg_.breaker_degrade ? std::min(0.9, d.fail_rate) : 0.0;
    const double capacity = d.capacity_orig * d.clock_scale * (1.0 - d.pressure) * (1.0 - degrade);
    if (capacity != d.capacity) groups_stale_ = true;  // (refresh_groups)
    d.capacity = capacity;
}

void Scheduler::device_outcome(Device& d, bool failed, double now) noexcept {
    // docs/placement.md, circuit breakers: the failure-rate EWMA, then the breaker.
    d.fail_rate += ((failed ? 1.0 : 0.0) - d.fail_rate) / 8.0;
    // Degradation steers new work only: it does not make in-flight requests misfits.
    if (cfg_.breaker_degrade) refresh_capacity(d);
    if (!failed) {
        d.consecutive_failures = 0;
        if (d.breaker == Breaker::HalfOpen) d.breaker = Breaker::Closed;
        return;
    }
    ++d.consecutive_failures;
    if (cfg_.breaker_failures == 0) return;
    if (d.breaker == Breaker::HalfOpen ||
        (d.breaker == Breaker::Closed && d.consecutive_failures >= cfg_.breaker_failures)) {
        d.breaker = Breaker::Open;
        d.open_until = now + cfg_.breaker_cooldown;
        d.probe_out = false;
        ++d.breaker_trips;
        ++counters_.breaker_trips;
    }
}

void Scheduler::touch(Device& d, double now) noexcept {
    // Occupancy in batch slots: a batch of 1 leaves most of an accelerator idle. (Times
    // the reciprocal, made once per device: a division per device and step cost about 15
    // ns per dispatched request at 64 devices.)
    const double occupancy = std::min(1.0, static_cast<double>(d.inflight_requests) * d.inv_slots);
    d.util.update(now, occupancy * d.clock_scale * d.capacity_orig, pelt_);
}

double Scheduler::util_of(std::uint32_t request_class, double tokens, double due, double uclamp_min,
                          double uclamp_max, double now) const noexcept {
    const bool seen = request_class < classes_.size() && classes_[request_class].est.seen();
    const double per_token = seen ? classes_[request_class].est.estimate() : cfg_.placement.default_work_per_token;
    const double work = per_token * tokens;
    const double left = due - now;
    double u = left > 0.0 ? kCapacityScale * work / left : kInf;
    const double lo = uclamp_min * kCapacityScale;
    const double hi = uclamp_max * kCapacityScale;
    if (u < lo) u = lo;
    if (u > hi) u = hi;
    return u;
}

double Scheduler::request_util(const Request& r, double now) const noexcept {
    // Without a deadline a request is paced as due no_deadline_horizon after its arrival;
    // a background one (never urgent) as due that long from now, so that waiting past the
    // horizon cannot make it fit no device at all (docs/placement.md).
    const double due = !std::isinf(r.deadline) ? r.deadline
                       : r.sched_class == SchedClass::Background ? now + cfg_.order.no_deadline_horizon
                                                                 : r.arrival + cfg_.order.no_deadline_horizon;
    return util_of(r.request_class, static_cast<double>(r.prompt_tokens) + static_cast<double>(r.max_new_tokens),
                   due, cold(r).uclamp_min, cold(r).uclamp_max, now);
}

namespace {
// Deadline admission: a device whose breaker stays open until the deadline or later.
bool shut_until(const Device& d, double deadline) noexcept {
    return d.breaker == Breaker::Open && d.open_until >= deadline;
}
}  // namespace

std::uint32_t Scheduler::admit(const RequestSpec& s, double deadline, double now) const {
    // Linux DL admission, per device: the sum of admitted bandwidths stays within
    // dl_bandwidth_limit x usable capacity. Worst fit: the device with the most room left.
    // A device whose breaker stays open until the deadline or later is no candidate: the
    // request could only expire there.
    const double u = util_of(s.request_class, static_cast<double>(s.prompt_tokens) + static_cast<double>(s.max_new_tokens),
                             deadline, s.uclamp_min, s.uclamp_max, now);
    std::uint32_t best = kNoIndex;
    double best_room = -kInf;
    bool shut = false;  // some device open to it was left out for its breaker
    for (const std::uint32_t dev : device_order_) {
        const Device& d = devices_[dev];
        if (!eligible(d, s.tenant, s.pool, s.fallback_pool)) continue;
        if (shut_until(d, deadline)) {
            shut = true;
            continue;
        }
        const double room = cfg_.placement.dl_bandwidth_limit * d.capacity - d.dl_bw - u;
        if (room >= 0.0 && room > best_room) {
            best = dev;
            best_room = room;
        }
    }
    if (best != kNoIndex) return best;
    std::string free;
    std::size_t listed = 0;
    for (const std::uint32_t dev : device_order_) {
        const Device& d = devices_[dev];
        if (!eligible(d, s.tenant, s.pool, s.fallback_pool)) continue;
        if (listed++ == 8) {
            free += ", ...";
            break;
        }
        free += (listed > 1 ? ", " : "") + std::string("device ") + std::to_string(dev) + ": ";
        if (shut_until(d, deadline))
            free += "breaker open until " + format_number(d.open_until);
        else
            free += format_number(cfg_.placement.dl_bandwidth_limit * d.capacity - d.dl_bw);
    }
    throw AdmissionError("cannot admit the deadline request: it needs a bandwidth of " + format_number(u) +
                         " (of 1024) and no device has that much deadline bandwidth free" +
                         (shut ? std::string(" before its deadline ") + format_number(deadline) : std::string()) +
                         " (" + (free.empty() ? std::string("no device is open to its tenant") : free) + ")");
}

ReadyQueue& Scheduler::queue_of(const Request& r) noexcept {
    switch (r.sched_class) {
        case SchedClass::Deadline: return dl_ready_;
        case SchedClass::Strict: return rt_ready_;
        case SchedClass::Background: return bg_ready_;
        case SchedClass::Normal: break;
    }
    return ready_;
}

const ReadyQueue& Scheduler::queue_of(const Request& r) const noexcept {
    return const_cast<Scheduler*>(this)->queue_of(r);
}

void Scheduler::erase_ready(Handle h) noexcept {
    const Request& r = slab_[h];
    if (r.sched_class == SchedClass::Normal || r.sched_class == SchedClass::Strict) --group_queued_[group_of(r.tenant)];
    if (fair_on_ && r.sched_class == SchedClass::Normal)
        fair_.erase(r.tenant, h);
    else
        queue_of(r).erase(h);
}

Handle Scheduler::next_ready() const noexcept {
    if (!rt_ready_.empty()) return rt_ready_.top().handle;
    return normal_head();
}

void Scheduler::refresh_groups() noexcept {
    // Linux's SMP-island rule, per placement group: when every device a request may use
    // has the same usable capacity (and here: the same KV budget and energy per token),
    // fitness cannot tell them apart, so placement skips it. The check reads only fields
    // that change with a device's capacity (refresh_capacity) or its service model
    // (learn_service), and a restore; each sets groups_stale_, so a step that follows none
    // of them keeps the groups as they are instead of comparing every device again.
    for (std::size_t g = 0; g < group_devices_.size(); ++g) group_cursor_[g] = 0;
    if (!groups_stale_) return;
    groups_stale_ = false;
    for (std::size_t g = 0; g < group_devices_.size(); ++g) {
        const auto& members = group_devices_[g];
        bool same = !members.empty();
        for (std::size_t i = 1; same && i < members.size(); ++i) {
            const Device& a = devices_[members[0]];
            const Device& d = devices_[members[i]];
            same = d.capacity == a.capacity && d.kv_budget == a.kv_budget &&
                   d.energy_per_token == a.energy_per_token;
            for (int k = 0; same && k < 3; ++k)  // and the same service-time model
                same = d.service.seed[k] * d.service.m[k] == a.service.seed[k] * a.service.m[k];
        }
        group_symmetric_[g] = same ? 1 : 0;
    }
}

std::uint32_t Scheduler::choose_symmetric(std::uint32_t group, const Request& r) noexcept {
    // The first device of the group (strongest first, then index) with room for r: a
    // device's batch of this step is filled before the next device opens one. The
    // cursor skips devices that can take no further batchable request in this step.
    const auto& members = group_devices_[group];
    std::uint32_t& cursor = group_cursor_[group];
    for (std::uint32_t i = cursor; i < members.size(); ++i) {
        const std::uint32_t dev = members[i];
        if (device_closed(dev) && i == cursor) {
            ++cursor;
            continue;
        }
        if (has_room(dev, r)) return dev;
    }
    return kNoIndex;
}

std::uint32_t Scheduler::group_of(std::uint32_t tenant) const noexcept {
    return tenant < tenant_group_.size() ? tenant_group_[tenant] : 0;
}

bool Scheduler::eligible(const Device& d, std::uint32_t tenant, std::uint32_t pool, std::uint32_t fallback) const noexcept {
    if (pool != 0) {  // its pool, or its fallback pool while every device of its pool is open
        const std::uint32_t use = fallback != 0 && pool < pool_down_.size() && pool_down_[pool] ? fallback : pool;
        if (d.pool != use) return false;
    }
    if (group_of(tenant) == 0) return d.tenants.empty();
    return std::find(d.tenants.begin(), d.tenants.end(), tenant) != d.tenants.end();
}

std::uint32_t Scheduler::open_batch(std::uint32_t device) {
    std::uint32_t b;
    if (!free_batches_.empty()) {
        b = free_batches_.back();
        free_batches_.pop_back();
    } else {
        b = static_cast<std::uint32_t>(batches_.size());
        batches_.emplace_back();
    }
    batches_[b] = Batch{};
    batches_[b].device = device;
    batches_[b].counted = !continuous_;
    Device& d = devices_[device];
    if (!continuous_) ++d.inflight_batches;
    ++d.dispatched_batches;
    if (d.breaker == Breaker::HalfOpen) {
        d.probe_out = true;
        batches_[b].probe = true;
    }
    ++counters_.batches;
    step_batch_[device] = static_cast<std::uint32_t>(step_batches_.size());
    step_batches_.push_back(b);
    return b;
}

void Scheduler::dispatch(Handle h, std::uint32_t b, double util, double now, std::uint8_t kind) {
    if (slab_[h].state == State::Queued) {  // (a migrant is already in flight)
#if defined(__GNUC__)
        // The next request placement reads is likely the new head of this queue. For the
        // normal ready heap that is one of the top's children: fetch their records while
        // the top is erased. Otherwise fetch the new head's once the erase is done, while
        // the rest of this dispatch runs.
        const bool ahead =
            !fair_on_ && slab_[h].sched_class == SchedClass::Normal && !ready_.empty() && ready_.top().handle == h;
        if (ahead) {
            const auto* v = ready_.front_begin();
            const std::size_t last = std::min<std::size_t>(ready_.front_size(), 5);
            for (std::size_t c = 1; c < last; ++c) __builtin_prefetch(&slab_[v[c].handle]);
        }
#endif
        erase_ready(h);
#if defined(__GNUC__)
        if (ahead) {
            // (fetched above)
        } else if (slab_[h].sched_class == SchedClass::Normal) {
            const Handle next = normal_head();
            if (next != kNoHandle) __builtin_prefetch(&slab_[next]);
        } else {
            const ReadyQueue& q = queue_of(slab_[h]);
            if (!q.empty()) __builtin_prefetch(&slab_[q.top().handle]);
        }
#endif
        --queued_;
        ++in_flight_;
        pending(slab_[h].tenant, false);
    }
    RequestExt& x = ext_of(h);
    Request& r = slab_[h];
    Batch& batch = batches_[b];
    Device& d = devices_[batch.device];
    r.state = State::InFlight;
    r.slot = b;
    x.dev_prev = kNoHandle;
    x.dev_next = d.inflight_head;
    if (d.inflight_head != kNoHandle) ext_[slab_[d.inflight_head].ext].dev_prev = h;
    d.inflight_head = h;
    x.util = util;
    const std::int64_t tokens = static_cast<std::int64_t>(r.prompt_tokens) + static_cast<std::int64_t>(r.max_new_tokens);
    ++batch.remaining;
    ++batch.size;
    batch.tokens += tokens;
    batch.prompt += r.prompt_tokens;
    if (r.max_new_tokens > batch.max_new) batch.max_new = r.max_new_tokens;
    batch.work += work_per_token(r.request_class) * static_cast<double>(tokens);
    if (batch.size == 1) batch.dispatched_at = now;
    if (kind == 2) batch.migrant = true;
    if (!r.batchable) batch.solo = true;
    ++d.inflight_requests;
    ++d.dispatched_requests;
    d.placed_util += util;
    d.kv_used += tokens;
    if (continuous_) {
        --step_slots_[batch.device];
        if (step_kv_[batch.device] >= 0) step_kv_[batch.device] -= tokens;
    }
    class_enter(r, d, now);
    ++counters_.dispatched;
    if (kind == 0) ++counters_.placed_fitting;
    if (kind == 1) ++counters_.placed_fallback;
    // (filled in place: a temporary built on the stack byte by byte and then copied by
    // words stalls on store forwarding)
    StepMember& m = step_members_.emplace_back();
    m.step_batch = step_batch_[batch.device];
    m.handle = h;
    m.id = r.id;
    m.kind = kind;
    m.kept = true;
    m.charged = false;  // (fair_from is read only when charged)
}

void Scheduler::undispatch(StepMember& m, double now) {
    // Puts a request placed in this step back in its queue, as if it had not been placed.
    Request& r = slab_[m.handle];
    Batch& b = batches_[r.slot];
    Device& d = devices_[b.device];
    const std::int64_t tokens = static_cast<std::int64_t>(r.prompt_tokens) + static_cast<std::int64_t>(r.max_new_tokens);
    --b.size;
    if (b.size == 0) b.clean = false;  // a held batch teaches nothing (a trimmed one still does)
    b.tokens -= tokens;
    b.prompt -= r.prompt_tokens;
    --d.dispatched_requests;
    --counters_.dispatched;
    --(m.kind == 0 ? counters_.placed_fitting : counters_.placed_fallback);
    if (b.size == 0) {
        --d.dispatched_batches;
        --counters_.batches;
    }
    off_device(m.handle);
    // Fair share: its charge is given back and it is queued again without a lift, so
    // its tenant's counter is as if it had not been placed; hold_batches then takes the
    // virtual time back to what the kept dispatches made it.
    if (m.charged) fair_charge(r, -1.0);
    make_ready(m.handle, now, /*lift=*/false);
    m.kept = false;
}

void Scheduler::emit_step(StepOutput& out) {
    // Batches in the order they were opened (those held back to fill left out); members
    // grouped stably by batch, so they keep the order they were placed in (migrants
    // first, then policy order).
    out.batch_offsets.push_back(0);
    std::size_t off = 0;
    cursor_.assign(step_batches_.size(), 0);
    for (std::size_t i = 0; i < step_batches_.size(); ++i) {
        const Batch& b = batches_[step_batches_[i]];
        step_batch_[b.device] = kNoIndex;
        step_solo_[b.device] = 0;
        if (b.size == 0) continue;  // held back
        out.batch_device.push_back(b.device);
        cursor_[i] = off;
        off += b.size;
        out.batch_offsets.push_back(off);
    }
    out.request_ids.resize(off);
    for (const StepMember& m : step_members_)
        if (m.kept) out.request_ids[cursor_[m.step_batch]++] = m.id;
}

std::uint32_t Scheduler::batch_limit(const Device& d) const noexcept {
    if (!cfg_.dynamic_batching || cfg_.batching.latency_target <= 0.0) return cfg_.max_batch_size;
    return static_cast<std::uint32_t>(d.batch_limit);
}

bool Scheduler::device_closed(std::uint32_t dev) const noexcept {
    // Can take no further batchable request in this step.
    if (step_solo_[dev]) return true;
    const Device& d = devices_[dev];
    const std::uint32_t sb = step_batch_[dev];
    if (d.breaker == Breaker::Open) return true;
    if (d.breaker == Breaker::HalfOpen && (sb == kNoIndex ? d.probe_out : continuous_)) return true;
    if (continuous_) return step_slots_[dev] <= 0;  // (-1: not reported, takes nothing)
    if (sb == kNoIndex) return d.inflight_batches >= d.max_inflight_batches;
    return batches_[step_batches_[sb]].size >= batch_limit(d);
}

bool Scheduler::in_time(const Device& d, const Request& r) const noexcept {
    // With a seeded service model and a deadline: the request, alone, ends in time there.
    if (!d.service.known() || !std::isfinite(r.deadline)) return true;
    return now_ + d.service.estimate(static_cast<double>(r.prompt_tokens), static_cast<double>(r.max_new_tokens), 1.0) /
                      d.clock_scale <=
           r.deadline;
}

void Scheduler::check_room(std::uint32_t tenant, std::uint64_t n) const {
    // Back-pressure (Config.max_queued, max_queued_per_tenant): nothing is accepted.
    const std::uint64_t total = waiting_ + queued_ + retrying_;
    if (cfg_.max_queued > 0 && total + n > cfg_.max_queued)
        throw QueueFull("queue full: " + std::to_string(total) + " requests are waiting, queued or retrying and " +
                        std::to_string(n) + " more would exceed max_queued = " + std::to_string(cfg_.max_queued) +
                        " (nothing was accepted)");
    const std::uint64_t mine = tenant < tenant_pending_.size() ? tenant_pending_[tenant] : 0;
    if (cfg_.max_queued_per_tenant > 0 && mine + n > cfg_.max_queued_per_tenant)
        throw QueueFull("queue full for tenant " + std::to_string(tenant) + ": it has " + std::to_string(mine) +
                        " requests waiting, queued or retrying and " + std::to_string(n) +
                        " more would exceed max_queued_per_tenant = " + std::to_string(cfg_.max_queued_per_tenant) +
                        " (nothing was accepted)");
}

double Scheduler::next_uniform() noexcept {
    // splitmix64 (Steele, Lea, Flood 2014), top 53 bits as a double in [0, 1).
    std::uint64_t z = (rng_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return static_cast<double>(z >> 11) * 0x1.0p-53;
}

double Scheduler::retry_delay(std::uint32_t retry) noexcept {
    // docs/policies.md, retries: min(cap, base x 2^(k-1)) x (1 + u) / 2.
    if (cfg_.retry_base <= 0.0) return 0.0;
    const double raw = cfg_.retry_base * std::ldexp(1.0, static_cast<int>(std::min<std::uint32_t>(retry - 1u, 1000u)));
    const double capped = std::min(cfg_.retry_cap, raw);
    return capped * (1.0 + next_uniform()) / 2.0;
}

double Scheduler::work_per_token(std::uint32_t request_class) const noexcept {
    const bool seen = request_class < classes_.size() && classes_[request_class].est.seen();
    return seen ? classes_[request_class].est.estimate() : cfg_.placement.default_work_per_token;
}

double Scheduler::service_estimate(const Device& d, double prompt, double steps, double batch,
                                   double work) const noexcept {
    // docs/batching.md: the device's service model when seeded; otherwise the invariant
    // work of the batch (util_est x tokens) on this device's capacity and clock.
    if (d.service.known()) return d.service.estimate(prompt, steps, batch) / d.clock_scale;
    return work / (d.capacity_orig / kCapacityScale * d.clock_scale);
}

double Scheduler::estimate_service(std::uint32_t device, double prompt_tokens, double steps, double batch) const {
    std::lock_guard<std::mutex> lock(mu_);
    check_device(device);
    if (!(std::isfinite(prompt_tokens) && prompt_tokens >= 0.0))
        throw InvalidArgument("prompt_tokens must be a finite number >= 0, got " + format_number(prompt_tokens));
    if (!(std::isfinite(steps) && steps >= 0.0))
        throw InvalidArgument("steps must be a finite number >= 0, got " + format_number(steps));
    if (!(std::isfinite(batch) && batch >= 1.0))
        throw InvalidArgument("batch must be a finite number >= 1, got " + format_number(batch));
    const double work = cfg_.placement.default_work_per_token * (prompt_tokens + steps * batch);
    return service_estimate(devices_[device], prompt_tokens, steps, batch, work);
}

std::pair<std::uint32_t, double> Scheduler::preemption_info(std::uint64_t id) const {
    std::lock_guard<std::mutex> lock(mu_);
    const Handle h = find_live(id, "inspect");
    return {cold(slab_[h]).preemptions, cold(slab_[h]).progress};
}

void Scheduler::hold_batches(double now, StepOutput& out) {
    // Wait or go (docs/batching.md), batch mode with dynamic batching and a queue delay.
    const BatchingConfig& bc = cfg_.batching;
    if (continuous_ || !cfg_.dynamic_batching || bc.max_queue_delay <= 0.0) return;
    const std::uint64_t undone = counters_.held + counters_.trimmed;
    hold_or_trim(now, out);
    if (fair_on_ && counters_.held + counters_.trimmed != undone) {
        // The virtual time is the largest counter a dispatch started from: of those kept.
        double v = fair_vtime_before_step_;
        for (const StepMember& m : step_members_)
            if (m.kept && m.charged && m.fair_from > v) v = m.fair_from;
        fair_vtime_ = v;
    }
}

void Scheduler::hold_or_trim(double now, StepOutput& out) {
    const BatchingConfig& bc = cfg_.batching;
    for (std::size_t i = 0; i < step_batches_.size(); ++i) {
        Batch& b = batches_[step_batches_[i]];
        const Device& d = devices_[b.device];
        if (b.migrant || b.solo || b.size == 0) continue;
        if (b.size >= batch_limit(d) || (bc.max_batch_tokens > 0 && b.tokens >= bc.max_batch_tokens)) continue;
        double oldest = kInf, due = kInf;
        for (const StepMember& m : step_members_) {
            if (m.step_batch != i || !m.kept) continue;
            const Request& r = slab_[m.handle];
            oldest = std::min(oldest, r.arrival);
            due = std::min(due, r.deadline);
        }
        // Compared as instants, so that a server stepping at next_step_at finds it due.
        const double go_at = oldest + bc.max_queue_delay;
        if (now >= go_at) continue;  // waited long enough
        const double est = service_estimate(d, static_cast<double>(b.prompt), static_cast<double>(b.max_new),
                                            static_cast<double>(b.size), b.work);
        const double latest = due - est;  // latest start that meets its most urgent member
        if (now >= latest) continue;  // waiting any longer would break that member's slack
        std::uint32_t keep = 0;
        for (const std::uint32_t p : bc.preferred_batch_sizes)
            if (p <= b.size) keep = p;
        if (keep > 0) {
            // Cut to the largest preferred size it reaches: the last placed go back.
            if (keep == b.size) continue;
            std::uint32_t extra = b.size - keep;
            for (std::size_t k = step_members_.size(); k-- > 0 && extra > 0;) {
                StepMember& m = step_members_[k];
                if (m.step_batch != i || !m.kept) continue;
                undispatch(m, now);
                ++counters_.trimmed;
                --extra;
            }
            continue;
        }
        for (StepMember& m : step_members_)
            if (m.step_batch == i && m.kept) undispatch(m, now);
        ++counters_.held;
        ++out.held;
        out.next_step_at = std::min(out.next_step_at, std::min(go_at, latest));
    }
}

void Scheduler::preempt(double now, StepOutput& out) {
    // Continuous mode (docs/batching.md): the head of the deadline class, else of the
    // strict class, still queued after placement, evicts one normal-class request in
    // flight whose slot and KV make room for it: lowest priority first, then the least
    // work lost (latest dispatch), then the highest id. Repeats for the next head.
    for (std::size_t round = 0; round < devices_.size(); ++round) {
        Handle u = !dl_ready_.empty()   ? dl_ready_.top().handle
                   : !rt_ready_.empty() ? rt_ready_.top().handle
                                        : normal_head();
        if (u == kNoHandle) return;
        const Request& ur = slab_[u];
        const bool online_head = ur.sched_class == SchedClass::Normal;  // may evict background work only
        if (!ur.batchable) return;
        const std::int64_t need = static_cast<std::int64_t>(ur.prompt_tokens) + static_cast<std::int64_t>(ur.max_new_tokens);
        Handle victim = kNoHandle;
        std::uint32_t victim_dev = kNoIndex;
        for (std::uint32_t dev = 0; dev < devices_.size(); ++dev) {
            const Device& d = devices_[dev];
            if (ur.sched_class == SchedClass::Deadline ? dev != cold(ur).dl_device : !eligible(d, ur)) continue;
            // Not on a device the server did not report (slots -1) nor one whose breaker is not closed.
            if (step_solo_[dev] || d.breaker != Breaker::Closed || step_slots_[dev] < 0) continue;
            const std::int64_t kv_left = step_kv_[dev] >= 0 ? step_kv_[dev]
                                         : d.kv_budget == kUnlimitedTokens ? std::numeric_limits<std::int64_t>::max() / 2
                                                                           : d.kv_budget - d.kv_used;
            const std::uint32_t sb = step_batch_[dev];
            const std::uint32_t joiners = sb == kNoIndex ? kNoIndex : step_batches_[sb];
            const std::int64_t budget = cfg_.batching.max_batch_tokens;
            if (budget > 0 && joiners != kNoIndex && batches_[joiners].tokens + need > budget)
                continue;  // the step's token budget, not room, holds it back: no eviction helps
            for (Handle h = d.inflight_head; h != kNoHandle; h = ext_[slab_[h].ext].dev_next) {
                const Request& v = slab_[h];
                const bool bg = v.sched_class == SchedClass::Background;
                if ((!bg && (online_head || v.sched_class != SchedClass::Normal)) || v.slot == joiners) continue;
                const std::int64_t freed = static_cast<std::int64_t>(v.prompt_tokens) + static_cast<std::int64_t>(v.max_new_tokens);
                if (step_slots_[dev] + 1 <= 0 || kv_left + freed < need) continue;
                if (victim != kNoHandle) {
                    const Request& w = slab_[victim];
                    const bool wbg = w.sched_class == SchedClass::Background;
                    const bool better = bg != wbg                    ? bg
                                        : v.priority != w.priority ? v.priority < w.priority
                                        : batches_[v.slot].dispatched_at != batches_[w.slot].dispatched_at ? batches_[v.slot].dispatched_at > batches_[w.slot].dispatched_at
                                                                             : v.id > w.id;
                    if (!better) continue;
                }
                victim = h;
                victim_dev = dev;
            }
        }
        if (victim == kNoHandle) return;  // the head waits, and nothing behind it preempts
        Request& v = slab_[victim];
        Device& d = devices_[victim_dev];
        const std::int64_t freed = static_cast<std::int64_t>(v.prompt_tokens) + static_cast<std::int64_t>(v.max_new_tokens);
        out.preempted.push_back(v.id);
        out.preempted_from.push_back(victim_dev);
        ++counters_.preempted;
        ++d.preempted_requests;
        ext_[v.ext].progress += now - batches_[v.slot].dispatched_at;
        ++ext_[v.ext].preemptions;
        batches_[v.slot].clean = false;
        off_device(victim);
        make_ready(victim, now);
        ++step_slots_[victim_dev];
        if (step_kv_[victim_dev] >= 0) step_kv_[victim_dev] += freed;
        // The urgent request takes the room.
        const Request& r = slab_[u];
        if (!has_room(victim_dev, r)) return;  // (cannot happen: the victim freed enough)
        const std::uint32_t sb = step_batch_[victim_dev];
        const std::uint32_t b = sb == kNoIndex ? open_batch(victim_dev) : step_batches_[sb];
        dispatch(u, b, r.sched_class == SchedClass::Deadline ? cold(r).dl_bw : request_util(r, now), now, 0);
    }
}

bool Scheduler::place_background(double now) {
    // Background class (offline jobs): only when no online request is left queued, first
    // come first served, each on the best device it fits (no fallback); the first that
    // fits nowhere with room ends the step for the class. Returns whether it placed any.
    if (normal_head() != kNoHandle || !rt_ready_.empty() || !dl_ready_.empty()) return false;
    bool placed = false;
    while (!bg_ready_.empty()) {
        const Handle h = bg_ready_.top().handle;
        const Request& r = slab_[h];
        const double u = request_util(r, now);
        bool fitted = false;
        const std::uint32_t dev = choose_device(r, u, nullptr, 0.0, &fitted, nullptr, true);
        if (dev == kNoIndex || !fitted) break;
        const std::uint32_t sb = step_batch_[dev];
        const std::uint32_t b = sb == kNoIndex ? open_batch(dev) : step_batches_[sb];
        if (!r.batchable) step_solo_[dev] = 1;
        dispatch(h, b, u, now, 0);
        placed = true;
    }
    return placed;
}

bool Scheduler::has_room(std::uint32_t dev, const Request& r) const noexcept {
    // A candidate: open to r's tenant, room for r in this step (batch size, token budget;
    // in continuous mode the free slots reported), KV memory for r.
    const Device& d = devices_[dev];
    if (!eligible(d, r) || device_closed(dev)) return false;
    const std::uint32_t sb = step_batch_[dev];
    if (!r.batchable && (sb != kNoIndex || (continuous_ && d.inflight_requests > 0))) return false;
    const std::int64_t tokens = static_cast<std::int64_t>(r.prompt_tokens) + static_cast<std::int64_t>(r.max_new_tokens);
    const std::int64_t budget = cfg_.batching.max_batch_tokens;
    if (budget > 0 && sb != kNoIndex && batches_[step_batches_[sb]].tokens + tokens > budget) return false;
    if (continuous_ && step_kv_[dev] >= 0) return tokens <= step_kv_[dev];
    return d.kv_budget == kUnlimitedTokens || d.kv_used + tokens <= d.kv_budget;
}

bool Scheduler::within_bounds(const Device& d, const Request& r, const Device* bigger_than,
                              double min_capacity) const noexcept {
    // A device choose_device considers at all: open to r, bigger than `bigger_than` (a
    // misfit's device), at least min_capacity.
    if (bigger_than != nullptr && !(d.capacity > bigger_than->capacity)) return false;
    return d.capacity >= min_capacity && eligible(d, r);
}

bool Scheduler::any_in_time(const Request& r, const Device* bigger_than, double min_capacity) const noexcept {
    // Whether a device within choose_device's bounds would end r in time, whether or not
    // it has room.
    for (const std::uint32_t dev : device_order_) {
        const Device& d = devices_[dev];
        if (within_bounds(d, r, bigger_than, min_capacity) && in_time(d, r)) return true;
    }
    return false;
}

bool Scheduler::could_fit(const Request& r, double u, const Device* bigger_than, double min_capacity) const noexcept {
    // wait_for_fit: whether waiting can make r fit, i.e. r would fit some device within
    // choose_device's bounds once that device is idle (u x margin below its whole
    // capacity) and the device ends it in time. The per-token utilization estimate
    // treats prompt and output tokens alike, so it overrates a request with a long
    // prompt and a short output under a tight deadline, and such a request can fit no
    // device at all: waiting for one, it expired on an idle fleet.
    const double need = u * cfg_.placement.fit_margin;
    for (const std::uint32_t dev : device_order_) {
        const Device& d = devices_[dev];
        if (within_bounds(d, r, bigger_than, min_capacity) && need < d.capacity && in_time(d, r)) return true;
    }
    return false;
}

namespace {
// The share of a device's KV budget left once `tokens` more are placed (1 when unlimited).
double free_kv_share(const Device& d, std::int64_t tokens) noexcept {
    if (d.kv_budget == kUnlimitedTokens) return 1.0;
    return static_cast<double>(d.kv_budget - d.kv_used - tokens) / static_cast<double>(d.kv_budget > 0 ? d.kv_budget : 1);
}
}  // namespace

Scheduler::FitKey Scheduler::fit_key(std::uint32_t dev, double spare) const noexcept {
    // The request-independent part of the score (the headroom): within one KV budget,
    // score = headroom minus the request's own terms, equal for every device, so the
    // order is the score's.
    const Device& d = devices_[dev];
    const PlacementConfig& pc = cfg_.placement;
    const double room = pc.w_compute * (spare / kCapacityScale) + pc.w_memory * free_kv_share(d, 0);
    return FitKey{pc.energy_aware ? d.energy_per_token : 0.0, -room, order_pos_[dev]};
}

double Scheduler::spare_of(std::uint32_t dev) const noexcept {
    const Device& d = devices_[dev];
    return d.capacity - std::max(d.util.util_avg(), d.placed_util);
}

double Scheduler::fit_score(const Device& d, double spare, double u, std::int64_t tokens) const noexcept {
    const PlacementConfig& pc = cfg_.placement;
    return pc.w_compute * ((spare - u) / kCapacityScale) + pc.w_memory * free_kv_share(d, tokens);
}

void Scheduler::offer_fit(std::uint32_t dev, double spare, double u, std::int64_t tokens) noexcept {
    // A fitting candidate: kept if it beats the best of its KV class by fit_key.
    const FitKey key = fit_key(dev, spare);
    FitBest& b = kv_best_[kv_class_[dev]];
    if (b.dev == kNoIndex) kv_touched_.push_back(kv_class_[dev]);
    else if (!(key < b.key)) return;
    b.dev = dev;
    b.key = key;
    b.score = fit_score(devices_[dev], spare, u, tokens);
}

std::uint32_t Scheduler::take_best_fit() noexcept {
    // The best of the KV classes' best: lowest energy first with energy_aware, then the
    // score, then device order. Clears the offers.
    std::uint32_t best = kNoIndex;
    FitKey best_key{};
    double best_score = -kInf;
    for (const std::uint32_t k : kv_touched_) {
        FitBest& b = kv_best_[k];
        const bool better = best == kNoIndex || b.key.first < best_key.first ||
                            (b.key.first == best_key.first &&
                             (b.score > best_score || (b.score == best_score && b.key.pos < best_key.pos)));
        if (better) {
            best = b.dev;
            best_key = b.key;
            best_score = b.score;
        }
        b.dev = kNoIndex;
    }
    kv_touched_.clear();
    return best;
}

bool Scheduler::fits_now(std::uint32_t dev, const Request& r, double u, double min_capacity) const noexcept {
    // choose_device's test for a fitting device (no bigger_than: placement only).
    const Device& d = devices_[dev];
    if (!(d.capacity >= min_capacity) || !has_room(dev, r) || !in_time(d, r)) return false;
    return u * cfg_.placement.fit_margin < spare_of(dev);
}

void Scheduler::build_fit_heaps() {
    // (no allocation: each heap has room for all of its partition's devices)
    for (FitHeap& heap : fit_heaps_) heap.clear();
    for (FitHeap& heap : spare_heaps_) heap.clear();
    for (const std::uint32_t dev : open_devices_) {
        if (device_closed(dev)) continue;
        const double spare = spare_of(dev);
        fit_heaps_[fit_part_[dev]].push(dev, fit_key(dev, spare));
        spare_heaps_[fit_part_[dev]].push(dev, spare_key(dev, spare));
    }
    // Over every device, open or not (could_fit and the scan's in-time test look at all):
    // estimate(p, s, 1) / clock = (m0 s0 p + (m1 s1 + m2 s2) s) / clock.
    fit_time_prompt_ = fit_time_steps_ = 0.0;
    fit_time_prompt_lo_ = fit_time_steps_lo_ = kInf;
    fit_any_known_ = false;
    fit_all_known_ = true;
    std::fill(part_max_capacity_.begin(), part_max_capacity_.end(), -kInf);
    for (std::uint32_t dev = 0; dev < devices_.size(); ++dev) {
        const Device& d = devices_[dev];
        double& most = part_max_capacity_[fit_part_[dev]];
        most = std::max(most, d.capacity);
        if (!d.service.known()) {
            fit_all_known_ = false;
            continue;
        }
        const ServiceModel& m = d.service;
        fit_any_known_ = true;
        // (the bounds' relative margins cover the rounding of normal numbers only: a term
        // near the subnormal range makes them useless (upper infinite, lower 0), and the
        // scan decides)
        bool tiny = false;
        for (int k = 0; k < 3; ++k) {
            const double term = m.m[k] * m.seed[k];
            tiny = tiny || (term != 0.0 && !(term >= std::numeric_limits<double>::min() * 0x1p60));
        }
        const double per_prompt = m.m[0] * m.seed[0] / d.clock_scale;
        const double per_step = (m.m[1] * m.seed[1] + m.m[2] * m.seed[2]) / d.clock_scale;
        fit_time_prompt_ = tiny ? kInf : std::max(fit_time_prompt_, per_prompt);
        fit_time_steps_ = std::max(fit_time_steps_, per_step);
        fit_time_prompt_lo_ = tiny ? 0.0 : std::min(fit_time_prompt_lo_, per_prompt);
        fit_time_steps_lo_ = tiny ? 0.0 : std::min(fit_time_steps_lo_, per_step);
    }
    fit_heaps_on_ = true;
}

bool Scheduler::all_in_time(const Request& r) const noexcept {
    // Whether every device would end r in time (in_time), from build_fit_heaps' bounds:
    // each device's estimate is at most the bound (the 1e-9 margin covers the rounding of
    // the two ways of computing it), so the test never says yes where a device is late;
    // it may say no where none is (then the scan decides).
    if (!std::isfinite(r.deadline) || !fit_any_known_) return true;
    const double bound = fit_time_prompt_ * static_cast<double>(r.prompt_tokens) +
                         fit_time_steps_ * static_cast<double>(r.max_new_tokens);
    return now_ + bound * (1.0 + 1e-9) <= r.deadline;
}

bool Scheduler::none_in_time(const Request& r) const noexcept {
    // Whether no device would end r in time: every device has a seeded model and each
    // estimate is at least the lower bound (the 1e-9 margin as in all_in_time). May say
    // no where every device is late (then the scan decides).
    if (!std::isfinite(r.deadline) || !fit_all_known_) return false;
    const double bound = fit_time_prompt_lo_ * static_cast<double>(r.prompt_tokens) +
                         fit_time_steps_lo_ * static_cast<double>(r.max_new_tokens);
    return now_ + bound * (1.0 - 1e-9) > r.deadline;
}

bool Scheduler::could_fit_by_parts(const Request& r, double u, double min_capacity) const noexcept {
    // could_fit when every device is in time (all_in_time): some device open to r has
    // capacity >= min_capacity and above u x margin, so the largest of its partition has.
    const double need = u * cfg_.placement.fit_margin;
    for (std::size_t p = 0; p < part_max_capacity_.size(); ++p) {
        const double most = part_max_capacity_[p];
        if (most >= min_capacity && need < most && eligible(devices_[part_member_[p]], r)) return true;
    }
    return false;
}

void Scheduler::fit_heap_touch(std::uint32_t dev) noexcept {
    // After a placement on dev: its keys went down, or it is full.
    if (!fit_heaps_on_) return;
    FitHeap& heap = fit_heaps_[fit_part_[dev]];
    FitHeap& by_spare = spare_heaps_[fit_part_[dev]];
    if (!heap.contains(dev)) return;
    if (device_closed(dev)) {
        heap.erase(dev);
        by_spare.erase(dev);
        return;
    }
    const double spare = spare_of(dev);
    heap.update(dev, fit_key(dev, spare));
    by_spare.update(dev, spare_key(dev, spare));
}

template <class Pred>
std::uint32_t Scheduler::first_in_heap(const FitHeap& heap, Pred pred) noexcept {
    // The first device in the heap's order that passes pred, best first over the heap's
    // tree (a node's children come after it); kNoIndex if none does; kUnsure if the
    // first kWalk devices did not and the heap has more.
    const FitHeap::View v = heap.entries();
    constexpr std::size_t kWalk = 8;
    std::uint32_t frontier[1 + 3 * kWalk + 1];
    std::size_t n = 0;
    if (v.size() > 0) frontier[n++] = 0;
    for (std::size_t seen = 0; n > 0; ++seen) {
        if (seen == kWalk) return kUnsure;
        std::size_t at = 0;
        for (std::size_t k = 1; k < n; ++k)
            if (v[frontier[k]].key < v[frontier[at]].key) at = k;
        const std::uint32_t i = frontier[at];
        frontier[at] = frontier[--n];
        if (pred(v[i].handle)) return v[i].handle;
        for (std::size_t c = 4 * std::size_t{i} + 1; c <= 4 * std::size_t{i} + 4 && c < v.size(); ++c)
            frontier[n++] = static_cast<std::uint32_t>(c);
    }
    return kNoIndex;
}

std::uint32_t Scheduler::choose_by_fit_heaps(const Request& r, double u, double min_capacity) noexcept {
    // The fitting device choose_device's scan would choose, from the heaps; kNoIndex if r
    // fits none; kUnsure if a heap could not tell within a few devices (then the scan).
    const std::int64_t tokens = static_cast<std::int64_t>(r.prompt_tokens) + static_cast<std::int64_t>(r.max_new_tokens);
    const double need = u * cfg_.placement.fit_margin;
    for (std::uint32_t p = 0; p < fit_heaps_.size(); ++p) {
        const FitHeap& heap = fit_heaps_[p];
        if (heap.empty() || !eligible(devices_[heap.top().handle], r)) continue;  // (one rule per partition)
        if (!(need < -spare_heaps_[p].top().key.first)) continue;  // its most spare is too little
        const std::uint32_t dev = first_in_heap(heap, [&](std::uint32_t x) { return fits_now(x, r, u, min_capacity); });
        if (dev == kUnsure) {
            (void)take_best_fit();  // (drops the offers)
            return kUnsure;
        }
        if (dev != kNoIndex) offer_fit(dev, spare_of(dev), u, tokens);
    }
    return take_best_fit();
}

std::uint32_t Scheduler::fallback_by_spare_heaps(const Request& r, double min_capacity) const noexcept {
    // For a request that fits no device, when every device is in time (no deadline, or
    // all_in_time: choose_device's answer is then its fallback): the device with room with
    // the most spare, device order on ties. kUnsure as choose_by_fit_heaps.
    return best_by_spare_heaps(
        r, [&](std::uint32_t x) { return devices_[x].capacity >= min_capacity && has_room(x, r); });
}

std::uint32_t Scheduler::unfit_by_heaps(const Request& r, double u, double min_capacity, bool* wait,
                                        bool timely) const noexcept {
    // choose_device's answer for a request that fits no device when every device is in
    // time (timely: all_in_time) or none is (none_in_time), from the heaps; kUnsure: the
    // scan decides. The device with room with the most spare (the scan's fallback, or,
    // with every device late, its `late`: no device in time, so defer_late has nothing to
    // wait for); none if no device has room. With a deadline and wait_for_fit, r waits
    // instead, unless every device is in time and r would fit no device even idle: then
    // it takes the idle seeded device with the most spare, if there is one.
    const std::uint32_t fallback = fallback_by_spare_heaps(r, min_capacity);
    if (fallback == kUnsure || fallback == kNoIndex || !std::isfinite(r.deadline) || wait == nullptr ||
        !cfg_.placement.wait_for_fit)
        return fallback;
    if (!timely) {
        *wait = true;
        return kNoIndex;
    }
    const std::uint32_t idle = best_by_spare_heaps(r, [&](std::uint32_t x) {
        const Device& d = devices_[x];
        return d.capacity >= min_capacity && has_room(x, r) && d.inflight_requests == 0 &&
               step_batch_[x] == kNoIndex && d.service.known();
    });
    if (idle == kUnsure) return kUnsure;
    if (idle != kNoIndex && !could_fit_by_parts(r, u, min_capacity)) return idle;
    *wait = true;
    return kNoIndex;
}

template <class Pred>
std::uint32_t Scheduler::best_by_spare_heaps(const Request& r, Pred pred) const noexcept {
    // The device passing pred with the most spare, device order on ties: the first to
    // pass in each partition's spare heap (among those open to r), the best of those.
    // kUnsure as first_in_heap.
    std::uint32_t best = kNoIndex;
    double best_spare = -kInf;
    for (std::uint32_t p = 0; p < spare_heaps_.size(); ++p) {
        const FitHeap& heap = spare_heaps_[p];
        if (heap.empty() || !eligible(devices_[heap.top().handle], r)) continue;
        const std::uint32_t dev = first_in_heap(heap, pred);
        if (dev == kUnsure) return kUnsure;
        if (dev == kNoIndex) continue;
        const double spare = spare_of(dev);
        if (best == kNoIndex || spare > best_spare || (spare == best_spare && order_pos_[dev] < order_pos_[best])) {
            best = dev;
            best_spare = spare;
        }
    }
    return best;
}

std::uint32_t Scheduler::choose_device(const Request& r, double u, const Device* bigger_than, double min_capacity,
                                       bool* fitted, bool* wait, bool listed) {
    // docs/placement.md. "In time": the device's service model (when seeded) says r alone
    // ends by its deadline. A device r fits must be in time; the fallback prefers devices
    // in time; with defer_late, if the only devices with room would finish r late while
    // another device open to it would not, r waits for that one (*wait) instead. With
    // wait_for_fit, a request with a deadline that fits no device with room waits, unless
    // it would fit none even idle (could_fit): then it takes an idle device whose service
    // model says it ends r in time (the one with the most spare capacity), and waits only
    // if there is none.
    const PlacementConfig& pc = cfg_.placement;
    const std::int64_t tokens = static_cast<std::int64_t>(r.prompt_tokens) + static_cast<std::int64_t>(r.max_new_tokens);
    std::uint32_t best = kNoIndex, fallback = kNoIndex, late = kNoIndex, idle = kNoIndex;
    double fallback_spare = -kInf, late_spare = -kInf, idle_spare = -kInf;
    bool any_timely = false;
    // Listed (placement): only the devices that had room when the step's list was made
    // (a closed device has no room for anyone; any_timely, which counts devices without
    // room too, is completed by any_in_time below when it matters).
    if (listed && !open_listed_) {
        open_devices_.clear();
        for (const std::uint32_t dev : device_order_)
            if (!device_closed(dev)) open_devices_.push_back(dev);
        open_listed_ = true;
    }
    // A step's placement that has scanned a long list a few times goes to the heaps
    // (fit_heaps_): the same choice for less. The scan below still runs for a request the
    // heaps cannot settle, and for one that fits nowhere and has a deadline that some
    // devices might meet and others miss (all_in_time, none_in_time: its fallback then
    // depends on which devices are in time).
    if (listed && fit_phase_ && bigger_than == nullptr && !fit_heaps_.empty()) {
        if (!fit_heaps_on_ && ++fit_scans_ > kFitScansFirst && open_devices_.size() >= kFitHeapFrom) build_fit_heaps();
        if (fit_heaps_on_) {
            // (no device in time: nothing fits either, a fitting device must end r in time)
            const bool none_timely = none_in_time(r);
            std::uint32_t dev = none_timely ? kNoIndex : choose_by_fit_heaps(r, u, min_capacity);
            const bool fits = dev != kNoIndex && dev != kUnsure;
            const bool timely = dev == kNoIndex && !none_timely && all_in_time(r);
            if (dev == kNoIndex && (timely || none_timely)) {
                bool waits = false;
                dev = unfit_by_heaps(r, u, min_capacity, wait != nullptr ? &waits : nullptr, timely);
                if (dev != kUnsure) {
                    *fitted = false;
                    if (wait != nullptr) *wait = waits;
                    return dev;
                }
            }
            if (fits) {
                *fitted = true;
                if (wait != nullptr) *wait = false;
                return dev;
            }
        }
    }
    const std::vector<std::uint32_t>& order = listed ? open_devices_ : device_order_;
    std::size_t kept = 0;  // (listed: devices found closed are dropped as the scan goes)
    for (std::size_t i = 0; i < order.size(); ++i) {
        const std::uint32_t dev = order[i];
        if (listed) {
            if (device_closed(dev)) continue;
            open_devices_[kept++] = dev;
        }
        const Device& d = devices_[dev];
        if (!within_bounds(d, r, bigger_than, min_capacity)) continue;
        const bool timely = in_time(d, r);
        any_timely = any_timely || timely;
        if (!has_room(dev, r)) continue;
        const double spare = spare_of(dev);
        if (u * pc.fit_margin < spare && timely) {
            offer_fit(dev, spare, u, tokens);  // (two levels: take_best_fit below)
        } else if (timely) {
            if (spare > fallback_spare) {
                fallback = dev;
                fallback_spare = spare;
            }
            // (idle: nothing in flight, and no batch of this step yet; in time by a seeded
            // service model, not for want of one)
            if (d.inflight_requests == 0 && step_batch_[dev] == kNoIndex && d.service.known() && spare > idle_spare) {
                idle = dev;
                idle_spare = spare;
            }
        } else if (spare > late_spare) {
            late = dev;
            late_spare = spare;
        }
    }
    if (listed) open_devices_.resize(kept);
    best = take_best_fit();
    *fitted = best != kNoIndex;
    if (wait != nullptr) *wait = false;
    if (best != kNoIndex) return best;
    if (cfg_.placement.wait_for_fit && std::isfinite(r.deadline) && wait != nullptr &&
        (fallback != kNoIndex || late != kNoIndex)) {
        // It waits in the queue for a device it fits (or expires); but one that would fit
        // no device even idle runs on an idle device that its service model says ends it
        // in time, if there is one.
        if (idle != kNoIndex && !could_fit(r, u, bigger_than, min_capacity)) return idle;
        *wait = true;
        return kNoIndex;
    }
    if (fallback != kNoIndex) return fallback;
    if (late != kNoIndex && wait != nullptr && cfg_.placement.defer_late &&
        (any_timely || (listed && any_in_time(r, bigger_than, min_capacity)))) {
        *wait = true;
        return kNoIndex;
    }
    return late;
}

void Scheduler::place_deadline(double now) {
    // Deadline-class requests, earliest deadline first, each on the device that admitted
    // it. One whose device has no room waits, and so do those behind it.
    while (!dl_ready_.empty()) {
        const Handle h = dl_ready_.top().handle;
        const Request& r = slab_[h];
        if (!has_room(cold(r).dl_device, r)) break;
        const std::uint32_t sb = step_batch_[cold(r).dl_device];
        const std::uint32_t b = sb == kNoIndex ? open_batch(cold(r).dl_device) : step_batches_[sb];
        if (!r.batchable) step_solo_[cold(r).dl_device] = 1;
        dispatch(h, b, cold(r).dl_bw, now, 0);
    }
}

void Scheduler::readmit_deadline(std::uint32_t dev) {
    // Queued work bound to a device is the deadline class's admitted bandwidth. When the
    // device's capacity drops below what it admitted, its queued deadline requests, latest
    // deadline first, move to the device open to their tenant with the most deadline
    // bandwidth left that can take them (device order on ties), until it is within limit.
    Device& d = devices_[dev];
    const double limit_share = cfg_.placement.dl_bandwidth_limit;
    if (d.dl_bw <= limit_share * d.capacity) return;
    handle_scratch_.clear();
    dl_ready_.for_each([&](const ReadyQueue::Entry& e) {
        if (cold(slab_[e.handle]).dl_device == dev) handle_scratch_.push_back(e.handle);
    });
    std::sort(handle_scratch_.begin(), handle_scratch_.end(), [this](Handle a, Handle b) {
        const Request& x = slab_[a];
        const Request& y = slab_[b];
        return x.deadline != y.deadline ? x.deadline > y.deadline : x.id > y.id;
    });
    for (const Handle h : handle_scratch_) {
        if (d.dl_bw <= limit_share * d.capacity) break;
        Request& r = slab_[h];
        ++counters_.misfits;
        std::uint32_t best = kNoIndex;
        double best_room = -kInf;
        for (const std::uint32_t to : device_order_) {
            const Device& e = devices_[to];
            if (to == dev || !eligible(e, r)) continue;
            const double room = limit_share * e.capacity - e.dl_bw - cold(r).dl_bw;
            if (room >= 0.0 && room > best_room) {
                best = to;
                best_room = room;
            }
        }
        if (best == kNoIndex) continue;
        d.dl_bw -= cold(r).dl_bw;
        if (d.dl_bw < 1e-9) d.dl_bw = 0.0;
        devices_[best].dl_bw += cold(r).dl_bw;
        ext_[r.ext].dl_device = best;
        ++counters_.readmitted;
    }
}

void Scheduler::migrate_misfits(double now, StepOutput& out) {
    // Linux's misfit rule: an in-flight request whose utilization no longer fits its
    // device's (reduced) capacity moves to a bigger device that it fits and that has room,
    // if there is one. Only devices whose capacity dropped since the last step are checked;
    // their queued deadline-class requests are re-admitted first (readmit_deadline).
    for (std::uint32_t dev = 0; dev < devices_.size(); ++dev) {
        Device& d = devices_[dev];
        if (!d.misfit_check) continue;
        d.misfit_check = false;
        readmit_deadline(dev);
        Handle h = d.inflight_head;
        while (h != kNoHandle) {
            Request& r = slab_[h];
            const Handle next = cold(r).dev_next;
            if (!(cold(r).util * cfg_.placement.fit_margin < d.capacity)) {
                ++counters_.misfits;
                bool fitted = false;
                const std::uint32_t to = choose_device(r, cold(r).util, &d, 0.0, &fitted, nullptr, false);
                if (to != kNoIndex && fitted) {
                    batches_[r.slot].clean = false;
                    leave_batch(r);
                    if (r.sched_class == SchedClass::Deadline) {  // its bandwidth moves with it
                        d.dl_bw -= cold(r).dl_bw;
                        if (d.dl_bw < 1e-9) d.dl_bw = 0.0;
                        devices_[to].dl_bw += cold(r).dl_bw;
                        ext_[r.ext].dl_device = to;
                    }
                    const std::uint32_t sb = step_batch_[to];
                    const std::uint32_t b = sb == kNoIndex ? open_batch(to) : step_batches_[sb];
                    if (!r.batchable) step_solo_[to] = 1;
                    dispatch(h, b, cold(r).util, now, 2);
                    ++counters_.migrated;
                    out.migrated.push_back(r.id);
                    out.migrated_from.push_back(dev);
                }
            }
            h = next;
        }
    }
}

void Scheduler::place_by_fitness(double now) {
    // docs/placement.md: each request, in policy order, goes to the best-scoring device
    // that has room for it, is open to its tenant, has KV memory for it and fits it
    // (util * margin < spare); if none fits, to the one with the most spare capacity among
    // those with room and memory (counted as a fallback). In a symmetric group the first
    // device with room takes it. If no device of its group has room and memory for a
    // request, its group is done for this step: nothing of that group overtakes it, and
    // other groups (other tenants' slices) go on.
    std::uint64_t open = 0;  // queued requests of groups not yet blocked in this step
    for (std::size_t g = 0; g < group_devices_.size(); ++g) {
        group_blocked_[g] = 0;
        group_skipped_[g] = 0;
        open += group_queued_[g];
    }
    skipped_.clear();
    fit_phase_ = true;  // (choose_device may move to the heaps: build_fit_heaps)
    fit_heaps_on_ = false;
    fit_scans_ = 0;
    for (Handle h = next_ready(); h != kNoHandle && open > 0; h = next_ready()) {
        const Request& r = slab_[h];
        const std::uint32_t group = group_of(r.tenant);
        if (group_blocked_[group]) {
            pass_over(r, h);
            continue;
        }
        const double u = request_util(r, now);
        bool fitted = false, wait = false;
        std::uint32_t dev;
        const auto general = [&] {
            if (r.sched_class == SchedClass::Strict) {
                // RT-like: a device with capacity >= uclamp_min; if none has room, strict
                // priority alone decides (any device).
                dev = choose_device(r, u, nullptr, cold(r).uclamp_min * kCapacityScale, &fitted, &wait, true);
                if (dev == kNoIndex && !wait) dev = choose_device(r, u, nullptr, 0.0, &fitted, &wait, true);
            } else {
                dev = choose_device(r, u, nullptr, 0.0, &fitted, &wait, true);
            }
        };
        if (group_symmetric_[group]) {
            // Symmetric group: the devices are alike, so the first with room takes r (a
            // device's batch fills before the next device opens one). In continuous mode,
            // where there is no batch to fill, only if r fits it: else the general rule
            // decides (the best fitting device, else the fallback, or waiting with
            // wait_for_fit), as on any fleet.
            dev = choose_symmetric(group, r);
            if (dev != kNoIndex) {
                fitted = u * cfg_.placement.fit_margin < spare_of(dev);
                if (!fitted && continuous_) general();
            }
        } else {
            general();
        }
        if (wait) {  // only too-slow devices have room: it waits for one in time
            pass_over(r, h);
            --open;
            ++group_skipped_[group];
            ++counters_.deferred;
            continue;
        }
        if (dev == kNoIndex && cold(r).pool != 0) {  // its pool is full: it waits, holding back no one
            pass_over(r, h);
            --open;
            ++group_skipped_[group];
            continue;
        }
        if (dev == kNoIndex) {  // its group is full: keep the order within the group
            group_blocked_[group] = 1;
            open -= group_queued_[group] - group_skipped_[group];  // (those passed over are counted already)
            continue;  // (h is still at the top: the next round skips it)
        }
        const std::uint32_t sb = step_batch_[dev];
        const std::uint32_t b = sb == kNoIndex ? open_batch(dev) : step_batches_[sb];
        if (!r.batchable) step_solo_[dev] = 1;
        dispatch(h, b, u, now, fitted ? 0 : 1);
        fit_heap_touch(dev);
        if (fair_on_ && r.sched_class == SchedClass::Normal) {
            StepMember& m = step_members_.back();
            m.charged = true;
            m.fair_from = fair_.counter(r.tenant);
            fair_charge(r, 1.0);
        }
        --open;
    }
    fit_phase_ = false;
    fit_heaps_on_ = false;
    for (const auto& [h, key] : skipped_) put_back(h, key);
}

void Scheduler::check_device(std::uint32_t device) const {
    if (device >= devices_.size())
        throw InvalidArgument("unknown device index " + std::to_string(device) + " (the scheduler has " +
                              std::to_string(devices_.size()) + " devices)");
}

void Scheduler::set_clock(std::uint32_t device, double cur, double max, double now) {
    std::lock_guard<std::mutex> lock(mu_);
    const double t = advance_clock(now);
    check_device(device);
    Device& d = devices_[device];
    const double m = std::isnan(max) ? d.max_clock : max;
    if (!std::isfinite(m) || m <= 0.0)
        throw InvalidArgument("max clock must be a finite number > 0, got " + format_number(max));
    if (!(cur > 0.0 && cur <= m))
        throw InvalidArgument("current clock must be in (0, max clock " + format_number(m) + "], got " +
                              format_number(cur));
    if (!std::isnormal(cur / m))  // (a scale of 0 would leave the device no capacity at all)
        throw InvalidArgument("current clock " + format_number(cur) + " is too small against max clock " +
                              format_number(m) + ": their ratio underflows to 0");
    now_ = t;
    touch(d, t);  // the time so far counts at the old clock
    for (Handle h = d.inflight_head; h != kNoHandle; h = ext_[slab_[h].ext].dev_next) class_leave(slab_[h], d, t);
    d.max_clock = m;
    d.clock_scale = cur / m;
    for (Handle h = d.inflight_head; h != kNoHandle; h = ext_[slab_[h].ext].dev_next) class_enter(slab_[h], d, t);
    const double before = d.capacity;
    refresh_capacity(d);
    if (d.capacity < before) d.misfit_check = true;
}

void Scheduler::set_pressure(std::uint32_t device, double pressure, double now) {
    std::lock_guard<std::mutex> lock(mu_);
    const double t = advance_clock(now);
    check_device(device);
    if (!(pressure >= 0.0 && pressure < 1.0))
        throw InvalidArgument("pressure must be in [0, 1), got " + format_number(pressure));
    now_ = t;
    Device& d = devices_[device];
    touch(d, t);
    d.pressure = pressure;
    const double before = d.capacity;
    refresh_capacity(d);
    if (d.capacity < before) d.misfit_check = true;
}

UtilEst Scheduler::class_estimate(std::uint32_t request_class) const {
    std::lock_guard<std::mutex> lock(mu_);
    return request_class < classes_.size() ? classes_[request_class].est : UtilEst{};
}

double Scheduler::class_util(std::uint32_t request_class) const {
    std::lock_guard<std::mutex> lock(mu_);
    if (request_class >= classes_.size()) return 0.0;
    PeltSignal s = classes_[request_class].util;  // decayed to now_ on a copy
    s.update(now_, classes_[request_class].running, pelt_);
    return s.util_avg();
}

double Scheduler::class_share(const Device& d) const noexcept {
    // One in-flight request's share of its device's invariant occupancy signal (touch()).
    const double slots = static_cast<double>(cfg_.max_batch_size) * static_cast<double>(d.max_inflight_batches);
    return d.clock_scale * d.capacity_orig / slots;
}

void Scheduler::class_enter(const Request& r, const Device& d, double now) noexcept {
    ClassState& c = classes_[r.request_class];
    c.util.update(now, c.running, pelt_);
    c.running += class_share(d);
}

void Scheduler::class_leave(const Request& r, const Device& d, double now) noexcept {
    ClassState& c = classes_[r.request_class];
    c.util.update(now, c.running, pelt_);
    c.running -= class_share(d);
    if (c.running < 1e-9) c.running = 0.0;  // rounding left over when it empties
}

// ---------------------------------------------------------------- endings

void Scheduler::set_outcome(std::uint64_t id, Outcome how) {
    const std::uint64_t i = id - 1;
    std::uint64_t& w = outcomes_[i / 32];
    const unsigned shift = static_cast<unsigned>(i % 32) * 2;
    w = (w & ~(std::uint64_t{3} << shift)) | (static_cast<std::uint64_t>(how) << shift);
}

Outcome Scheduler::outcome(std::uint64_t id) const noexcept {
    const std::uint64_t i = id - 1;
    return static_cast<Outcome>((outcomes_[i / 32] >> (static_cast<unsigned>(i % 32) * 2)) & 3u);
}

void Scheduler::leave_batch(Request& r) {
    Batch& b = batches_[r.slot];
    Device& d = devices_[b.device];
    touch(d, now_);
    class_leave(r, d, now_);
    RequestExt& x = ext_[r.ext];
    d.placed_util -= x.util;
    if (d.placed_util < 1e-9) d.placed_util = 0.0;  // rounding left over when it empties
    d.kv_used -= static_cast<std::int64_t>(r.prompt_tokens) + static_cast<std::int64_t>(r.max_new_tokens);
    if (x.dev_prev != kNoHandle)
        ext_[slab_[x.dev_prev].ext].dev_next = x.dev_next;
    else
        d.inflight_head = x.dev_next;
    if (x.dev_next != kNoHandle) ext_[slab_[x.dev_next].ext].dev_prev = x.dev_prev;
    x.dev_prev = x.dev_next = kNoHandle;
    --d.inflight_requests;
    if (--b.remaining == 0) {
        if (b.counted) --d.inflight_batches;
        if (b.clean && b.counted) batch_finished(b, d);
        if (b.probe && d.breaker == Breaker::HalfOpen) d.probe_out = false;  // no verdict: probe again
        free_batches_.push_back(r.slot);
    }
    r.slot = kNoIndex;
}

std::uint32_t Scheduler::detach(Handle h, Outcome how) {
    Request& r = slab_[h];
    switch (r.state) {
        case State::Waiting:
            --waiting_;
            pending(r.tenant, false);
            break;
        case State::Queued:
            --queued_;
            erase_ready(h);
            pending(r.tenant, false);
            break;
        case State::InFlight:
            --in_flight_;
            if (how != Outcome::Completed) batches_[r.slot].clean = false;
            leave_batch(r);
            break;
        case State::Retrying:
            --retrying_;
            retries_.erase(h);
            pending(r.tenant, false);
            break;
        case State::Free: break;
    }
    switch (how) {
        case Outcome::Completed: ++counters_.completed; break;
        case Outcome::Failed: ++counters_.failed; break;
        case Outcome::Expired: ++counters_.expired; break;
        case Outcome::Cancelled: ++counters_.cancelled; break;
    }
    if (r.sched_class == SchedClass::Deadline) {
        Device& d = devices_[cold(r).dl_device];
        d.dl_bw -= cold(r).dl_bw;
        if (d.dl_bw < 1e-9) d.dl_bw = 0.0;  // rounding left over when it empties
    }
    set_outcome(r.id, how);
    ids_.erase(r.id, id_of());
    const std::uint32_t dependents = cold(r).dependents;
    r.state = State::Free;
    if (r.ext != kNoIndex) {
        free_ext_.push_back(r.ext);
        r.ext = kNoIndex;
    }
    free_handles_.push_back(h);
    return dependents;
}

void Scheduler::end(Handle h, Outcome how, std::string_view detail) {
    const std::uint64_t id = slab_[h].id;
    const std::uint32_t dependents = detach(h, how);
    if (how == Outcome::Completed)
        release_dependents(dependents);
    else
        fail_dependents(dependents, id, how, detail);
}

void Scheduler::free_edge(std::uint32_t e) noexcept {
    edges_[e].next = free_edge_;
    free_edge_ = e;
}

void Scheduler::release_dependents(std::uint32_t e) {
    // Make ready every dependent whose last dependency this was.
    while (e != kNoIndex) {
        const Edge edge = edges_[e];
        free_edge(e);
        e = edge.next;
        Request& d = slab_[edge.dependent];
        if (d.id != edge.dependent_id || d.state != State::Waiting) continue;
        if (--d.slot == 0) {  // (Waiting: its live dependencies)
            --waiting_;
            make_ready(edge.dependent, now_);
        }
    }
}

void Scheduler::fail_dependents(std::uint32_t e, std::uint64_t id, Outcome how, std::string_view detail) {
    // Fail every waiting dependent, transitively. Direct dependents name this request and
    // its outcome; indirect ones name their own dependency and the root cause.
    // Each dependent gets its own copy of the reason, so the detail (a worker's error
    // text) is cut to kDetailShown bytes there, at a UTF-8 character boundary: a long
    // error times many dependents must not cost memory in proportion to both.
    if (e == kNoIndex) return;
    std::string root = "request " + id_text(id) + " " + outcome_name(how);
    std::string direct = "dependency " + id_text(id) + " " + outcome_name(how);
    if (!detail.empty()) {
        constexpr std::size_t kDetailShown = 256;
        std::string_view shown = detail;
        const bool cut = shown.size() > kDetailShown;
        if (cut) {
            std::size_t n = kDetailShown;
            while (n > 0 && (static_cast<unsigned char>(shown[n]) & 0xC0u) == 0x80u) --n;  // (a continuation byte)
            shown = shown.substr(0, n);
        }
        std::string tail = ": ";
        tail.append(shown).append(cut ? " [...]" : "");
        root += tail;
        direct += tail;
    }
    cascade_stack_.clear();
    cascade_stack_.push_back({e, id});
    while (!cascade_stack_.empty()) {
        auto [edge_index, cause] = cascade_stack_.back();
        cascade_stack_.pop_back();
        while (edge_index != kNoIndex) {
            const Edge edge = edges_[edge_index];
            free_edge(edge_index);
            edge_index = edge.next;
            Request& d = slab_[edge.dependent];
            if (d.id != edge.dependent_id || d.state != State::Waiting) continue;
            pending_failed_.push_back(d.id);
            pending_reasons_.push_back(cause == id ? direct
                                                   : "dependency " + id_text(cause) + " failed: " + root);
            const std::uint64_t dep_id = d.id;
            const std::uint32_t next = detach(edge.dependent, Outcome::Failed);
            if (next != kNoIndex) cascade_stack_.push_back({next, dep_id});
        }
    }
}

Handle Scheduler::find_live(std::uint64_t id, const char* what) const {
    const Handle h = ids_.find(id, id_of());
    if (h != kNoHandle) return h;
    if (id == 0 || id >= next_id_)
        throw UnknownRequest(std::string("cannot ") + what + " request " + id_text(id) +
                             ": this scheduler never issued that id");
    throw RequestStateError(std::string("cannot ") + what + " request " + id_text(id) +
                            ": it already ended as " + outcome_name(outcome(id)));
}

Handle Scheduler::find_in_flight(std::uint64_t id, const char* what) const {
    const Handle h = find_live(id, what);
    if (slab_[h].state != State::InFlight)
        throw RequestStateError(std::string("cannot ") + what + " request " + id_text(id) + ": it is " +
                                state_name(slab_[h].state) + ", not in flight");
    return h;
}

void Scheduler::learn_service(Device& d, double prompt, double steps, double batch, double observed) noexcept {
    d.service.learn(prompt, steps, batch, observed);
    groups_stale_ = true;  // (its multipliers are part of refresh_groups' check)
}

void Scheduler::batch_finished(Batch& b, Device& d) {
    // A batch-mode batch whose members all completed: the service model learns its time
    // (made clock-invariant), and the adaptive limit moves (AIMD against latency_target).
    const double took = now_ - b.dispatched_at;
    if (d.service.known())
        learn_service(d, static_cast<double>(b.prompt), static_cast<double>(b.steps), static_cast<double>(b.size),
                      took * d.clock_scale);
    const double target = cfg_.batching.latency_target;
    if (cfg_.dynamic_batching && target > 0.0) {
        const double top = static_cast<double>(cfg_.max_batch_size);
        d.batch_limit = took > target ? std::max(1.0, std::floor(d.batch_limit / 2.0)) : std::min(top, d.batch_limit + 1.0);
    }
}

void Scheduler::off_device(Handle h) {
    // An in-flight request leaves its device and is counted as pending again; the caller
    // queues it (make_ready) or starts its retry backoff, either of which arms its timer.
    Request& r = slab_[h];
    leave_batch(r);
    --in_flight_;
    pending(r.tenant, true);
}

void Scheduler::complete_locked(Handle h, std::int64_t output_tokens) {
    const Request& r = slab_[h];
    Batch& b = batches_[r.slot];
    Device& d = devices_[b.device];
    ++d.completed_requests;
    device_outcome(d, false, now_);
    const std::int64_t out_steps = output_tokens >= 0 ? output_tokens : static_cast<std::int64_t>(r.max_new_tokens);
    if (out_steps > b.steps) b.steps = out_steps;
    if (!b.counted && d.service.known())  // continuous mode: learn from each request
        learn_service(d, static_cast<double>(r.prompt_tokens), static_cast<double>(out_steps),
                      static_cast<double>(d.inflight_requests), (now_ - batches_[r.slot].dispatched_at) * d.clock_scale);
    // util_est sample: the request's share of the batch's device time, made frequency- and
    // capacity-invariant, per token.
    // Shared with the others of its batch (batch mode) or with everything running on the
    // device at its end (continuous mode).
    const double service = now_ - batches_[r.slot].dispatched_at;
    const double sharers = b.counted ? static_cast<double>(b.size) : static_cast<double>(d.inflight_requests);
    const double work = service * d.clock_scale * (d.capacity_orig / kCapacityScale) / sharers;
    const double tokens = static_cast<double>(r.prompt_tokens) + static_cast<double>(r.max_new_tokens);
    classes_[r.request_class].est.sample(work / tokens);
    if (fair_on_ && r.sched_class == SchedClass::Normal && output_tokens >= 0 &&
        output_tokens < static_cast<std::int64_t>(r.max_new_tokens)) {
        // Fair share: give back the charge for the output it did not generate.
        const double w = weight_of(r.tenant);
        const double unused = static_cast<double>(static_cast<std::int64_t>(r.max_new_tokens) - output_tokens);
        fair_.set_counter(r.tenant, fair_.counter(r.tenant) - cfg_.fair.output_weight * unused / w);
    }
    end(h, Outcome::Completed, "");
}

void Scheduler::complete(std::uint64_t id, double now, std::int64_t output_tokens) {
    std::lock_guard<std::mutex> lock(mu_);
    const double t = advance_clock(now);
    if (output_tokens > kMaxTokens)
        throw InvalidArgument("output_tokens must be in 0.." + std::to_string(kMaxTokens) + " (or omitted), got " +
                              std::to_string(output_tokens));
    const Handle h = find_in_flight(id, "complete");
    now_ = t;
    complete_locked(h, output_tokens);
}

void Scheduler::complete_many(const std::uint64_t* ids, std::size_t n, double now) {
    std::lock_guard<std::mutex> lock(mu_);
    const double t = advance_clock(now);
    // Validate all first; marks catch an id listed twice and are cleared before anything
    // changes.
    std::size_t checked = 0;
    std::string problem;
    bool unknown = false;
    complete_scratch_.clear();  // (the handles found: one lookup per id, not three)
    complete_scratch_.reserve(n);
    for (; checked < n; ++checked) {
#if defined(__GNUC__)
        // Lookups ahead: the id map's slot 16 ids on, the slab record 8 ids on.
        if (checked + 16 < n) ids_.prefetch(ids[checked + 16]);
        if (checked + 8 < n) {
            const Handle ahead = ids_.home_handle(ids[checked + 8]);
            if (ahead < slab_.size()) __builtin_prefetch(&slab_[ahead]);
        }
#endif
        try {
            const Handle h = find_in_flight(ids[checked], "complete");
            if (slab_[h].mark) {
                problem = "cannot complete request " + id_text(ids[checked]) + ": it is listed twice";
                break;
            }
            slab_[h].mark = true;
            complete_scratch_.push_back(h);
        } catch (const UnknownRequest& e) {
            problem = e.what();
            unknown = true;
            break;
        } catch (const RequestStateError& e) {
            problem = e.what();
            break;
        }
    }
    for (const Handle h : complete_scratch_) slab_[h].mark = false;
    if (!problem.empty()) {
        problem = "complete_many: element " + std::to_string(checked) + ": " + problem + " (nothing was completed)";
        if (unknown) throw UnknownRequest(problem);
        throw RequestStateError(problem);
    }
    now_ = t;
    for (const Handle h : complete_scratch_) complete_locked(h, -1);
}

bool Scheduler::fail(std::uint64_t id, double now, bool retryable, std::string_view error) {
    std::lock_guard<std::mutex> lock(mu_);
    const double t = advance_clock(now);
    const Handle h = find_in_flight(id, "fail");
    now_ = t;
    Request& r = slab_[h];
    batches_[r.slot].clean = false;
    device_outcome(devices_[batches_[r.slot].device], true, t);
    if (retryable && cold(r).retries < cfg_.max_retries) {
        // The jitter stream advances for every retry considered, so that a run replays.
        const double at = t + retry_delay(static_cast<std::uint32_t>(cold(r).retries) + 1u);
        if (at < r.deadline) {
            off_device(h);
            ++ext_[r.ext].retries;
            ++counters_.retried;
            if (at <= t) {
                make_ready(h, t);
            } else {
                r.state = State::Retrying;
                ++retrying_;
                retries_.push(h, HeapKey{at, r.id});
                arm_timer(h);
            }
            return true;
        }
        std::string why(error);
        why += why.empty() ? "" : "; ";
        why += "its retry could not start before its deadline";
        end(h, Outcome::Failed, why);
        return false;
    }
    end(h, Outcome::Failed, error);
    return false;
}

bool Scheduler::cancel(std::uint64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    const Handle h = ids_.find(id, id_of());
    if (h == kNoHandle) {
        if (id == 0 || id >= next_id_)
            throw UnknownRequest("cannot cancel request " + id_text(id) + ": this scheduler never issued that id");
        return false;
    }
    end(h, Outcome::Cancelled, "");
    return true;
}

// ---------------------------------------------------------------- queries

void Scheduler::set_tenant_weight(std::uint32_t tenant, double weight) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!(weight > 0.0 && weight <= kMaxTenantWeight))
        throw InvalidArgument("tenant weight must be in (0, " + format_number(kMaxTenantWeight) + "], got " +
                              format_number(weight));
    if (tenant >= kMaxTenants)
        throw InvalidArgument("tenant " + std::to_string(tenant) + " is beyond the limit of " +
                              std::to_string(kMaxTenants) + " tenants");
    if (tenant >= tenant_weight_.size()) tenant_weight_.resize(tenant + std::size_t{1}, 1.0);
    tenant_weight_[tenant] = weight;
}

double Scheduler::tenant_weight(std::uint32_t tenant) const {
    std::lock_guard<std::mutex> lock(mu_);
    return weight_of(tenant);
}

double Scheduler::tenant_counter(std::uint32_t tenant) const {
    std::lock_guard<std::mutex> lock(mu_);
    return fair_.counter(tenant);
}

double Scheduler::fair_virtual_time() const {
    std::lock_guard<std::mutex> lock(mu_);
    return fair_vtime_;
}

RequestStatus Scheduler::status(std::uint64_t id) const {
    std::lock_guard<std::mutex> lock(mu_);
    const Handle h = ids_.find(id, id_of());
    if (h != kNoHandle) {
        switch (slab_[h].state) {
            case State::Waiting: return RequestStatus::Waiting;
            case State::Queued: return RequestStatus::Queued;
            case State::Retrying: return RequestStatus::Retrying;
            default: return RequestStatus::InFlight;
        }
    }
    if (id == 0 || id >= next_id_)
        throw UnknownRequest("unknown request " + id_text(id) + ": this scheduler never issued that id");
    return static_cast<RequestStatus>(static_cast<unsigned>(RequestStatus::Completed) +
                                      static_cast<unsigned>(outcome(id)));
}

Stats Scheduler::stats() const {
    std::lock_guard<std::mutex> lock(mu_);
    Stats s;
    s.counters = counters_;
    s.waiting = waiting_;
    s.queued = queued_;
    s.in_flight = in_flight_;
    s.retrying = retrying_;
    s.queued_by_class[0] = dl_ready_.size();
    s.queued_by_class[1] = rt_ready_.size();
    s.queued_by_class[2] = fair_on_ ? fair_.size() : ready_.size();
    s.queued_by_class[3] = bg_ready_.size();
    s.now = now_;
    s.devices = devices_;
    return s;
}

bool Scheduler::check_invariants() const {
    std::lock_guard<std::mutex> lock(mu_);
    if (!ready_.check_invariants() || !rt_ready_.check_invariants() || !dl_ready_.check_invariants() ||
        !bg_ready_.check_invariants() || !retries_.check_invariants() || !fair_.check_invariants())
        return false;
    if (fair_on_ ? !ready_.empty() : !fair_.empty()) return false;
    // Timers: a heap; exactly one current entry per timed waiting, queued or retrying
    // request, at its next level change or its deadline.
    if (!timers_.valid()) return false;
    std::vector<std::uint8_t> armed(slab_.size(), 0);
    for (const Timer& e : timers_) {
        if (e.handle >= slab_.size()) return false;
        if (timer_current(e) && e.at == timer_at(slab_[e.handle])) armed[e.handle] = 1;
    }
    std::uint64_t retrying = 0;
    const auto queued_anywhere = [this](Handle h) {
        return ready_.contains(h) || fair_.contains(h) || rt_ready_.contains(h) || dl_ready_.contains(h) ||
               bg_ready_.contains(h);
    };
    std::uint64_t waiting = 0, queued = 0, in_flight = 0, free_slots = 0;
    std::vector<std::uint64_t> device_requests(devices_.size(), 0);
    for (Handle h = 0; h < slab_.size(); ++h) {
        const Request& r = slab_[h];
        if (r.state == State::Free) {
            ++free_slots;
            if (queued_anywhere(h) || retries_.contains(h)) return false;
            continue;
        }
        if (ids_.find(r.id, id_of()) != h) return false;
        if (r.ext != kNoIndex) {  // the fan-out count is the length of its dependents list
            std::uint32_t edges = 0;
            for (std::uint32_t e = ext_[r.ext].dependents; e != kNoIndex && edges <= edges_.size(); e = edges_[e].next)
                ++edges;
            if (edges != ext_dependents_[r.ext]) return false;
        }
        const bool timed = std::isfinite(r.deadline);
        if (timed && r.state != State::InFlight && !armed[h]) return false;  // its timer is set
        switch (r.state) {
            case State::Waiting:
                ++waiting;
                if (r.slot == 0 || queued_anywhere(h)) return false;
                break;
            case State::Queued:
                ++queued;
                if (fair_on_ && r.sched_class == SchedClass::Normal ? !fair_.contains(h) : !queue_of(r).contains(h))
                    return false;
                if (queued_key(r, h).key != ready_key(r).key) return false;
                break;
            case State::InFlight:
                ++in_flight;
                if (queued_anywhere(h)) return false;
                if (r.slot >= batches_.size()) return false;
                ++device_requests[batches_[r.slot].device];
                break;
            case State::Retrying:
                ++retrying;
                if (queued_anywhere(h) || !retries_.contains(h)) return false;
                break;
            case State::Free: break;
        }
        if (r.state != State::Retrying && retries_.contains(h)) return false;
    }
    if (waiting != waiting_ || queued != queued_ || in_flight != in_flight_ || retrying != retrying_) return false;
    if (free_slots != free_handles_.size()) return false;
    if (ids_.size() != waiting + queued + in_flight + retrying) return false;
    std::uint64_t pending_sum = 0;
    for (const std::uint64_t p : tenant_pending_) pending_sum += p;
    if (pending_sum != waiting + queued + retrying) return false;
    for (std::size_t i = 0; i < devices_.size(); ++i) {
        const Device& d = devices_[i];
        // The intrusive in-flight list, placed utilization and KV accounting agree.
        std::uint64_t listed = 0;
        std::int64_t kv = 0;
        double util = 0.0;
        Handle prev = kNoHandle;
        for (Handle h = d.inflight_head; h != kNoHandle; h = ext_[slab_[h].ext].dev_next) {
            const Request& r = slab_[h];
            if (r.state != State::InFlight || batches_[r.slot].device != i || cold(r).dev_prev != prev) return false;
            if (++listed > in_flight_) return false;  // a cycle
            kv += static_cast<std::int64_t>(r.prompt_tokens) + static_cast<std::int64_t>(r.max_new_tokens);
            util += cold(r).util;
            prev = h;
        }
        if (listed != d.inflight_requests || kv != d.kv_used) return false;
        if (std::fabs(util - d.placed_util) > 1e-6 * (1.0 + util)) return false;
        if (devices_[i].inflight_requests != device_requests[i]) return false;
        if (devices_[i].inflight_batches > devices_[i].max_inflight_batches) return false;
    }
    const Counters& c = counters_;
    return c.accepted == c.completed + c.failed + c.expired + c.cancelled + waiting + queued + in_flight + retrying;
}

// ---------------------------------------------------------------- checkpoints

namespace {

std::vector<std::uint64_t*> counter_fields(Counters& c) {
    return {&c.accepted,  &c.completed,      &c.failed,    &c.expired,   &c.cancelled,      &c.retried,
            &c.dispatched, &c.batches,       &c.placed_fitting, &c.placed_fallback, &c.misfits, &c.migrated,
            &c.readmitted, &c.held,          &c.trimmed,   &c.preempted, &c.deferred,       &c.breaker_trips};
}

PeltSnapshot save_pelt(const PeltSignal& p) {
    return PeltSnapshot{p.started(), p.last_update(), p.util_sum(), p.period_contrib(), p.util_avg()};
}

}  // namespace

void Scheduler::export_state(StateSnapshot& out, bool columnar) const {
    std::lock_guard<std::mutex> lock(mu_);
    out = StateSnapshot{};
    out.columnar = columnar;
    out.now = now_;
    out.next_id = next_id_;
    out.rng = rng_;
    Counters c = counters_;
    for (std::uint64_t* f : counter_fields(c)) out.counters.push_back(*f);
    out.outcomes = outcomes_;
    out.pending_failed = pending_failed_;
    out.pending_reasons = pending_reasons_;
    // Live dependency edges: for each dependency, its waiting dependents.
    std::vector<std::vector<std::uint64_t>> waits(slab_.size());
    std::vector<Handle> live;  // in id order: slab order until handles are reused
    live.reserve(slab_.size() - free_handles_.size());
    std::size_t n_edges = 0;
    for (Handle h = 0; h < slab_.size(); ++h) {
        const Request& r = slab_[h];
        if (r.state == State::Free) continue;
        live.push_back(h);
        for (std::uint32_t e = cold(r).dependents; e != kNoIndex; e = edges_[e].next) {
            const Edge& edge = edges_[e];
            const Request& d = slab_[edge.dependent];
            if (d.id == edge.dependent_id && d.state == State::Waiting) {
                waits[edge.dependent].push_back(r.id);
                ++n_edges;
            }
        }
    }
    const auto by_id = [this](Handle a, Handle b) { return slab_[a].id < slab_[b].id; };
    if (!std::is_sorted(live.begin(), live.end(), by_id)) std::sort(live.begin(), live.end(), by_id);
    if (columnar)
        out.columns.layout(live.size(), n_edges);
    else
        out.requests.reserve(live.size());
    std::size_t at_edge = 0;
    // Batches are numbered in the order their first member is met, by id.
    std::vector<std::uint32_t> renumber(batches_.size(), kNoIndex);
    RequestSnapshot q;
    for (std::size_t i = 0; i < live.size(); ++i) {
        const Handle h = live[i];
        const Request& r = slab_[h];
        q.id = r.id;
        q.state = static_cast<std::uint8_t>(r.state);
        q.arrival = r.arrival;
        q.deadline = r.deadline;
        q.priority = r.priority;
        q.prompt_tokens = r.prompt_tokens;
        q.max_new_tokens = r.max_new_tokens;
        q.uclamp_min = cold(r).uclamp_min;
        q.uclamp_max = cold(r).uclamp_max;
        q.tenant = r.tenant;
        q.request_class = r.request_class;
        q.sched_class = static_cast<std::uint8_t>(r.sched_class);
        q.batchable = r.batchable;
        q.retries = cold(r).retries;
        q.preemptions = cold(r).preemptions;
        q.progress = cold(r).progress;
        q.retry_at = r.state == State::Retrying ? retries_.key_of(h).key : 0.0;
        q.dl_device = cold(r).dl_device;
        q.dl_bw = cold(r).dl_bw;
        q.pool = cold(r).pool;
        q.fallback_pool = cold(r).fallback_pool;
        q.waits_on = std::move(waits[h]);
        std::sort(q.waits_on.begin(), q.waits_on.end());
        q.batch = kNoIndex;
        q.util = 0.0;
        q.dispatched_at = 0.0;
        if (r.state == State::InFlight) {
            std::uint32_t& n = renumber[r.slot];
            if (n == kNoIndex) {
                const Batch& b = batches_[r.slot];
                n = static_cast<std::uint32_t>(out.batches.size());
                out.batches.push_back(BatchSnapshot{b.device, b.size, b.tokens, b.prompt, b.max_new, b.steps, b.work,
                                                    b.dispatched_at, b.counted, b.clean, b.probe});
            }
            q.batch = n;
            q.util = cold(r).util;
            q.dispatched_at = batches_[r.slot].dispatched_at;
        }
        if (columnar)
            out.columns.set(i, q, at_edge);
        else
            out.requests.push_back(std::move(q));  // (q.waits_on is assigned afresh above)
    }
    for (const Device& d : devices_) {
        DeviceSnapshot ds;
        ds.probe_out = d.probe_out;
        ds.placed_util = d.placed_util;
        for (Handle h = d.inflight_head; h != kNoHandle; h = ext_[slab_[h].ext].dev_next) ds.inflight.push_back(slab_[h].id);
        ds.clock_scale = d.clock_scale;
        ds.max_clock = d.max_clock;
        ds.pressure = d.pressure;
        ds.util = save_pelt(d.util);
        for (int i = 0; i < 3; ++i) ds.service_m[i] = d.service.m[i];
        for (int i = 0; i < 9; ++i) ds.service_cov[i] = d.service.cov[i / 3][i % 3];
        ds.service_samples = d.service.samples;
        ds.batch_limit = d.batch_limit;
        ds.breaker = static_cast<std::uint8_t>(d.breaker);
        ds.consecutive_failures = d.consecutive_failures;
        ds.fail_rate = d.fail_rate;
        ds.open_until = d.open_until;
        ds.breaker_trips = d.breaker_trips;
        ds.dispatched_requests = d.dispatched_requests;
        ds.dispatched_batches = d.dispatched_batches;
        ds.completed_requests = d.completed_requests;
        ds.preempted_requests = d.preempted_requests;
        out.devices.push_back(ds);
    }
    for (const ClassState& cs : classes_)
        out.classes.push_back(
            ClassSnapshot{cs.est.seen(), cs.est.ewma(), cs.est.last(), save_pelt(cs.util), cs.running});
}

std::uint64_t Scheduler::requeue_in_flight(double now) {
    std::lock_guard<std::mutex> lock(mu_);
    const double t = advance_clock(now);
    now_ = t;
    handle_scratch_.clear();
    for (Handle h = 0; h < slab_.size(); ++h)
        if (slab_[h].state == State::InFlight) handle_scratch_.push_back(h);
    std::sort(handle_scratch_.begin(), handle_scratch_.end(),
              [this](Handle a, Handle b) { return slab_[a].id < slab_[b].id; });
    for (const Handle h : handle_scratch_) {
        Request& r = slab_[h];
        batches_[r.slot].clean = false;
        off_device(h);
        make_ready(h, t);
    }
    return handle_scratch_.size();
}

void Scheduler::import_state(const StateSnapshot& in) {
    std::lock_guard<std::mutex> lock(mu_);
    const auto bad = [](const std::string& what) { throw ConfigError("checkpoint is inconsistent: " + what); };
    // Validate everything first.
    if (next_id_ != 1 || ids_.size() != 0) bad("restore needs a scheduler that has accepted nothing yet");
    if (in.devices.size() != devices_.size())
        bad("it has " + std::to_string(in.devices.size()) + " devices, this scheduler " +
            std::to_string(devices_.size()));
    if (in.next_id < 1 || in.next_id - 1 > in.outcomes.size() * 32) bad("next_id does not match the outcome record");
    if (in.now == -kInf ? in.next_id != 1 : !(std::fabs(in.now) <= 1e15))  // (as advance_clock; -inf: no call yet)
        bad("its time " + format_number(in.now) + " is not a finite number of seconds within +-1e15");
    if (in.counters.size() != 18) bad("it has " + std::to_string(in.counters.size()) + " counters, expected 18");
    if (in.classes.size() > kMaxClasses) bad("too many request classes");
    std::uint64_t prev = 0;
    for (const RequestSnapshot& q : in.requests) {
        const std::string who = "request " + std::to_string(q.id) + ": ";
        if (q.id <= prev || q.id >= in.next_id) bad(who + "ids must be ascending and below next_id");
        prev = q.id;
        const auto st = static_cast<State>(q.state);
        if (st != State::Waiting && st != State::Queued && st != State::Retrying && st != State::InFlight)
            bad(who + "bad state");
        if ((st == State::InFlight) != (q.batch != kNoIndex) ||
            (q.batch != kNoIndex && (q.batch >= in.batches.size() || !std::isfinite(q.util) ||
                                     !std::isfinite(q.dispatched_at))))
            bad(who + "in flight exactly when it names a batch, with a finite utilization and dispatch time");
        if (!std::isfinite(q.arrival) || std::isnan(q.deadline) || !(q.priority >= 0.0 && q.priority <= 1.0))
            bad(who + "bad arrival, deadline or priority");
        if (q.max_new_tokens < 1 || q.prompt_tokens > kMaxTokens || q.max_new_tokens > kMaxTokens)
            bad(who + "bad token counts");
        if (!(q.uclamp_min >= 0.0 && q.uclamp_min <= q.uclamp_max && q.uclamp_max <= 1.0)) bad(who + "bad uclamp");
        if (q.sched_class > 3 || q.request_class >= kMaxClasses || q.retries > 65535 || q.preemptions > 65535)
            bad(who + "bad class or counts");
        if (q.tenant >= kMaxTenants)
            bad(who + "tenant " + std::to_string(q.tenant) + " is beyond the limit of " + std::to_string(kMaxTenants));
        if (static_cast<SchedClass>(q.sched_class) == SchedClass::Deadline &&
            (q.dl_device >= devices_.size() || !std::isfinite(q.dl_bw) || q.dl_bw < 0.0))
            bad(who + "bad deadline-class reservation");
        if (st == State::Retrying && !std::isfinite(q.retry_at)) bad(who + "bad retry time");
        if ((q.pool != 0 && (q.pool >= pool_exists_.size() || !pool_exists_[q.pool])) ||
            (q.fallback_pool != 0 && (q.fallback_pool >= pool_exists_.size() || !pool_exists_[q.fallback_pool])))
            bad(who + "names a pool with no device");
        if ((st == State::Waiting) != !q.waits_on.empty()) bad(who + "waiting exactly when it waits on something");
        for (const std::uint64_t dep : q.waits_on) {
            const auto it = std::lower_bound(in.requests.begin(), in.requests.end(), dep,
                                             [](const RequestSnapshot& a, std::uint64_t id) { return a.id < id; });
            if (it == in.requests.end() || it->id != dep || dep == q.id) bad(who + "waits on a request not live");
        }
    }
    {
        // No request waits on itself through others: a cycle would wait forever, never
        // reported. (Only waiting requests wait on anything; depth-first, iteratively.)
        const std::size_t n = in.requests.size();
        const auto index_of = [&in](std::uint64_t id) {
            return static_cast<std::size_t>(
                std::lower_bound(in.requests.begin(), in.requests.end(), id,
                                 [](const RequestSnapshot& a, std::uint64_t x) { return a.id < x; }) -
                in.requests.begin());
        };
        std::vector<std::uint8_t> color(n, 0);  // 0 unvisited, 1 on the path, 2 done
        std::vector<std::pair<std::size_t, std::size_t>> path;  // (request, next edge)
        for (std::size_t root = 0; root < n; ++root) {
            if (color[root] != 0 || in.requests[root].waits_on.empty()) continue;
            color[root] = 1;
            path.push_back({root, 0});
            while (!path.empty()) {
                auto& [at, edge] = path.back();
                const auto& deps = in.requests[at].waits_on;
                if (edge == deps.size()) {
                    color[at] = 2;
                    path.pop_back();
                    continue;
                }
                const std::size_t next = index_of(deps[edge++]);
                if (color[next] == 1)
                    bad("request " + std::to_string(in.requests[next].id) + " waits on itself through its dependencies");
                if (color[next] == 0) {
                    color[next] = 1;
                    path.push_back({next, 0});
                }
            }
        }
    }
    // A PELT signal as update() leaves it: a finite time, a sum >= 0, a part-period in
    // [0, 1024). (A NaN sum made a device's util_avg NaN: nothing fit it again.)
    const auto pelt_ok = [](const PeltSnapshot& p) {
        return std::isfinite(p.last) && std::fabs(p.last) <= 1e15 && std::isfinite(p.sum) && p.sum >= 0.0 &&
               p.contrib >= 0.0 && p.contrib < 1024.0 && std::isfinite(p.avg) && p.avg >= 0.0;
    };
    for (std::size_t dv = 0; dv < in.devices.size(); ++dv) {
        const DeviceSnapshot& d = in.devices[dv];
        const std::string who = "device " + std::to_string(dv) + ": ";
        if (!(d.clock_scale > 0.0 && d.clock_scale <= 1.0) || !(d.pressure >= 0.0 && d.pressure < 1.0) ||
            !(d.max_clock > 0.0) || d.breaker > 2 || !std::isfinite(d.fail_rate) || !std::isfinite(d.placed_util))
            bad("a device has a bad clock, pressure, breaker or utilization");
        if (!pelt_ok(d.util)) bad(who + "bad utilization signal (PELT)");
        if (!std::isfinite(d.open_until)) bad(who + "its breaker's cool-down end is not a finite time");
        bool model_ok = std::isfinite(d.batch_limit) && d.batch_limit >= 1.0 &&
                        d.batch_limit <= static_cast<double>(cfg_.max_batch_size);
        for (int k = 0; k < 3; ++k) model_ok = model_ok && d.service_m[k] >= 1.0 / 16.0 && d.service_m[k] <= 16.0;
        for (int k = 0; k < 9; ++k) model_ok = model_ok && std::isfinite(d.service_cov[k]);
        if (!model_ok) bad(who + "bad service-time model or batch limit");
    }
    for (std::size_t i = 0; i < in.classes.size(); ++i) {
        const ClassSnapshot& c = in.classes[i];
        if (!pelt_ok(c.util) || !std::isfinite(c.running) || !std::isfinite(c.ewma) || !std::isfinite(c.last))
            bad("request class " + std::to_string(i) + " has a bad utilization signal or estimate");
    }
    std::vector<std::uint32_t> members(in.batches.size(), 0);
    for (const RequestSnapshot& q : in.requests)
        if (q.batch != kNoIndex) ++members[q.batch];
    std::size_t listed = 0;
    for (std::size_t i = 0; i < in.batches.size(); ++i) {
        const BatchSnapshot& b = in.batches[i];
        if (b.device >= in.devices.size() || members[i] == 0 || members[i] > b.size)
            bad("batch " + std::to_string(i) + " has a bad device or member count");
    }
    for (std::size_t dv = 0; dv < in.devices.size(); ++dv) {
        double util = 0.0;
        for (const std::uint64_t id : in.devices[dv].inflight) {
            const auto it = std::lower_bound(in.requests.begin(), in.requests.end(), id,
                                             [](const RequestSnapshot& a, std::uint64_t x) { return a.id < x; });
            if (it == in.requests.end() || it->id != id || it->batch == kNoIndex || in.batches[it->batch].device != dv)
                bad("device " + std::to_string(dv) + " lists request " + std::to_string(id) +
                    " in flight, which is not in flight there");
            if (!(it->util >= 0.0) || !std::isfinite(it->util))
                bad("request " + std::to_string(id) + " has a bad utilization");
            util += it->util;
            ++listed;
        }
        // (the same tolerance as check_invariants)
        if (std::fabs(util - in.devices[dv].placed_util) > 1e-6 * (1.0 + util))
            bad("device " + std::to_string(dv) + "'s placed utilization does not match its in-flight requests'");
    }
    std::size_t in_flight = 0;
    for (const std::uint32_t m : members) in_flight += m;
    if (listed != in_flight) bad("the devices' in-flight lists do not match the requests in flight");
    {
        // Conservation (check_invariants): accepted = ended + live, by the counters.
        Counters c;
        auto fields = counter_fields(c);
        for (std::size_t i = 0; i < fields.size(); ++i) *fields[i] = in.counters[i];
        const std::uint64_t ended = c.completed + c.failed + c.expired + c.cancelled;
        if (ended < c.completed || c.accepted != ended + in.requests.size())
            bad("its counters do not balance: accepted " + std::to_string(c.accepted) + " != ended + " +
                std::to_string(in.requests.size()) + " live");
        // The outcome record of the ids that ended agrees with the counters: as many
        // failed, expired and cancelled (an id can only be lost, as completed, if an
        // accept ran out of memory half-way). A record forged all "completed" made
        // failed requests report completed, and let new requests depend on them.
        std::uint64_t seen[4] = {0, 0, 0, 0};
        std::size_t live = 0;
        for (std::uint64_t id = 1; id < in.next_id; ++id) {
            if (live < in.requests.size() && in.requests[live].id == id) {
                ++live;
                continue;
            }
            const std::uint64_t i = id - 1;
            ++seen[(in.outcomes[i / 32] >> ((i % 32) * 2)) & 3u];
        }
        if (seen[1] != c.failed || seen[2] != c.expired || seen[3] != c.cancelled || seen[0] < c.completed)
            bad("its outcome record does not match its counters (ended as failed / expired / cancelled: " +
                std::to_string(seen[1]) + " / " + std::to_string(seen[2]) + " / " + std::to_string(seen[3]) +
                ", counters " + std::to_string(c.failed) + " / " + std::to_string(c.expired) + " / " +
                std::to_string(c.cancelled) + ")");
    }
    if (in.pending_reasons.size() != in.pending_failed.size())
        bad("the pending failures and their reasons differ in number");
    {
        std::vector<std::uint64_t> ids = in.pending_failed;
        std::sort(ids.begin(), ids.end());
        if (std::adjacent_find(ids.begin(), ids.end()) != ids.end()) bad("a pending failure is listed twice");
    }
    for (const std::uint64_t id : in.pending_failed) {
        if (id == 0 || id >= in.next_id) bad("a pending failure names request " + std::to_string(id) + ", never issued");
        const auto it = std::lower_bound(in.requests.begin(), in.requests.end(), id,
                                         [](const RequestSnapshot& a, std::uint64_t x) { return a.id < x; });
        if (it != in.requests.end() && it->id == id) bad("a pending failure names request " + std::to_string(id) + ", which is live");
    }

    // Load.
    now_ = in.now;
    next_id_ = in.next_id;
    rng_ = in.rng;
    auto fields = counter_fields(counters_);
    for (std::size_t i = 0; i < fields.size(); ++i) *fields[i] = in.counters[i];
    outcomes_ = in.outcomes;
    pending_failed_ = in.pending_failed;
    pending_reasons_ = in.pending_reasons;
    for (std::size_t i = 0; i < devices_.size(); ++i) {
        const DeviceSnapshot& s = in.devices[i];
        Device& d = devices_[i];
        d.clock_scale = s.clock_scale;
        d.max_clock = s.max_clock;
        d.pressure = s.pressure;
        d.util.restore(s.util.started, s.util.last, s.util.sum, s.util.contrib, s.util.avg);
        for (int k = 0; k < 3; ++k) d.service.m[k] = s.service_m[k];
        groups_stale_ = true;  // (refresh_groups)
        for (int k = 0; k < 9; ++k) d.service.cov[k / 3][k % 3] = s.service_cov[k];
        d.service.samples = s.service_samples;
        d.batch_limit = s.batch_limit;
        d.breaker = static_cast<Breaker>(s.breaker);
        d.probe_out = false;
        d.consecutive_failures = s.consecutive_failures;
        d.fail_rate = s.fail_rate;
        d.open_until = s.open_until;
        d.breaker_trips = s.breaker_trips;
        d.dispatched_requests = s.dispatched_requests;
        d.dispatched_batches = s.dispatched_batches;
        d.completed_requests = s.completed_requests;
        d.preempted_requests = s.preempted_requests;
        d.dl_bw = 0.0;
        d.probe_out = s.probe_out;
        d.placed_util = s.placed_util;
        refresh_capacity(d);
    }
    // Batches, then in-flight requests join them (below).
    std::vector<std::uint32_t> slot_of(in.batches.size());
    for (std::size_t i = 0; i < in.batches.size(); ++i) {
        const BatchSnapshot& x = in.batches[i];
        const std::uint32_t b = static_cast<std::uint32_t>(batches_.size());
        batches_.emplace_back();
        Batch& bt = batches_[b];
        bt.device = x.device;
        bt.size = x.size;
        bt.tokens = x.tokens;
        bt.prompt = x.prompt;
        bt.max_new = x.max_new;
        bt.steps = x.steps;
        bt.work = x.work;
        bt.dispatched_at = x.dispatched_at;
        bt.counted = x.counted;
        bt.clean = x.clean;
        bt.probe = x.probe;
        if (x.counted) ++devices_[x.device].inflight_batches;
        slot_of[i] = b;
    }
    classes_.assign(in.classes.size(), ClassState{});
    for (std::size_t i = 0; i < in.classes.size(); ++i) {
        const ClassSnapshot& c = in.classes[i];
        classes_[i].est.restore(c.seen, c.ewma, c.last);
        classes_[i].util.restore(c.util.started, c.util.last, c.util.sum, c.util.contrib, c.util.avg);
        classes_[i].running = c.running;
    }
    for (const RequestSnapshot& q : in.requests) {
        if (q.request_class >= classes_.size()) classes_.resize(q.request_class + std::size_t{1});
        const Handle h = alloc_request();
        Request& r = slab_[h];
        r = Request{};
        r.id = q.id;
        ids_.insert(h, id_of());
        r.arrival = q.arrival;
        r.deadline = q.deadline;
        r.priority = q.priority;
        r.prompt_tokens = q.prompt_tokens;
        r.max_new_tokens = q.max_new_tokens;
        r.tenant = q.tenant;
        r.request_class = q.request_class;
        r.sched_class = static_cast<SchedClass>(q.sched_class);
        r.batchable = q.batchable;
        const bool flying = static_cast<State>(q.state) == State::InFlight;
        if (q.uclamp_min != 0.0 || q.uclamp_max != 1.0 || q.retries != 0 || q.preemptions != 0 ||
            q.progress != 0.0 || q.pool != 0 || q.fallback_pool != 0 || r.sched_class == SchedClass::Deadline ||
            flying) {
            RequestExt& x = ext_of(h);
            x.uclamp_min = q.uclamp_min;
            x.uclamp_max = q.uclamp_max;
            x.retries = static_cast<std::uint16_t>(q.retries);
            x.preemptions = static_cast<std::uint16_t>(q.preemptions);
            x.progress = q.progress;
            x.pool = static_cast<std::uint16_t>(q.pool);
            x.fallback_pool = static_cast<std::uint16_t>(q.fallback_pool);
            if (r.sched_class == SchedClass::Deadline) {
                x.dl_device = q.dl_device;
                x.dl_bw = q.dl_bw;
                devices_[q.dl_device].dl_bw += q.dl_bw;
            }
            if (flying) x.util = q.util;
        }
        if (flying) {
            // Joins its batch (whose dispatch time is its own); the device list is rebuilt
            // below, in the saved order.
            r.state = State::InFlight;
            r.slot = slot_of[q.batch];
            ++batches_[r.slot].remaining;
            ++in_flight_;
            Device& d = devices_[batches_[r.slot].device];
            ++d.inflight_requests;
            d.kv_used += static_cast<std::int64_t>(r.prompt_tokens) + static_cast<std::int64_t>(r.max_new_tokens);
            continue;
        }
        pending(r.tenant, true);
        switch (static_cast<State>(q.state)) {
            case State::Waiting:
                r.state = State::Waiting;
                ++waiting_;
                arm_timer(h);
                break;
            case State::Retrying:
                r.state = State::Retrying;
                ++retrying_;
                retries_.push(h, HeapKey{q.retry_at, r.id});
                arm_timer(h);
                break;
            default: make_ready(h, now_); break;
        }
    }
    for (std::size_t dv = 0; dv < devices_.size(); ++dv) {
        Device& d = devices_[dv];
        const auto& order = in.devices[dv].inflight;
        for (std::size_t k = order.size(); k-- > 0;) {  // push to the head, last first
            const Handle h = ids_.find(order[k], id_of());
            RequestExt& x = ext_[slab_[h].ext];
            x.dev_prev = kNoHandle;
            x.dev_next = d.inflight_head;
            if (d.inflight_head != kNoHandle) ext_[slab_[d.inflight_head].ext].dev_prev = h;
            d.inflight_head = h;
        }
    }
    for (const RequestSnapshot& q : in.requests) {
        const Handle h = ids_.find(q.id, id_of());
        for (const std::uint64_t dep : q.waits_on) add_edge(ids_.find(dep, id_of()), h);
    }
}

}  // namespace capsched

