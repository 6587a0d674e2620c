// A placement target as the core sees it. Names live in Python; the core uses indices.
#pragma once

#include <cstdint>

namespace capsched {

// Normalised capacity of the strongest device (Linux SCHED_CAPACITY_SCALE).
inline constexpr double kCapacityScale = 1024.0;

struct DeviceSpec {
    double capacity = 1.0;                   // relative, > 0; normalised so the max is 1024
    std::uint32_t max_inflight_batches = 1;  // batches it may run at once, >= 1
};

struct Device {
    double capacity = kCapacityScale;  // normalised, (0, 1024]
    std::uint32_t max_inflight_batches = 1;
    std::uint32_t inflight_batches = 0;
    std::uint64_t inflight_requests = 0;
    std::uint64_t dispatched_requests = 0;
    std::uint64_t dispatched_batches = 0;
    std::uint64_t completed_requests = 0;
};

}  // namespace capsched
