#include "capsched/scheduler.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
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
        case State::Free: break;
    }
    return "free";
}

std::string id_text(std::uint64_t id) { return std::to_string(id); }

}  // namespace

void StepOutput::clear() noexcept {
    batch_device.clear();
    batch_offsets.clear();
    request_ids.clear();
    expired.clear();
    failed.clear();
    failed_reasons.clear();
}

Scheduler::Scheduler(const SchedulerConfig& cfg, const std::vector<DeviceSpec>& devices) : cfg_(cfg) {
    validate(cfg_);
    if (devices.empty()) throw ConfigError("the device list is empty: give at least one device");
    if (devices.size() > kMaxDevices)
        throw ConfigError("too many devices: " + std::to_string(devices.size()) + " (limit " +
                          std::to_string(kMaxDevices) + ")");
    double max_cap = 0.0;
    for (std::size_t i = 0; i < devices.size(); ++i) {
        const DeviceSpec& d = devices[i];
        if (!std::isfinite(d.capacity) || d.capacity <= 0.0)
            throw ConfigError("device " + std::to_string(i) +
                              ": capacity must be a finite number > 0, got " + format_number(d.capacity));
        if (d.max_inflight_batches < 1)
            throw ConfigError("device " + std::to_string(i) + ": max_inflight_batches must be >= 1, got " +
                              std::to_string(d.max_inflight_batches));
        max_cap = std::max(max_cap, d.capacity);
    }
    devices_.resize(devices.size());
    for (std::size_t i = 0; i < devices.size(); ++i) {
        devices_[i].capacity = devices[i].capacity == max_cap ? kCapacityScale
                                                              : devices[i].capacity / max_cap * kCapacityScale;
        devices_[i].max_inflight_batches = devices[i].max_inflight_batches;
    }
    device_order_.resize(devices_.size());
    std::iota(device_order_.begin(), device_order_.end(), 0u);
    std::stable_sort(device_order_.begin(), device_order_.end(), [this](std::uint32_t a, std::uint32_t b) {
        return devices_[a].capacity > devices_[b].capacity;
    });
}

void Scheduler::reserve(std::size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    slab_.reserve(n);
    free_handles_.reserve(n);
    ids_.reserve(n, id_of());
    ready_.reserve(n);
    deadlines_.reserve(n);
    if (cfg_.order.policy == Policy::Weighted) levels_.reserve(n);
    batches_.reserve(n / cfg_.max_batch_size + devices_.size() + 1);
    free_batches_.reserve(batches_.capacity());
}

// ---------------------------------------------------------------- time and validation

double Scheduler::advance_clock(double now) {
    if (!std::isfinite(now))
        throw InvalidArgument("now must be a finite number of seconds, got " + format_number(now));
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
    if (s.n_depends_on > kMaxDependencies)
        throw InvalidRequest("depends_on lists " + std::to_string(s.n_depends_on) +
                             " requests (limit " + std::to_string(kMaxDependencies) + ")");
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
        slab_[h].mark = true;
    }
    for (std::size_t i = 0; i < checked; ++i) {
        const Handle h = ids_.find(s.depends_on[i], id_of());
        if (h != kNoHandle) slab_[h].mark = false;
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

std::uint64_t Scheduler::submit(const RequestSpec& spec, double now) {
    std::lock_guard<std::mutex> lock(mu_);
    const double t = advance_clock(now);
    validate_spec(spec, t);
    validate_dependencies(spec);
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
    now_ = t;
    for (std::size_t i = 0; i < n; ++i) {
        s.prompt_tokens = prompt_tokens[i];
        s.max_new_tokens = max_new_tokens[i];
        s.priority = priority[i];
        s.timeout = timeout[i];
        s.deadline = deadline[i];
        ids[i] = accept(s, t);
    }
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
    r.uclamp_min = static_cast<float>(s.uclamp_min);
    r.uclamp_max = static_cast<float>(s.uclamp_max);
    r.tenant = s.tenant;
    r.batchable = s.batchable;

    // The part of the policy key that does not depend on `now` (docs/policies.md).
    const PolicyConfig& o = cfg_.order;
    const double tokens = static_cast<double>(s.prompt_tokens) + static_cast<double>(s.max_new_tokens);
    switch (o.policy) {
        case Policy::Fcfs: r.score_base = r.arrival; break;
        case Policy::Priority: r.score_base = -r.priority + o.aging_priority * r.arrival; break;
        case Policy::Edf:
            r.score_base = (std::isinf(r.deadline) ? r.arrival + o.no_deadline_horizon : r.deadline) +
                           o.aging_edf * r.arrival;
            break;
        case Policy::Srtf: r.score_base = tokens + o.aging_srtf * r.arrival; break;
        case Policy::Weighted: {
            const double u = std::min(1.0, tokens / o.resource_scale_tokens);
            const double resource = 0.1 / (u + 0.1);
            r.score_base = o.w_urgency * r.priority + o.w_resource * resource;
            break;
        }
    }

    for (std::size_t i = 0; i < s.n_depends_on; ++i) {
        const Handle dh = ids_.find(s.depends_on[i], id_of());
        if (dh == kNoHandle) continue;  // completed already (validated)
        std::uint32_t e;
        if (free_edge_ != kNoIndex) {
            e = free_edge_;
            free_edge_ = edges_[e].next;
        } else {
            e = static_cast<std::uint32_t>(edges_.size());
            edges_.emplace_back();
        }
        edges_[e] = Edge{id, h, slab_[dh].dependents};
        slab_[dh].dependents = e;
        ++r.deps_remaining;
    }

    ++counters_.accepted;
    if (std::isfinite(r.deadline)) deadlines_.push(h, HeapKey{r.deadline, id});
    if (r.deps_remaining > 0) {
        r.state = State::Waiting;
        ++waiting_;
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
    std::uint32_t level = r.level;
    if (est > static_cast<double>(level)) level = est >= static_cast<double>(q) ? q : static_cast<std::uint32_t>(est);
    while (level > r.level && now < level_time(r, level)) --level;
    while (level < q && now >= level_time(r, level + 1)) ++level;
    r.level = static_cast<std::uint16_t>(level);
}

HeapKey Scheduler::ready_key(const Request& r) const noexcept {
    if (cfg_.order.policy != Policy::Weighted) return HeapKey{r.score_base, r.id};
    const PolicyConfig& o = cfg_.order;
    const double proximity = static_cast<double>(r.level) / static_cast<double>(o.deadline_levels);
    return HeapKey{-(r.score_base + o.w_deadline * proximity) + o.aging_weighted * r.arrival, r.id};
}

void Scheduler::make_ready(Handle h, double now) {
    Request& r = slab_[h];
    r.state = State::Queued;
    ++queued_;
    if (cfg_.order.policy == Policy::Weighted) set_level(h, now);
    ready_.push(h, ready_key(r));
    if (cfg_.order.policy == Policy::Weighted && std::isfinite(r.deadline) &&
        r.level < cfg_.order.deadline_levels)
        levels_.push(h, HeapKey{level_time(r, r.level + 1u), r.id});
}

// ---------------------------------------------------------------- step

void Scheduler::step(double now, StepOutput& out) {
    std::lock_guard<std::mutex> lock(mu_);
    const double t = advance_clock(now);
    now_ = t;
    out.clear();
    out.now = t;

    // 1. Expire waiting and queued requests whose deadline has come, in (deadline, id)
    //    order; then fail the dependents of those that expired. Expiring all first means a
    //    dependent that is itself past its deadline is reported as expired, not failed.
    expired_heads_.clear();
    while (!deadlines_.empty() && deadlines_.top().key.key <= t) {
        const Handle h = deadlines_.pop();
        const std::uint64_t id = slab_[h].id;
        out.expired.push_back(id);
        const std::uint32_t dependents = detach(h, Outcome::Expired);
        if (dependents != kNoIndex) expired_heads_.push_back({dependents, id});
    }
    for (const auto& [dependents, id] : expired_heads_) fail_dependents(dependents, id, Outcome::Expired, "");

    // 2. Deadline-level changes that are due (weighted policy only).
    while (!levels_.empty() && levels_.top().key.key <= t) {
        const Handle h = levels_.pop();
        set_level(h, t);
        Request& r = slab_[h];
        ready_.update(h, ready_key(r));
        if (r.level < cfg_.order.deadline_levels) levels_.push(h, HeapKey{level_time(r, r.level + 1u), r.id});
    }

    // 3. One batch per free device, strongest first, in policy order.
    out.batch_offsets.push_back(0);
    for (const std::uint32_t dev : device_order_) {
        if (ready_.empty()) break;
        Device& d = devices_[dev];
        if (d.inflight_batches >= d.max_inflight_batches) continue;
        std::uint32_t b;
        if (!free_batches_.empty()) {
            b = free_batches_.back();
            free_batches_.pop_back();
        } else {
            b = static_cast<std::uint32_t>(batches_.size());
            batches_.emplace_back();
        }
        std::uint32_t count = 0;
        while (count < cfg_.max_batch_size && !ready_.empty()) {
            const Handle h = ready_.top().handle;
            Request& r = slab_[h];
            if (!r.batchable && count > 0) break;  // it goes alone, in the next batch
            ready_.pop();
            levels_.erase(h);
            deadlines_.erase(h);
            r.state = State::InFlight;
            r.batch = b;
            out.request_ids.push_back(r.id);
            ++count;
            if (!r.batchable) break;
        }
        batches_[b] = Batch{dev, count};
        queued_ -= count;
        in_flight_ += count;
        ++d.inflight_batches;
        d.inflight_requests += count;
        d.dispatched_requests += count;
        ++d.dispatched_batches;
        counters_.dispatched += count;
        ++counters_.batches;
        out.batch_device.push_back(dev);
        out.batch_offsets.push_back(out.request_ids.size());
    }

    // 4. Failures that happened since the last step (dependency cascades).
    out.failed.swap(pending_failed_);
    out.failed_reasons.swap(pending_reasons_);
    pending_failed_.clear();
    pending_reasons_.clear();
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
    Batch& b = batches_[r.batch];
    Device& d = devices_[b.device];
    --d.inflight_requests;
    if (--b.remaining == 0) {
        --d.inflight_batches;
        free_batches_.push_back(r.batch);
    }
    r.batch = kNoIndex;
}

std::uint32_t Scheduler::detach(Handle h, Outcome how) {
    Request& r = slab_[h];
    switch (r.state) {
        case State::Waiting:
            --waiting_;
            deadlines_.erase(h);
            break;
        case State::Queued:
            --queued_;
            ready_.erase(h);
            levels_.erase(h);
            deadlines_.erase(h);
            break;
        case State::InFlight:
            --in_flight_;
            leave_batch(r);
            break;
        case State::Free: break;
    }
    switch (how) {
        case Outcome::Completed: ++counters_.completed; break;
        case Outcome::Failed: ++counters_.failed; break;
        case Outcome::Expired: ++counters_.expired; break;
        case Outcome::Cancelled: ++counters_.cancelled; break;
    }
    set_outcome(r.id, how);
    ids_.erase(r.id, id_of());
    const std::uint32_t dependents = r.dependents;
    r.state = State::Free;
    r.dependents = kNoIndex;
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
        if (--d.deps_remaining == 0) {
            --waiting_;
            make_ready(edge.dependent, now_);
        }
    }
}

void Scheduler::fail_dependents(std::uint32_t e, std::uint64_t id, Outcome how, std::string_view detail) {
    // Fail every waiting dependent, transitively. Direct dependents name this request and
    // its outcome; indirect ones name their own dependency and the root cause.
    if (e == kNoIndex) return;
    std::string root = "request " + id_text(id) + " " + outcome_name(how);
    std::string direct = "dependency " + id_text(id) + " " + outcome_name(how);
    if (!detail.empty()) {
        root.append(": ").append(detail);
        direct.append(": ").append(detail);
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

void Scheduler::complete_locked(Handle h) {
    ++devices_[batches_[slab_[h].batch].device].completed_requests;
    end(h, Outcome::Completed, "");
}

void Scheduler::complete(std::uint64_t id, double now) {
    std::lock_guard<std::mutex> lock(mu_);
    const double t = advance_clock(now);
    const Handle h = find_in_flight(id, "complete");
    now_ = t;
    complete_locked(h);
}

void Scheduler::complete_many(const std::uint64_t* ids, std::size_t n, double now) {
    std::lock_guard<std::mutex> lock(mu_);
    const double t = advance_clock(now);
    // Validate all first; marks catch an id listed twice and are cleared before anything
    // changes.
    std::size_t checked = 0;
    std::string problem;
    bool unknown = false;
    for (; checked < n; ++checked) {
        try {
            const Handle h = find_in_flight(ids[checked], "complete");
            if (slab_[h].mark) {
                problem = "cannot complete request " + id_text(ids[checked]) + ": it is listed twice";
                break;
            }
            slab_[h].mark = true;
        } catch (const UnknownRequest& e) {
            problem = e.what();
            unknown = true;
            break;
        } catch (const RequestStateError& e) {
            problem = e.what();
            break;
        }
    }
    for (std::size_t i = 0; i < checked; ++i) slab_[ids_.find(ids[i], id_of())].mark = false;
    if (!problem.empty()) {
        problem = "complete_many: element " + std::to_string(checked) + ": " + problem + " (nothing was completed)";
        if (unknown) throw UnknownRequest(problem);
        throw RequestStateError(problem);
    }
    now_ = t;
    for (std::size_t i = 0; i < n; ++i) complete_locked(ids_.find(ids[i], id_of()));
}

bool Scheduler::fail(std::uint64_t id, double now, bool retryable, std::string_view error) {
    std::lock_guard<std::mutex> lock(mu_);
    const double t = advance_clock(now);
    const Handle h = find_in_flight(id, "fail");
    now_ = t;
    Request& r = slab_[h];
    if (retryable && r.retries < cfg_.max_retries && t < r.deadline) {
        leave_batch(r);
        --in_flight_;
        ++r.retries;
        ++counters_.retried;
        if (std::isfinite(r.deadline)) deadlines_.push(h, HeapKey{r.deadline, r.id});
        make_ready(h, t);
        return true;
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

RequestStatus Scheduler::status(std::uint64_t id) const {
    std::lock_guard<std::mutex> lock(mu_);
    const Handle h = ids_.find(id, id_of());
    if (h != kNoHandle) {
        switch (slab_[h].state) {
            case State::Waiting: return RequestStatus::Waiting;
            case State::Queued: return RequestStatus::Queued;
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
    s.now = now_;
    s.devices = devices_;
    return s;
}

bool Scheduler::check_invariants() const {
    std::lock_guard<std::mutex> lock(mu_);
    if (!ready_.check_invariants() || !deadlines_.check_invariants() || !levels_.check_invariants()) return false;
    std::uint64_t waiting = 0, queued = 0, in_flight = 0, free_slots = 0;
    std::vector<std::uint64_t> device_requests(devices_.size(), 0);
    for (Handle h = 0; h < slab_.size(); ++h) {
        const Request& r = slab_[h];
        if (r.state == State::Free) {
            ++free_slots;
            if (ready_.contains(h) || deadlines_.contains(h) || levels_.contains(h)) return false;
            continue;
        }
        if (ids_.find(r.id, id_of()) != h) return false;
        const bool timed = std::isfinite(r.deadline);
        switch (r.state) {
            case State::Waiting:
                ++waiting;
                if (r.deps_remaining == 0 || ready_.contains(h) || levels_.contains(h)) return false;
                if (deadlines_.contains(h) != timed) return false;
                break;
            case State::Queued:
                ++queued;
                if (!ready_.contains(h) || deadlines_.contains(h) != timed) return false;
                if (ready_.key_of(h).key != ready_key(r).key) return false;
                break;
            case State::InFlight:
                ++in_flight;
                if (ready_.contains(h) || deadlines_.contains(h) || levels_.contains(h)) return false;
                if (r.batch >= batches_.size()) return false;
                ++device_requests[batches_[r.batch].device];
                break;
            case State::Free: break;
        }
    }
    if (waiting != waiting_ || queued != queued_ || in_flight != in_flight_) return false;
    if (free_slots != free_handles_.size()) return false;
    if (ids_.size() != waiting + queued + in_flight) return false;
    for (std::size_t i = 0; i < devices_.size(); ++i) {
        if (devices_[i].inflight_requests != device_requests[i]) return false;
        if (devices_[i].inflight_batches > devices_[i].max_inflight_batches) return false;
    }
    const Counters& c = counters_;
    return c.accepted == c.completed + c.failed + c.expired + c.cancelled + waiting + queued + in_flight;
}

}  // namespace capsched
