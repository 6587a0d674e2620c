// A scheduler's whole state as plain data, for checkpoints (Scheduler::export_state,
// Scheduler::import_state), in-flight requests and their batches included, so that a
// journal replayed on it reproduces the original exactly; Scheduler::requeue_in_flight
// then queues what was in flight again. Per-step scratch is not saved.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "capsched/request.hpp"

namespace capsched {

struct RequestSnapshot {
    std::uint64_t id = 0;
    std::uint8_t state = 0;  // State::Waiting, Queued, InFlight or Retrying
    double arrival = 0.0;
    double deadline = kInf;
    double priority = 0.0;
    std::uint32_t prompt_tokens = 0;
    std::uint32_t max_new_tokens = 1;
    double uclamp_min = 0.0;
    double uclamp_max = 1.0;
    std::uint32_t tenant = 0;
    std::uint32_t request_class = 0;
    std::uint8_t sched_class = 0;
    bool batchable = true;
    std::uint32_t retries = 0;
    std::uint32_t preemptions = 0;
    double progress = 0.0;
    double retry_at = 0.0;           // Retrying: when its backoff ends
    std::uint32_t dl_device = kNoIndex;
    double dl_bw = 0.0;
    std::uint32_t pool = 0, fallback_pool = 0;
    std::vector<std::uint64_t> waits_on;  // Waiting: live dependencies not completed yet
    // InFlight: its batch (index into StateSnapshot::batches), utilization, dispatch time.
    std::uint32_t batch = kNoIndex;
    double util = 0.0;
    double dispatched_at = 0.0;
};

// The live requests by column (a checkpoint's format 2: StateSnapshot::columnar), in id
// order: RequestSnapshot's fields one array each, waits_on flattened with waits_on_count
// per request, batchable as 0 or 1. All in one allocation (`buffer`, each column 8-byte
// aligned): a checkpoint taken every few seconds then reuses the same memory, where one
// allocation per column was returned to the system and faulted in again each time.
// Move-only: the column pointers point into `buffer`.
struct RequestColumns {
    std::size_t count = 0;  // requests
    std::size_t edges = 0;  // waits_on entries
    std::unique_ptr<unsigned char[]> buffer;  // (storage: the columns' arrays live in it)
    std::size_t bytes = 0;  // buffer's size
    std::uint64_t* id = nullptr;
    std::uint8_t* state = nullptr;
    double *arrival = nullptr, *deadline = nullptr, *priority = nullptr;
    std::uint32_t *prompt_tokens = nullptr, *max_new_tokens = nullptr;
    double *uclamp_min = nullptr, *uclamp_max = nullptr;
    std::uint32_t *tenant = nullptr, *request_class = nullptr;
    std::uint8_t *sched_class = nullptr, *batchable = nullptr;
    std::uint32_t *retries = nullptr, *preemptions = nullptr;
    double *progress = nullptr, *retry_at = nullptr;
    std::uint32_t* dl_device = nullptr;
    double* dl_bw = nullptr;
    std::uint32_t *pool = nullptr, *fallback_pool = nullptr, *batch = nullptr;
    double *util = nullptr, *dispatched_at = nullptr;
    std::uint32_t* waits_on_count = nullptr;
    std::uint64_t* waits_on = nullptr;

    RequestColumns() = default;
    RequestColumns(RequestColumns&&) = default;
    RequestColumns& operator=(RequestColumns&&) = default;
    RequestColumns(const RequestColumns&) = delete;
    RequestColumns& operator=(const RequestColumns&) = delete;

    // Room for n requests with e waits_on entries in all (contents unset).
    void layout(std::size_t n, std::size_t e) {
        count = n;
        edges = e;
        std::size_t at = 0;  // in bytes, each column starting 8-byte aligned
        const auto take = [&at](std::size_t len, std::size_t size) {
            const std::size_t start = at;
            at += (len * size + 7) / 8 * 8;
            return start;
        };
        const std::size_t o[26] = {take(n, 8), take(n, 1), take(n, 8), take(n, 8), take(n, 8), take(n, 4), take(n, 4),
                                   take(n, 8), take(n, 8), take(n, 4), take(n, 4), take(n, 1), take(n, 1), take(n, 4),
                                   take(n, 4), take(n, 8), take(n, 8), take(n, 4), take(n, 8), take(n, 4), take(n, 4),
                                   take(n, 4), take(n, 8), take(n, 8), take(n, 4), take(e, 8)};
        bytes = at;
        buffer.reset(new unsigned char[at > 0 ? at : 8]);
        unsigned char* b = buffer.get();
        const auto as = [b](std::size_t offset, auto* type) { return reinterpret_cast<decltype(type)>(b + offset); };
        id = as(o[0], id), state = as(o[1], state), arrival = as(o[2], arrival), deadline = as(o[3], deadline);
        priority = as(o[4], priority), prompt_tokens = as(o[5], prompt_tokens), max_new_tokens = as(o[6], max_new_tokens);
        uclamp_min = as(o[7], uclamp_min), uclamp_max = as(o[8], uclamp_max), tenant = as(o[9], tenant);
        request_class = as(o[10], request_class), sched_class = as(o[11], sched_class), batchable = as(o[12], batchable);
        retries = as(o[13], retries), preemptions = as(o[14], preemptions), progress = as(o[15], progress);
        retry_at = as(o[16], retry_at), dl_device = as(o[17], dl_device), dl_bw = as(o[18], dl_bw);
        pool = as(o[19], pool), fallback_pool = as(o[20], fallback_pool), batch = as(o[21], batch);
        util = as(o[22], util), dispatched_at = as(o[23], dispatched_at), waits_on_count = as(o[24], waits_on_count);
        waits_on = as(o[25], waits_on);
    }
    // Request i's fields; its waits_on go at *edge onwards (advanced past them).
    void set(std::size_t i, const RequestSnapshot& q, std::size_t& edge) {
        id[i] = q.id;
        state[i] = q.state;
        arrival[i] = q.arrival;
        deadline[i] = q.deadline;
        priority[i] = q.priority;
        prompt_tokens[i] = q.prompt_tokens;
        max_new_tokens[i] = q.max_new_tokens;
        uclamp_min[i] = q.uclamp_min;
        uclamp_max[i] = q.uclamp_max;
        tenant[i] = q.tenant;
        request_class[i] = q.request_class;
        sched_class[i] = q.sched_class;
        batchable[i] = q.batchable ? 1 : 0;
        retries[i] = q.retries;
        preemptions[i] = q.preemptions;
        progress[i] = q.progress;
        retry_at[i] = q.retry_at;
        dl_device[i] = q.dl_device;
        dl_bw[i] = q.dl_bw;
        pool[i] = q.pool;
        fallback_pool[i] = q.fallback_pool;
        batch[i] = q.batch;
        util[i] = q.util;
        dispatched_at[i] = q.dispatched_at;
        waits_on_count[i] = static_cast<std::uint32_t>(q.waits_on.size());
        for (const std::uint64_t w : q.waits_on) waits_on[edge++] = w;
    }
};

struct BatchSnapshot {
    std::uint32_t device = 0, size = 0;
    std::int64_t tokens = 0, prompt = 0, max_new = 0, steps = 0;
    double work = 0.0, dispatched_at = 0.0;
    bool counted = true, clean = true, probe = false;
};

struct PeltSnapshot {
    bool started = false;
    double last = 0.0, sum = 0.0, contrib = 0.0, avg = 0.0;
};

struct DeviceSnapshot {
    double clock_scale = 1.0, max_clock = 1.0, pressure = 0.0;
    PeltSnapshot util;
    double service_m[3] = {1.0, 1.0, 1.0};
    double service_cov[9] = {1, 0, 0, 0, 1, 0, 0, 0, 1};
    std::uint64_t service_samples = 0;
    double batch_limit = 0.0;
    std::uint8_t breaker = 0;
    std::uint32_t consecutive_failures = 0;
    double fail_rate = 0.0, open_until = 0.0;
    bool probe_out = false;
    double placed_util = 0.0;
    std::vector<std::uint64_t> inflight;  // its in-flight ids, most recently dispatched first
    std::uint64_t breaker_trips = 0, dispatched_requests = 0, dispatched_batches = 0, completed_requests = 0,
                  preempted_requests = 0;
};

struct ClassSnapshot {
    bool seen = false;
    double ewma = 0.0, last = 0.0;
    PeltSnapshot util;
    double running = 0.0;
};

struct StateSnapshot {
    static constexpr std::uint32_t kVersion = 1;
    double now = -kInf;
    std::uint64_t next_id = 1;
    std::uint64_t rng = 0;
    // Counters, in the order of Counters' fields.
    std::vector<std::uint64_t> counters;
    std::vector<std::uint64_t> outcomes;  // 2 bits per id ever issued
    std::vector<RequestSnapshot> requests;  // (empty when columnar)
    bool columnar = false;                  // the requests are in `columns` instead
    RequestColumns columns;
    std::vector<BatchSnapshot> batches;
    std::vector<DeviceSnapshot> devices;
    std::vector<ClassSnapshot> classes;
    // Dependency failures not yet reported by a step (StepOutput::failed), with reasons.
    std::vector<std::uint64_t> pending_failed;
    std::vector<std::string> pending_reasons;
};

}  // namespace capsched
