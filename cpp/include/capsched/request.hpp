// A request as the core stores it, and the spec a caller submits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

#include "capsched/heap.hpp"

namespace capsched {

inline constexpr double kNoTime = std::numeric_limits<double>::quiet_NaN();
inline constexpr double kInf = std::numeric_limits<double>::infinity();

// Linux-like scheduling classes, served in this order: deadline (EDF, admitted against
// per-device bandwidth), strict (RT-like: priority, placed on a device with capacity >=
// uclamp_min when one has room), normal (the configured policy), background (SCHED_IDLE-
// like, for offline jobs: first come first served, only on a device it fits, only when no
// online request is left queued, and evicted first in continuous mode).
enum class SchedClass : std::uint8_t { Normal = 0, Strict = 1, Deadline = 2, Background = 3 };

// What a caller submits. Times are seconds on the caller's clock.
struct RequestSpec {
    std::int64_t prompt_tokens = 0;     // >= 0
    std::int64_t max_new_tokens = 256;  // >= 1
    double priority = 0.5;              // 0..1
    double timeout = kNoTime;           // > 0, relative to now; NaN = none
    double deadline = kNoTime;          // absolute, > now; NaN = none (not both)
    std::uint32_t tenant = 0;
    std::uint32_t request_class = 0;  // util_est class (0..kMaxClasses-1)
    SchedClass sched_class = SchedClass::Normal;
    bool batchable = true;
    double uclamp_min = 0.0;  // 0..1, <= uclamp_max; used by capacity-aware placement
    double uclamp_max = 1.0;
    // Device pool (class) it must run in, 0 = any; when every device of that pool has an
    // open breaker, its fallback pool (0 = none) instead.
    std::uint32_t pool = 0;
    std::uint32_t fallback_pool = 0;
    const std::uint64_t* depends_on = nullptr;
    std::size_t n_depends_on = 0;
};

// Retrying: failed retryably, waiting out its backoff before it is queued again.
enum class State : std::uint8_t { Free = 0, Waiting = 1, Queued = 2, InFlight = 3, Retrying = 4 };

// How a request ended; stored in 2 bits per id ever issued.
enum class Outcome : std::uint8_t { Completed = 0, Failed = 1, Expired = 2, Cancelled = 3 };

// Public state of an id: the live states, then the outcomes.
enum class RequestStatus : std::uint8_t {
    Waiting = 0,
    Queued = 1,
    InFlight = 2,
    Completed = 3,
    Failed = 4,
    Expired = 5,
    Cancelled = 6,
    Retrying = 7,
};

inline constexpr std::uint32_t kNoIndex = std::numeric_limits<std::uint32_t>::max();

// A live request, 64 bytes: what every queued request needs. Fields that most requests
// never use, and those of in-flight requests, live in a RequestExt (below) allocated on
// demand: a queued request with default uclamp, no pool, no dependents, not in the
// deadline class and never dispatched has none.
struct Request {
    std::uint64_t id = 0;
    double arrival = 0.0;    // first submit (kept across retries), s
    double deadline = kInf;  // absolute, s; +inf when none
    double priority = 0.0;
    std::uint32_t prompt_tokens = 0;
    std::uint32_t max_new_tokens = 0;
    std::uint32_t tenant = 0;
    std::uint32_t request_class = 0;
    std::uint32_t ext = kNoIndex;   // its RequestExt, if any
    // By state: Waiting: live dependencies not yet completed; Queued (weighted): its
    // deadline level L (0..Q); InFlight: its batch slot.
    std::uint32_t slot = 0;
    State state = State::Free;
    SchedClass sched_class = SchedClass::Normal;
    bool batchable = true;
    bool mark = false;  // scratch flag for duplicate detection in bulk calls
};
static_assert(sizeof(Request) == 64, "a queued request's record is one cache line");

// The rest of a request, allocated when first needed (non-default fields at submit, its
// first dependent, its first dispatch) and freed when it ends.
struct RequestExt {
    double uclamp_min = 0.0;
    double uclamp_max = 1.0;
    double util = 0.0;      // utilization it was placed with while in flight (0..1024)
    double dl_bw = 0.0;     // deadline class: admitted bandwidth (0..1024)
    double progress = 0.0;  // seconds it ran before its evictions
    std::uint32_t dl_device = kNoIndex;  // deadline class: the device that admitted it
    std::uint32_t dependents = kNoIndex; // head of this request's dependents list
    std::uint32_t dev_prev = kNoIndex;   // neighbours in its device's in-flight list
    std::uint32_t dev_next = kNoIndex;
    std::uint16_t retries = 0;
    std::uint16_t preemptions = 0;  // times evicted (continuous mode)
    std::uint16_t pool = 0;         // device pool it must run in (0 = any)
    std::uint16_t fallback_pool = 0;
};

}  // namespace capsched
