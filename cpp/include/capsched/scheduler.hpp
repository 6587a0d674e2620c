// The scheduler: owns requests (a slab addressed by handle), the ready queue, the deadline
// heap, the deadline-level timer heap, dependency edges and devices, behind one mutex.
//
// Time is an argument: every time-dependent call takes `now` (seconds, any epoch, finite).
// The core never reads a clock. Time never runs backwards inside the scheduler: a `now`
// earlier than the latest one seen is treated as the latest (threads that read a clock and
// then race for the mutex may arrive out of order).
//
// Lifecycle: submit -> Waiting (on dependencies) -> Queued -> InFlight -> ended as
// Completed | Failed | Expired | Cancelled; a retryable failure goes back to Queued.
// Conservation: accepted == completed + failed + expired + cancelled + waiting + queued +
// in_flight + retrying, at every instant (check_invariants() verifies it with everything else).
//
// Exceptions: every public call validates its whole input before it changes anything
// (strong guarantee); see errors.hpp.
#pragma once

#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "capsched/config.hpp"
#include "capsched/device.hpp"
#include "capsched/fair_queue.hpp"
#include "capsched/bucket_queue.hpp"
#include "capsched/heap.hpp"
#include "capsched/id_map.hpp"
#include "capsched/pelt.hpp"
#include "capsched/request.hpp"
#include "capsched/snapshot.hpp"

namespace capsched {

// What a step decided. Reuse one StepOutput across steps to avoid reallocating.
struct StepOutput {
    // Batch b runs on device batch_device[b] and holds
    // request_ids[batch_offsets[b] .. batch_offsets[b+1]).
    std::vector<std::uint32_t> batch_device;
    std::vector<std::uint64_t> batch_offsets;  // size batches + 1 (or 0 when cleared)
    std::vector<std::uint64_t> request_ids;
    std::vector<std::uint64_t> expired;
    // Misfits moved to a bigger device in this step: the server stops each on its old
    // device; it is also listed in the new device's batch above.
    std::vector<std::uint64_t> migrated;
    std::vector<std::uint32_t> migrated_from;
    // Requests that ended as failed outside the server's own fail() call (a dependency
    // failed, expired or was cancelled), with the reason.
    std::vector<std::uint64_t> failed;
    std::vector<std::string> failed_reasons;
    // Continuous mode: requests the server must evict from the device given (they are
    // queued again, their progress recorded), to make room for more urgent work.
    std::vector<std::uint64_t> preempted;
    std::vector<std::uint32_t> preempted_from;
    // The time the step ran at: its `now`, or the latest time seen if that was later.
    double now = 0.0;
    // When a batch was held back to fill: the latest time the server should step again
    // (the oldest member's max_queue_delay, or a member's slack running out); +inf if
    // nothing was held.
    double next_step_at = kInf;
    // Batches held back in this step (their members stay queued).
    std::uint32_t held = 0;

    void clear() noexcept;
    std::size_t num_batches() const noexcept { return batch_device.size(); }
};

struct Counters {
    std::uint64_t accepted = 0;
    std::uint64_t completed = 0;
    std::uint64_t failed = 0;
    std::uint64_t expired = 0;
    std::uint64_t cancelled = 0;
    std::uint64_t retried = 0;
    std::uint64_t dispatched = 0;  // dispatches, retries included
    std::uint64_t batches = 0;
    std::uint64_t placed_fitting = 0;   // placements on a device the request fits
    std::uint64_t placed_fallback = 0;  // nothing fitted: the largest spare capacity took it
    std::uint64_t misfits = 0;          // in-flight requests found not to fit their device
    std::uint64_t migrated = 0;         // of those, moved to a bigger device
    // Queued deadline-class requests moved to another device's bandwidth because their
    // admitting device's capacity dropped below what it had admitted.
    std::uint64_t readmitted = 0;
    std::uint64_t held = 0;       // batches held back to fill (each step counts)
    std::uint64_t trimmed = 0;    // requests put back to cut a batch to a preferred size
    std::uint64_t preempted = 0;  // requests evicted for more urgent work
    // Placements passed over because only devices too slow for the request's deadline
    // had room (it waits for one in time); each step counts.
    std::uint64_t deferred = 0;
    std::uint64_t breaker_trips = 0;  // times a device's breaker opened
};

// What the scheduler knows of a request class: util_est of its work per token (from
// completions) and a PELT signal of the device capacity its in-flight requests occupy.
struct ClassState {
    UtilEst est;
    PeltSignal util;       // frequency- and capacity-invariant, 0..sum of capacities
    double running = 0.0;  // current contribution: sum over its in-flight requests
};

struct Stats {
    Counters counters;
    std::uint64_t waiting = 0;
    std::uint64_t queued = 0;
    std::uint64_t in_flight = 0;
    std::uint64_t retrying = 0;  // waiting out a retry backoff
    // Queued requests by scheduling class: deadline, strict, normal, background.
    std::uint64_t queued_by_class[4] = {0, 0, 0, 0};
    double now = 0.0;  // latest time seen
    std::vector<Device> devices;
};

class Scheduler {
  public:
    Scheduler(const SchedulerConfig& cfg, const std::vector<DeviceSpec>& devices);
    Scheduler(const Scheduler&) = delete;
    Scheduler& operator=(const Scheduler&) = delete;

    // Pre-sizes storage for n live requests, so that the hot path does not allocate.
    void reserve(std::size_t n);

    // Accepts one request; returns its id (1, 2, 3, ... in submission order).
    std::uint64_t submit(const RequestSpec& spec, double now);

    // Accepts n requests, all or none: every element is validated before any is accepted.
    // Arrays hold n values each; timeout/deadline NaN means none. ids receives n ids.
    void submit_many(std::size_t n, const std::int64_t* prompt_tokens,
                     const std::int64_t* max_new_tokens, const double* priority,
                     const double* timeout, const double* deadline, double now,
                     std::uint64_t* ids);

    // Expires, applies deadline-level changes, dispatches; see docs/policies.md and
    // docs/batching.md. Batch mode: each device opens at most one batch per step, within
    // max_inflight_batches.
    void step(double now, StepOutput& out);
    // Continuous (iteration-level) mode: free_slots[d] new requests may join device d in
    // this step (0 = none; -1 = not reported: none, and no preemption there), free_kv[d] (< 0: not reported, the device's own budget
    // applies; at most 2^62) bounds their prompt + max_new tokens. Arrays of num_devices() values.
    void step_continuous(double now, const std::int64_t* free_slots, const std::int64_t* free_kv,
                         StepOutput& out);

    // The request must be in flight. Ends it as completed and releases its dependents.
    // output_tokens (>= 0; < 0 = not reported) is what it generated: the service-time
    // model learns from it instead of max_new_tokens.
    void complete(std::uint64_t id, double now, std::int64_t output_tokens = -1);
    // All or none: every id must be in flight and listed once.
    void complete_many(const std::uint64_t* ids, std::size_t n, double now);

    // The request must be in flight. Returns true if it was re-queued for another try
    // (retryable, tries left, deadline not passed); otherwise it ends as failed.
    bool fail(std::uint64_t id, double now, bool retryable, std::string_view error);

    // Ends a waiting, queued or in-flight request as cancelled; returns false if it had
    // already ended. Throws UnknownRequest for an id never issued.
    bool cancel(std::uint64_t id);

    // Device clock (frequency invariance and thermal pressure): cur in (0, max]; max NaN
    // keeps the current maximum. Applies from `now` on.
    void set_clock(std::uint32_t device, double cur, double max, double now);
    // Share of the device taken by work the scheduler does not place (foreign processes),
    // in [0, 1). Usable capacity = capacity_orig * clock_scale * (1 - pressure).
    void set_pressure(std::uint32_t device, double pressure, double now);
    // util_est of a request class: (seen, ewma, last) of invariant work per token, s.
    UtilEst class_estimate(std::uint32_t request_class) const;
    // PELT utilization of a request class at the latest time seen: the device capacity
    // (in 1024 units, summed over devices) its in-flight requests have occupied, decayed
    // like a device's signal. The classes' signals add up to the devices' signals.
    double class_util(std::uint32_t request_class) const;

    // Estimated service time of a batch on a device at its current clock, s: from its
    // service model when seeded, else from the classes' util_est (docs/batching.md).
    double estimate_service(std::uint32_t device, double prompt_tokens, double steps, double batch) const;
    // (evictions, seconds run before them) of a live request.
    std::pair<std::uint32_t, double> preemption_info(std::uint64_t id) const;

    // Fair share (SchedulerConfig::fair): a tenant's weight, (0, kMaxTenantWeight]
    // (default 1); its service counter; and the virtual time new backlogs start from.
    void set_tenant_weight(std::uint32_t tenant, double weight);
    double tenant_weight(std::uint32_t tenant) const;
    double tenant_counter(std::uint32_t tenant) const;
    double fair_virtual_time() const;

    RequestStatus status(std::uint64_t id) const;
    Stats stats() const;
    std::size_t num_devices() const noexcept { return devices_.size(); }
    const SchedulerConfig& config() const noexcept { return cfg_; }

    // O(n) consistency check of every structure and of conservation. For tests.
    bool check_invariants() const;

    // Checkpoints (docs/operations.md): the whole state as plain data, in flight included;
    // columnar: the requests in out.columns (out.requests empty), a third of the memory
    // of the rows for a large queue, and no second pass to make columns of them.
    void export_state(StateSnapshot& out, bool columnar = false) const;
    // Queues every in-flight request again (after a restore: the server lost them), in id
    // order, keeping its arrival; returns how many.
    std::uint64_t requeue_in_flight(double now);
    // Loads a snapshot into a scheduler that has accepted nothing yet and has as many
    // devices; validates it all first (ConfigError naming the first inconsistency).
    void import_state(const StateSnapshot& in);

  private:
    // An entry of the timer heap (timers_).
    struct Timer {
        double at;
        std::uint32_t id_lo;  // the low 32 bits of its id: the tie-break (see timers_)
        Handle handle;
    };
    struct TimerEarlier {  // the timer heap's order: (at, id_lo)
        bool operator()(const Timer& a, const Timer& b) const noexcept {
            return a.at < b.at || (a.at == b.at && a.id_lo < b.id_lo);
        }
    };
    struct Edge {
        std::uint64_t dependent_id;
        Handle dependent;
        std::uint32_t next;
    };
    struct Batch {
        std::uint32_t device = 0;
        std::uint32_t remaining = 0;
        std::uint32_t size = 0;        // members at dispatch
        std::int64_t tokens = 0;       // prompt + max_new of its members
        std::int64_t prompt = 0;       // prompt tokens of its members
        std::int64_t max_new = 0;      // largest max_new_tokens of its members
        std::int64_t steps = 0;        // decode steps seen: max output (reported, else max_new)
        double work = 0.0;             // invariant work of its members (util_est x tokens), s
        double dispatched_at = 0.0;
        bool counted = true;           // counts in its device's inflight_batches (batch mode)
        bool clean = true;             // every member that left it completed
        bool migrant = false;          // took a migrant in this step (goes at once)
        bool solo = false;             // a lone non-batchable request
        bool probe = false;            // opened on a half-open device
    };
    struct StepMember {
        std::uint32_t step_batch;
        Handle handle;
        std::uint64_t id;
        std::uint8_t kind;  // 0 placed fitting, 1 fallback, 2 migrant
        bool kept;
        bool charged;     // fair share: its tenant's counter was charged for it
        double fair_from;  // (charged) the counter it was charged from
    };

    double advance_clock(double now);
    void validate_spec(const RequestSpec& s, double now) const;
    void validate_dependencies(const RequestSpec& s);
    std::uint64_t accept(const RequestSpec& s, double now);
    Handle alloc_request();
    // lift = false: no fair-share lift (a member of a held batch, which never left
    // its tenant's backlog as far as fair share is concerned).
    void make_ready(Handle h, double now, bool lift = true);
    // Pushes the request's current timer (see timers_), making any earlier one stale.
    void arm_timer(Handle h);
    bool timer_current(const Timer& e) const noexcept;
    double timer_at(const Request& r) const noexcept;  // its expected timer time
    void pop_timer() noexcept;
    double static_key(const Request& r) const noexcept;
    // A request's RequestExt, allocated (with defaults) if it has none yet.
    RequestExt& ext_of(Handle h);
    // Its RequestExt, or the defaults when it has none.
    const RequestExt& cold(const Request& r) const noexcept { return r.ext == kNoIndex ? default_ext_ : ext_[r.ext]; }
    void add_edge(Handle dependency, Handle dependent);
    void set_level(Handle h, double now);
    ReadyKey ready_key(const Request& r) const noexcept;
    double level_time(const Request& r, std::uint32_t k) const noexcept;
    Handle find_live(std::uint64_t id, const char* what) const;
    Handle find_in_flight(std::uint64_t id, const char* what) const;
    void leave_batch(Request& r);
    void off_device(Handle h);
    // Removes a live request from every structure, counts its outcome and frees its slot;
    // returns the head of its dependents list.
    std::uint32_t detach(Handle h, Outcome how);
    // detach(), then releases (completed) or fails (otherwise) its dependents.
    void end(Handle h, Outcome how, std::string_view detail);
    void release_dependents(std::uint32_t edges);
    void fail_dependents(std::uint32_t edges, std::uint64_t cause, Outcome how, std::string_view detail);
    void free_edge(std::uint32_t e) noexcept;
    // Drops the edges of dependents no longer waiting from h's list; returns those left.
    std::uint32_t prune_dependents(Handle h) noexcept;
    void complete_locked(Handle h, std::int64_t output_tokens);
    void check_device(std::uint32_t device) const;
    void touch(Device& d, double now) noexcept;
    void refresh_capacity(Device& d) noexcept;
    double request_util(const Request& r, double now) const noexcept;
    double util_of(std::uint32_t request_class, double tokens, double due, double uclamp_min, double uclamp_max,
                   double now) const noexcept;
    std::uint32_t admit(const RequestSpec& s, double deadline, double now) const;
    ReadyQueue& queue_of(const Request& r) noexcept;
    const ReadyQueue& queue_of(const Request& r) const noexcept;
    void erase_ready(Handle h) noexcept;
    // The normal class's queue is ready_, or fair_ under fair share: these go to the one
    // in use.
    void push_normal(Handle h, const ReadyKey& key, bool lift = true);
    const ReadyKey& queued_key(const Request& r, Handle h) const noexcept;
    // Takes the head of r's queue (h) out for the rest of the step (placement passed it
    // over); put_back() returns it.
    void pass_over(const Request& r, Handle h);
    void put_back(Handle h, const ReadyKey& key);
    Handle normal_head() const noexcept;
    // Fair share: a dispatch charges the tenant (and moves the virtual time up to the
    // tenant's counter before the charge); an undispatch gives the charge back.
    double fair_cost(const Request& r) const noexcept;
    double weight_of(std::uint32_t tenant) const noexcept {
        return tenant < tenant_weight_.size() ? tenant_weight_[tenant] : 1.0;
    }
    void fair_charge(const Request& r, double sign);
    bool has_room(std::uint32_t dev, const Request& r) const noexcept;
    void place_deadline(double now);
    Handle next_ready() const noexcept;
    void refresh_groups() noexcept;
    void learn_service(Device& d, double prompt, double steps, double batch, double observed) noexcept;
    std::uint32_t group_of(std::uint32_t tenant) const noexcept;
    std::uint32_t choose_symmetric(std::uint32_t group, const Request& r) noexcept;
    double class_share(const Device& d) const noexcept;
    void class_enter(const Request& r, const Device& d, double now) noexcept;
    void class_leave(const Request& r, const Device& d, double now) noexcept;
    void readmit_deadline(std::uint32_t dev);
    bool eligible(const Device& d, std::uint32_t tenant, std::uint32_t pool, std::uint32_t fallback) const noexcept;
    bool eligible(const Device& d, const Request& r) const noexcept {
        const RequestExt& x = cold(r);
        return eligible(d, r.tenant, x.pool, x.fallback_pool);
    }
    std::uint32_t open_batch(std::uint32_t device);
    void dispatch(Handle h, std::uint32_t batch, double util, double now, std::uint8_t kind);
    void undispatch(StepMember& m, double now);
    double work_per_token(std::uint32_t request_class) const noexcept;
    double next_uniform() noexcept;
    void check_room(std::uint32_t tenant, std::uint64_t n) const;
    void device_outcome(Device& d, bool failed, double now) noexcept;
    void pending(std::uint32_t tenant, bool add) {
        if (add) {
            if (tenant >= tenant_pending_.size()) tenant_pending_.resize(tenant + std::size_t{1}, 0);
            ++tenant_pending_[tenant];
        } else {
            --tenant_pending_[tenant];
        }
    }
    double retry_delay(std::uint32_t retry) noexcept;
    bool in_time(const Device& d, const Request& r) const noexcept;
    void run_step(double now, StepOutput& out);
    std::uint32_t batch_limit(const Device& d) const noexcept;
    bool device_closed(std::uint32_t dev) const noexcept;
    double service_estimate(const Device& d, double prompt, double steps, double batch, double work) const noexcept;
    void hold_batches(double now, StepOutput& out);
    void hold_or_trim(double now, StepOutput& out);
    void preempt(double now, StepOutput& out);
    void batch_finished(Batch& b, Device& d);
    void migrate_misfits(double now, StepOutput& out);
    void emit_step(StepOutput& out);
    // listed: scan the step's list of devices with room (placement), else every device.
    std::uint32_t choose_device(const Request& r, double u, const Device* bigger_than, double min_capacity,
                                bool* fitted, bool* wait, bool listed);
    bool within_bounds(const Device& d, const Request& r, const Device* bigger_than,
                       double min_capacity) const noexcept;
    bool any_in_time(const Request& r, const Device* bigger_than, double min_capacity) const noexcept;
    bool could_fit(const Request& r, double u, const Device* bigger_than, double min_capacity) const noexcept;
    // Placement's choice among fitting devices, in two levels (docs/placement.md): devices
    // with the same KV budget compare by fit_key (request-independent), the best of each
    // budget by score. Keys of the placement heaps (fit_heaps_, spare_heaps_) too.
    struct FitKey {
        double first;        // fit_key: energy per token with energy_aware, else 0; spare_key: -spare
        double second;       // fit_key: -(score_compute x spare / 1024 + score_memory x free KV share); spare_key: 0
        std::uint32_t pos;   // place in device_order_ (ties)
        friend bool operator<(const FitKey& a, const FitKey& b) noexcept {
            if (a.first != b.first) return a.first < b.first;
            if (a.second != b.second) return a.second < b.second;
            return a.pos < b.pos;
        }
    };
    struct FitBest {
        std::uint32_t dev = kNoIndex;
        FitKey key{};
        double score = 0.0;
    };
    using FitHeap = IndexedHeap<FitKey, 4, SharedPositions>;
    static constexpr std::uint32_t kUnsure = kNoIndex - 1;  // (a heap search that looked too far)
    FitKey fit_key(std::uint32_t dev, double spare) const noexcept;
    FitKey spare_key(std::uint32_t dev, double spare) const noexcept { return FitKey{-spare, 0.0, order_pos_[dev]}; }
    double spare_of(std::uint32_t dev) const noexcept;
    double fit_score(const Device& d, double spare, double u, std::int64_t tokens) const noexcept;
    void offer_fit(std::uint32_t dev, double spare, double u, std::int64_t tokens) noexcept;
    std::uint32_t take_best_fit() noexcept;
    bool fits_now(std::uint32_t dev, const Request& r, double u, double min_capacity) const noexcept;
    void build_fit_heaps();
    template <class Pred>
    static std::uint32_t first_in_heap(const FitHeap& heap, Pred pred) noexcept;
    std::uint32_t choose_by_fit_heaps(const Request& r, double u, double min_capacity) noexcept;
    std::uint32_t fallback_by_spare_heaps(const Request& r, double min_capacity) const noexcept;
    template <class Pred>
    std::uint32_t best_by_spare_heaps(const Request& r, Pred pred) const noexcept;
    bool all_in_time(const Request& r) const noexcept;
    bool none_in_time(const Request& r) const noexcept;
    bool could_fit_by_parts(const Request& r, double u, double min_capacity) const noexcept;
    std::uint32_t unfit_by_heaps(const Request& r, double u, double min_capacity, bool* wait, bool timely) const noexcept;
    void fit_heap_touch(std::uint32_t dev) noexcept;
    void place_by_fitness(double now);
    bool place_background(double now);  // whether it placed any
    void set_outcome(std::uint64_t id, Outcome how);
    Outcome outcome(std::uint64_t id) const noexcept;

    // Reads a live handle's id for the id map.
    auto id_of() const noexcept {
        return [this](Handle h) { return slab_[h].id; };
    }

    SchedulerConfig cfg_;
    std::vector<Device> devices_;
    std::vector<std::uint32_t> device_order_;  // strongest first
    // During a step's placement (place_deadline .. place_background): the devices, in
    // device_order_, that were not closed (device_closed) when the list was made, on
    // the first capacity-aware placement of the step. Within placement a device only
    // fills up, so one closed then stays closed: choose_device scans this list instead of
    // every device, and drops the devices it finds closed. Placement of a request on a
    // mostly busy mixed fleet costs O(devices with room), not O(devices).
    std::vector<std::uint32_t> open_devices_;
    bool open_listed_ = false;  // the list was made in this step
    // The same devices as open_devices_ in heaps, two per partition (devices with the
    // same KV budget, pool and tenant list, so that every device of a partition is open
    // to the same requests): by fit_key (the fitting choice) and by spare_key (the most
    // spare capacity: a partition whose most is too little for a request is skipped, and
    // the fallback is its top with room). Once a step's placement has scanned the list a
    // few times, each further request looks at the tops instead of every device with
    // room, and the device it is placed on moves down its heaps (or leaves them, once
    // full). Built during place_by_fitness only. A request the heaps cannot settle within
    // a few devices per heap scans the list instead, so the heaps choose as the scan
    // does, at no more than the scan's cost. Each heap holds a pointer to its shared
    // position index (fit_pos_, spare_pos_): the Scheduler is never moved (it holds a
    // mutex), so the pointers stay valid.
    static constexpr std::size_t kMaxFitHeaps = 64;
    static constexpr std::size_t kFitHeapFrom = 32;   // open devices, at least
    static constexpr std::uint32_t kFitScansFirst = 4;  // list scans before the heaps are built
    std::vector<std::uint32_t> order_pos_;     // by device: its place in device_order_
    std::vector<std::uint32_t> kv_class_;      // by device: dense id of its KV budget
    std::vector<std::uint32_t> fit_part_;      // by device: its partition
    std::vector<std::uint32_t> fit_pos_;       // fit_heaps_' shared position index (by device)
    std::vector<std::uint32_t> spare_pos_;     // spare_heaps_' shared position index (by device)
    std::vector<FitHeap> fit_heaps_;           // by partition; empty when there are too many
    std::vector<FitHeap> spare_heaps_;         // by partition, as fit_heaps_
    std::vector<FitBest> kv_best_;             // by KV class: the best fitting device offered
    std::vector<std::uint32_t> kv_touched_;    // the KV classes offered one
    bool fit_phase_ = false;                   // place_by_fitness is placing
    bool fit_heaps_on_ = false;                // the heaps hold this step's open devices
    std::uint32_t fit_scans_ = 0;              // list scans in this step's place_by_fitness
    PeltParams pelt_;
    std::vector<ClassState> classes_;
    // Placement groups: group 0 holds the shared devices (no tenant list); each pinned
    // tenant has a group of the devices that list it. Strongest first. A group whose
    // devices cannot be told apart (same usable capacity, KV budget and energy) is
    // placed by the symmetric fast path; checked again at the next step after a device's
    // capacity or service model changed (groups_stale_).
    std::vector<std::uint32_t> tenant_group_;   // by tenant id; 0 = shared
    std::vector<std::uint8_t> pool_exists_;     // by pool id
    std::vector<std::uint8_t> pool_down_;       // by pool id: every device's breaker is open (per step)
    std::vector<std::vector<std::uint32_t>> group_devices_;
    std::vector<std::uint8_t> group_symmetric_;
    bool groups_stale_ = true;  // group_symmetric_ needs refresh_groups' check (set where its inputs change)
    std::vector<std::uint32_t> group_cursor_;   // per step: first device that may have room
    std::vector<std::uint64_t> group_queued_;   // queued normal + strict requests per group
    std::vector<std::uint8_t> group_blocked_;   // per step: its head found no device
    std::vector<std::uint64_t> group_skipped_;  // per step: its queued requests passed over (still queued)
    std::vector<std::pair<Handle, ReadyKey>> skipped_;  // per step: passed over, put back
    // Per step scratch: the batch each device opened in this step (kNoIndex if none),
    // whether it is a lone non-batchable one, and (step batch, id) of each placement.
    std::vector<std::uint32_t> step_batch_;
    std::vector<std::uint8_t> step_solo_;
    std::vector<std::uint32_t> step_batches_;  // batch slots opened this step, in order
    std::vector<StepMember> step_members_;
    bool continuous_ = false;                 // this step is a continuous-mode one
    std::vector<std::int64_t> step_slots_;    // continuous: slots left per device
    std::vector<std::int64_t> step_kv_;       // continuous: KV tokens left (< 0: own budget)
    std::vector<std::size_t> cursor_;
    std::vector<std::uint64_t> dep_scratch_;
    std::vector<Handle> handle_scratch_;
    std::vector<Handle> complete_scratch_;  // complete_many: the handles its check found

    mutable std::mutex mu_;
    double now_ = -kInf;
    std::uint64_t next_id_ = 1;

    std::vector<Request, LineAllocator<Request>> slab_;  // (huge pages when large)
    std::vector<Handle> free_handles_;
    std::vector<RequestExt> ext_;
    std::vector<std::uint32_t> free_ext_;
    // By ext slot: edges in that request's dependents list (RequestExt is one cache line
    // and full). Edges of dependents that ended early stay until the list is pruned.
    std::vector<std::uint32_t> ext_dependents_;
    const RequestExt default_ext_{};
    IdMap ids_;
    ReadyQueue ready_;      // queued normal-class requests by policy key
    // Under fair share, queued normal-class requests instead, by tenant (ready_ is empty).
    FairQueue fair_;
    bool fair_on_ = false;
    double fair_vtime_ = 0.0;              // virtual time: see docs/policies.md
    double fair_vtime_before_step_ = 0.0;  // fair_vtime_ when placement began (hold_batches)
    std::vector<double> tenant_weight_;    // by tenant id; missing = 1
    ReadyQueue rt_ready_;   // queued strict-class requests: (-priority + aging x arrival, id)
    ReadyQueue dl_ready_;   // queued deadline-class requests: (deadline, id)
    ReadyQueue bg_ready_;   // queued background-class requests: (arrival, id)
    // Timers of waiting, queued and retrying requests with a deadline: a min-heap by
    // (at, low 32 bits of the id), 16 bytes an entry. Each such request has an entry at
    // its expected time: its next deadline-level change (weighted policy, queued normal
    // class, level < Q), else its deadline. Entries are never erased in place: an entry is
    // current while its slot holds a timed request (same low id bits) whose expected time
    // or deadline is the entry's time, and stale otherwise (skipped when it surfaces; the
    // heap is compacted when stale entries outnumber live ones, so it holds at most about
    // twice as many entries as there are timed requests). A deadline entry is always
    // right to act on (the request expires then), so a duplicate is harmless: the first
    // ends the request and the next finds it gone. Ties are broken by the low 32 bits of
    // the id, which is id order unless the tied ids straddle a multiple of 2^32.
    MinHeap<Timer, TimerEarlier> timers_;
    IndexedHeap<> retries_;    // retrying requests by (time their backoff ends, id)
    std::uint64_t rng_ = 0;    // splitmix64 state of the retry jitter
    std::vector<Edge> edges_;
    std::uint32_t free_edge_ = kNoIndex;
    std::vector<Batch> batches_;
    std::vector<std::uint32_t> free_batches_;
    std::vector<std::uint64_t> outcomes_;  // 2 bits per id ever issued, for ended ids

    Counters counters_;
    std::uint64_t waiting_ = 0;
    std::uint64_t queued_ = 0;
    std::uint64_t in_flight_ = 0;
    std::uint64_t retrying_ = 0;
    std::vector<std::uint64_t> tenant_pending_;  // per tenant: waiting + queued + retrying
    std::int64_t min_kv_budget_ = INT64_MAX;  // smallest KV budget of a device with one

    // Failures that happened outside step() (dependency cascades), reported by the next
    // step; and a scratch stack for cascades.
    std::vector<std::uint64_t> pending_failed_;
    std::vector<std::string> pending_reasons_;
    std::vector<std::pair<std::uint32_t, std::uint64_t>> cascade_stack_;  // (edge list, cause id)
    std::vector<std::pair<std::uint32_t, std::uint64_t>> expired_heads_;  // (edge list, expired id)

    // Set by build_fit_heaps, for requests with a deadline that fit no device: bounds on
    // any device's service-model estimate of a request alone (seconds per prompt token,
    // per output token, at the device's clock), the largest over every device with a
    // seeded model (all_in_time) and the smallest when every device has one
    // (none_in_time); and by partition, the largest capacity of any of its devices and
    // one of them (could_fit_by_parts). (Kept apart from the members a step touches
    // every time.)
    double fit_time_prompt_ = 0.0;
    double fit_time_steps_ = 0.0;
    double fit_time_prompt_lo_ = 0.0;
    double fit_time_steps_lo_ = 0.0;
    bool fit_any_known_ = false;
    bool fit_all_known_ = false;
    std::vector<double> part_max_capacity_;
    std::vector<std::uint32_t> part_member_;
};

}  // namespace capsched
