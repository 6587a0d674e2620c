// A scheduler's whole state as plain data, for checkpoints (Scheduler::export_state,
// Scheduler::import_state), in-flight requests and their batches included, so that a
// journal replayed on it reproduces the original exactly; Scheduler::requeue_in_flight
// then queues what was in flight again. Per-step scratch is not saved.
#pragma once

#include <cstdint>
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
    std::vector<RequestSnapshot> requests;
    std::vector<BatchSnapshot> batches;
    std::vector<DeviceSnapshot> devices;
    std::vector<ClassSnapshot> classes;
    // Dependency failures not yet reported by a step (StepOutput::failed), with reasons.
    std::vector<std::uint64_t> pending_failed;
    std::vector<std::string> pending_reasons;
};

}  // namespace capsched
