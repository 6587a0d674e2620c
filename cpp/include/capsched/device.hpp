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
    // Service-time model seeds at full clock, s (>= 0; all 0 = unknown: estimates come
    // from the request classes' util_est instead): prefill per prompt token, one decode
    // step, and one decode step's extra per sequence in the batch.
    double prefill_s_per_token = 0.0;
    double decode_step_s = 0.0;
    double decode_s_per_seq = 0.0;
    // Its pool (device class) for requests that ask for one; 0 = none (1..kMaxPools).
    std::uint32_t pool = 0;
    // Tenants pinned to this device (a slice). Empty: a shared device, open to every
    // tenant that is not pinned anywhere.
    std::vector<std::uint32_t> tenants;
};

// Online service-time model of one device (docs/batching.md):
//   T(prompt P, steps S, batch B) = (m0 x p x P + m1 x d x S + m2 x e x S x B) / clock_scale
// with seeds (p, d, e) from the DeviceSpec and multipliers m learned by recursive least
// squares (forgetting factor 0.98) from finished batches (batch mode) or requests
// (continuous mode). Multipliers are kept in [1/16, 16].
struct ServiceModel {
    double seed[3] = {0.0, 0.0, 0.0};
    double m[3] = {1.0, 1.0, 1.0};
    double cov[3][3] = {{1.0, 0.0, 0.0}, {0.0, 1.0, 0.0}, {0.0, 0.0, 1.0}};
    std::uint64_t samples = 0;

    bool known() const noexcept { return seed[0] > 0.0 || seed[1] > 0.0 || seed[2] > 0.0; }
    // At full clock.
    double estimate(double prompt, double steps, double batch) const noexcept {
        return m[0] * seed[0] * prompt + m[1] * seed[1] * steps + m[2] * seed[2] * steps * batch;
    }
    void learn(double prompt, double steps, double batch, double observed) noexcept {
        const double z[3] = {seed[0] * prompt, seed[1] * steps, seed[2] * steps * batch};
        const double lambda = 0.98;
        double pz[3];
        for (int i = 0; i < 3; ++i) pz[i] = cov[i][0] * z[0] + cov[i][1] * z[1] + cov[i][2] * z[2];
        const double denom = lambda + (z[0] * pz[0] + z[1] * pz[1] + z[2] * pz[2]);
        const double err = observed - (m[0] * z[0] + m[1] * z[1] + m[2] * z[2]);
        for (int i = 0; i < 3; ++i) {
            const double k = pz[i] / denom;
            double v = m[i] + k * err;
            if (v < 1.0 / 16.0) v = 1.0 / 16.0;
            if (v > 16.0) v = 16.0;
            m[i] = v;
        }
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) cov[i][j] = (cov[i][j] - pz[i] * pz[j] / denom) / lambda;
        ++samples;
    }
};

// Circuit breaker of a device: Closed (normal), Open (receives nothing until its
// cool-down ends), HalfOpen (one probe batch, or one request in continuous mode).
enum class Breaker : std::uint8_t { Closed = 0, Open = 1, HalfOpen = 2 };

struct Device {
    // (Fields read for every device at every step first, in its first 144 bytes, so that
    // those reads touch three cache lines of a device rather than most of its six: the
    // step's per-device loops (PELT, breakers, pools, placement's room checks) walk every
    // device.)
    PeltSignal util;                        // occupancy, frequency- and capacity-invariant
    double capacity_orig = kCapacityScale;  // normalised, (0, 1024]
    double clock_scale = 1.0;               // cur_clock / max_clock, (0, 1]
    std::uint64_t inflight_requests = 0;
    double inv_slots = 1.0;                 // 1 / (max_batch_size x max_inflight_batches): touch()'s occupancy
    std::uint32_t max_inflight_batches = 1;
    std::uint32_t inflight_batches = 0;
    Breaker breaker = Breaker::Closed;
    bool probe_out = false;                 // half-open: its probe is in flight
    bool misfit_check = false;              // capacity dropped: check its requests next step
    std::uint32_t pool = 0;
    double open_until = 0.0;                // open: when the cool-down ends
    double capacity = kCapacityScale;       // usable: capacity_orig * clock_scale * (1 - pressure)
    std::int64_t kv_budget = kUnlimitedTokens;
    std::int64_t kv_used = 0;               // prompt + max_new of the requests in flight
    double placed_util = 0.0;               // sum of the in-flight requests' utilization
    std::vector<std::uint32_t> tenants;
    // (the rest)
    double max_clock = 1.0;
    double pressure = 0.0;                  // share taken by others (foreign processes), [0, 1)
    double dl_bw = 0.0;                     // sum of admitted deadline-class bandwidths
    double energy_per_token = 0.0;
    Handle inflight_head = kNoHandle;       // its in-flight requests (intrusive list)
    ServiceModel service;
    double batch_limit = 0.0;               // adaptive batch size limit (AIMD), 1..max_batch_size
    std::uint32_t consecutive_failures = 0;
    double fail_rate = 0.0;                 // EWMA (1/8) of its requests' failures (1) and completions (0)
    std::uint64_t breaker_trips = 0;
    std::uint64_t preempted_requests = 0;   // evicted from it (continuous mode)
    std::uint64_t dispatched_requests = 0;
    std::uint64_t dispatched_batches = 0;
    std::uint64_t completed_requests = 0;
};

}  // namespace capsched
