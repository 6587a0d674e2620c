// A placement target as the core sees it. Names live in Python; the core uses indices.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "capsched/heap.hpp"
#include "capsched/pelt.hpp"

namespace capsched {

// Normalised capacity of the strongest device (Linux SCHED_CAPACITY_SCALE).
inline constexpr double kCapacityScale = 1024.0;

inline constexpr std::int64_t kUnlimitedTokens = -1;

struct DeviceSpec {
    double capacity = 1.0;                   // relative, > 0; normalised so the max is 1024
    std::uint32_t max_inflight_batches = 1;  // batches it may run at once, >= 1
    double max_clock = 1.0;                  // any unit, > 0
    double cur_clock = 1.0;                  // same unit, 0 < cur <= max
    std::int64_t kv_tokens = kUnlimitedTokens;  // KV-cache budget in tokens; -1 = unlimited
    double energy_per_token = 0.0;           // joules per token, >= 0 (0 = unknown)
    // Tenants pinned to this device (a slice). Empty: a shared device, open to every
    // tenant that is not pinned anywhere.
    std::vector<std::uint32_t> tenants;
};

struct Device {
    double capacity_orig = kCapacityScale;  // normalised, (0, 1024]
    double clock_scale = 1.0;               // cur_clock / max_clock, (0, 1]
    double max_clock = 1.0;
    double pressure = 0.0;                  // share taken by others (foreign processes), [0, 1)
    double capacity = kCapacityScale;       // usable: capacity_orig * clock_scale * (1 - pressure)
    std::int64_t kv_budget = kUnlimitedTokens;
    std::int64_t kv_used = 0;               // prompt + max_new of the requests in flight
    double placed_util = 0.0;               // sum of the in-flight requests' utilization
    double dl_bw = 0.0;                     // sum of admitted deadline-class bandwidths
    double energy_per_token = 0.0;
    std::vector<std::uint32_t> tenants;
    PeltSignal util;                        // occupancy, frequency- and capacity-invariant
    Handle inflight_head = kNoHandle;       // its in-flight requests (intrusive list)
    bool misfit_check = false;              // capacity dropped: check its requests next step
    std::uint32_t max_inflight_batches = 1;
    std::uint32_t inflight_batches = 0;
    std::uint64_t inflight_requests = 0;
    std::uint64_t dispatched_requests = 0;
    std::uint64_t dispatched_batches = 0;
    std::uint64_t completed_requests = 0;
};

}  // namespace capsched
