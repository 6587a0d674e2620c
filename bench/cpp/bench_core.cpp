// capsched_bench: the core's cost in C++ alone, against std::priority_queue.
//
// Built by CMake with -DCAPSCHED_BENCH=ON (bench/run_cpp_bench.py does it); prints plain
// tables (only those of the sections that ran), and with --json PATH the same figures as
// JSON. Every figure is the median of `--repeats` runs (default 5; 1 with --quick, which
// also runs shorter loops and fewer fleet sizes) unless it says otherwise. `--only
// SECTION` runs one section (floor, queued, devices, latency, bulk, memory); `--queued N`
// runs the floor section at that one queue size (to profile it); `--only queued` runs the
// floor section's core loop alone (no floor queues and no skeleton: their columns read
// "-", null in the JSON), and `--rounds N` sets its number of rounds, so that a profiler
// sees mostly that loop. A run whose result is wrong (a step that does not dispatch one
// full batch, an expiry, broken invariants, a queue whose size changed) prints what went
// wrong and exits with status 1. Sections:
//
//   floor    std::priority_queue<pair<double, u64>> held at n entries: one push and one pop
//            per operation (random keys drifting upward, so the queue turns over instead
//            of silting up with the largest keys); the same mix on capsched::IndexedHeap<>
//            (HeapKey: double + 64-bit tie), on IndexedHeap<ReadyKey> (double + 32-bit tie,
//            16-byte entries: the core's ready queue until 2026-11-29) and on ReadyQueue
//            (capsched::BucketQueue<ReadyKey>, the core's ready queue: a heap front of up
//            to 1,024 over buckets by key range).
//            The skeleton column (skeleton_round_trip below) runs the `queued` loop through
//            the least any scheduler with the core's interface has to do, built from the
//            core's own parts (an IdMap of never-reused ids to slab records, a std::mutex
//            per call, a ReadyQueue; no policy); in parentheses the same without the mutex.
//   queued   the core held at n queued requests (weighted policy, SchedulerConfig defaults,
//            batch mode, 1 device with max_batch_size 32 and max_inflight_batches 1): each
//            round completes the batch in flight (complete_many), submits 32 requests and
//            steps (which dispatches one batch of 32). Cost per request = round time / 32
//            (submit + dispatch + complete), its split into the three calls (from the median
//            run). Floor and queued run together: each repeat times the priority_queue and
//            the core loop back to back (which goes first alternates between repeats), then
//            the skeleton and the other floors; the ratios core / priority_queue and
//            skeleton / priority_queue are the medians of the repeats' own ratios, with
//            their [min, max] over the repeats (`*_spread` in the JSON).
//   devices  the same loop at n = 1e5 on D devices (D = 1 .. 1024), each of which holds one
//            batch of 32 in flight: each round completes one device's batch (round robin),
//            submits 32 and steps, so every step finds exactly one device with room and
//            dispatches exactly one batch of 32 however large the fleet. Reported: step()
//            time / 32 (per dispatched request, the step's per-device work included) and
//            round time / 32 (complete + submit + step per request). "equal" fleets take
//            the symmetric placement fast path; "mixed" fleets (capacities 1, 0.75, 0.5,
//            0.25 in turn) go through capacity-aware placement (choose_device).
//   latency  the devices loop at n = 1e5 on 64 equal devices, each step() timed on its own
//            (63 devices busy, one free; completing and submitting are untimed): p50 /
//            p99 / max over all samples of all repeats, each step dispatching one batch of
//            32; then a control: fixed register-only arithmetic sized to the step's p50,
//            timed alike as many times (its tail is the machine's, not the core's).
//   bulk     the Python bulk loop (bench_core.py core_bulk, bench_scaling.py bulk_2e5) in
//            C++: 2e5 requests by submit_many at t = 0, then step and complete_many of what
//            each step dispatched until all completed; 8 devices, batches of 32. Total ms
//            (median run), requests/s, and submit / step / complete per request.
//   memory   live heap bytes (a counting operator new/delete in this driver) after creating
//            a scheduler (8 devices) and queuing n requests, minus before, over n; with and
//            without Scheduler::reserve(n), without timeouts and with half of the requests
//            timed. Bytes requested from operator new (reserved capacity included, malloc's
//            own overhead not).
//
// Workload: prompt 0..3999 tokens, 1..1023 new tokens, priority uniform in [0, 1), half of
// the requests with a timeout. Inputs are generated before the timed loops. Time is
// virtual: the driver passes `now`, advancing it by 100 us per round. Timeouts are drawn
// from [span + 1, span + 31] s, where span is the run's virtual length, so no request can
// expire during a run (checked), but those queued within 15 s of their deadline change
// deadline level as time passes: the timer heap pops entries (due level changes and stale
// entries of dispatched requests) and the ready heap re-keys.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <new>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "capsched/bucket_queue.hpp"
#include "capsched/heap.hpp"
#include "capsched/id_map.hpp"
#include "capsched/scheduler.hpp"

// ------------------------------------------------------------------ counting allocator

namespace {
std::size_t g_live_bytes = 0;  // (the driver is single-threaded)
constexpr std::size_t kHeader = 16;
}  // namespace

// (not inlined: GCC's -Warray-bounds misreads the header arithmetic once inlined)
#if defined(__GNUC__)
#define CAPSCHED_BENCH_NOINLINE __attribute__((noinline))
#else
#define CAPSCHED_BENCH_NOINLINE
#endif
// The other replaceable forms (new[], nothrow, sized delete[]) default to these two; the
// over-aligned ones (the core's line-aligned arrays, capsched/heap.hpp LineAllocator)
// are counted below.
CAPSCHED_BENCH_NOINLINE void* operator new(std::size_t n) {
    void* p = std::malloc(n + kHeader);
    if (p == nullptr) throw std::bad_alloc();
    std::memcpy(p, &n, sizeof n);
    g_live_bytes += n;
    return static_cast<char*>(p) + kHeader;
}
CAPSCHED_BENCH_NOINLINE void operator delete(void* p) noexcept {
    if (p == nullptr) return;
    char* base = static_cast<char*>(p) - kHeader;
    std::size_t n;
    std::memcpy(&n, base, sizeof n);
    g_live_bytes -= n;
    std::free(base);
}
CAPSCHED_BENCH_NOINLINE void operator delete(void* p, std::size_t) noexcept { operator delete(p); }
// Over-aligned: the size is stored just before the block, which starts `align` bytes
// into what malloc returned (aligned_alloc's result, rounded to a whole alignment).
CAPSCHED_BENCH_NOINLINE void* operator new(std::size_t n, std::align_val_t al) {
    const std::size_t a = std::max(static_cast<std::size_t>(al), kHeader);
    void* p = std::aligned_alloc(a, (n + a + a - 1) / a * a);
    if (p == nullptr) throw std::bad_alloc();
    char* user = static_cast<char*>(p) + a;
    std::memcpy(user - kHeader, &n, sizeof n);
    std::memcpy(user - kHeader + sizeof n, &a, sizeof a);
    g_live_bytes += n;
    return user;
}
CAPSCHED_BENCH_NOINLINE void operator delete(void* p, std::align_val_t) noexcept {
    if (p == nullptr) return;
    char* user = static_cast<char*>(p);
    std::size_t n, a;
    std::memcpy(&n, user - kHeader, sizeof n);
    std::memcpy(&a, user - kHeader + sizeof n, sizeof a);
    g_live_bytes -= n;
    std::free(user - a);
}
CAPSCHED_BENCH_NOINLINE void operator delete(void* p, std::size_t, std::align_val_t al) noexcept {
    operator delete(p, al);
}

namespace {

using Clock = std::chrono::steady_clock;
using capsched::DeviceSpec;
using capsched::RequestSpec;
using capsched::Scheduler;
using capsched::SchedulerConfig;
using capsched::StepOutput;

constexpr std::size_t kBatch = 32;
constexpr double kDt = 1e-4;  // virtual seconds per round

double ns_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const std::size_t m = v.size() / 2;
    return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

// The q-quantile (nearest rank); q = 1 is the maximum.
double quantile(std::vector<double> v, double q) {
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size())))];
}

// A run whose result is wrong: says so on stderr and exits with status 1.
[[noreturn]] void fail(const char* what) {
    std::fflush(stdout);
    std::fprintf(stderr, "capsched_bench: %s\n", what);
    std::exit(1);
}

// splitmix64: a fast, seeded generator for the inputs.
struct Rng {
    std::uint64_t s;
    std::uint64_t next() {
        std::uint64_t z = (s += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
};

// Half of the requests (when `timeouts`) get a timeout in [min_timeout, min_timeout + 30) s.
std::vector<RequestSpec> make_specs(std::size_t n, std::uint64_t seed, bool timeouts, double min_timeout) {
    Rng rng{seed};
    std::vector<RequestSpec> v(n);
    for (RequestSpec& r : v) {
        r.prompt_tokens = static_cast<std::int64_t>(rng.uniform() * 4000.0);
        r.max_new_tokens = 1 + static_cast<std::int64_t>(rng.uniform() * 1023.0);
        r.priority = rng.uniform();
        if (timeouts && rng.uniform() < 0.5) r.timeout = min_timeout + rng.uniform() * 30.0;
    }
    return v;
}

// ------------------------------------------------------------------ JSON (--json)

struct Json {
    std::string text;
    bool first_section = true;
    bool first_row = true;
    void section(const char* name) {
        text += first_section ? "\n  \"" : "\n  ],\n  \"";
        text += name;
        text += "\": [";
        first_section = false;
        first_row = true;
    }
    // One object; `fields` is a comma-separated list of "key": value pairs, already formatted.
    void row(const std::string& fields) {
        text += first_row ? "\n    {" : ",\n    {";
        text += fields;
        text += "}";
        first_row = false;
    }
    std::string finish(int repeats, bool quick) const {
        return "{\n  \"repeats\": " + std::to_string(repeats) + ",\n  \"quick\": " + (quick ? "true" : "false") +
               "," + text + (first_section ? "\n}\n" : "\n  ]\n}\n");
    }
};

std::string kv(const char* key, double v) {
    char buf[96];
    if (!std::isfinite(v)) return std::string("\"") + key + "\": null";  // (--only queued: no floors)
    std::snprintf(buf, sizeof buf, "\"%s\": %.6g", key, v);
    return buf;
}
// A finite number as JSON (%.6g).
std::string jnum(double v) {
    char buf[48];
    std::snprintf(buf, sizeof buf, "%.6g", v);
    return buf;
}
std::string kv(const char* key, std::uint64_t v) {
    return std::string("\"") + key + "\": " + std::to_string(v);
}
std::string kv(const char* key, const char* v) { return std::string("\"") + key + "\": \"" + v + "\""; }
template <class... Rest>
std::string fields(const std::string& first, const Rest&... rest) {
    std::string s = first;
    ((s += ", ", s += rest), ...);
    return s;
}

// ------------------------------------------------------------------ floor

double pq_push_pop(std::size_t n, std::size_t ops, std::uint64_t seed) {
    using E = std::pair<double, std::uint64_t>;
    std::vector<double> keys(ops);
    Rng rng{seed};
    for (double& k : keys) k = rng.uniform();
    std::vector<E> storage;
    storage.reserve(n + 1);
    std::priority_queue<E, std::vector<E>, std::greater<E>> q(std::greater<E>{}, std::move(storage));
    std::uint64_t seq = 0;
    for (std::size_t i = 0; i < n; ++i) q.push({rng.uniform(), seq++});
    double base = 0.0;
    const auto t0 = Clock::now();
    for (std::size_t i = 0; i < ops; ++i) {
        base += 1e-6;
        q.push({base + keys[i], seq++});
        q.pop();
    }
    const double ns = ns_since(t0) / static_cast<double>(ops);
    if (q.size() != n) fail("priority_queue size changed");
    return ns;
}

template <class Queue, class MakeKey>
double indexed_push_pop(std::size_t n, std::size_t ops, std::uint64_t seed, MakeKey make_key) {
    std::vector<double> keys(ops);
    Rng rng{seed};
    for (double& k : keys) k = rng.uniform();
    Queue q;
    q.reserve(n + 1);
    std::uint64_t seq = 0;
    for (std::size_t i = 0; i < n; ++i) q.push(static_cast<capsched::Handle>(i), make_key(rng.uniform(), seq++));
    double base = 0.0;
    capsched::Handle free_handle = static_cast<capsched::Handle>(n);
    const auto t0 = Clock::now();
    for (std::size_t i = 0; i < ops; ++i) {
        base += 1e-6;
        q.push(free_handle, make_key(base + keys[i], seq++));
        free_handle = q.pop();
    }
    const double ns = ns_since(t0) / static_cast<double>(ops);
    if (q.size() != n) fail("the queue's size changed");
    return ns;
}

double heapkey_push_pop(std::size_t n, std::size_t ops, std::uint64_t seed) {
    return indexed_push_pop<capsched::IndexedHeap<capsched::HeapKey>>(n, ops, seed, [](double k, std::uint64_t s) {
        return capsched::HeapKey{k, s};
    });
}

double readykey_push_pop(std::size_t n, std::size_t ops, std::uint64_t seed) {
    return indexed_push_pop<capsched::IndexedHeap<capsched::ReadyKey>>(n, ops, seed, [](double k, std::uint64_t s) {
        return capsched::ReadyKey{k, static_cast<std::uint32_t>(s)};
    });
}

double ready_queue_push_pop(std::size_t n, std::size_t ops, std::uint64_t seed) {
    return indexed_push_pop<capsched::ReadyQueue>(n, ops, seed, [](double k, std::uint64_t s) {
        return capsched::ReadyKey{k, static_cast<std::uint32_t>(s)};
    });
}

// ------------------------------------------------------------------ skeleton

// The least any scheduler with the core's interface does per request, built from the
// core's own parts and nothing else: requests are addressed by ids that are never reused
// (an IdMap from id to a slab record), every call is thread-safe (one std::mutex taken
// per call, as the core does), requests wait in a priority order (a ReadyQueue), and a
// step hands out their ids. No validation, timeouts, levels, tenants, devices, batches,
// accounting or outcomes. The loop is the `queued` loop's: n queued; each round completes
// the 32 dispatched in the round before (one call), submits 32 (one call each) and steps
// (one call, popping 32). Nanoseconds per request; not a scheduler, a floor for one.
// With Locked = false the calls take no mutex (what the lock costs, uncontended).
template <bool Locked>
double skeleton_round_trip(std::size_t n, std::size_t rounds, std::uint64_t seed) {
    struct Rec {
        std::uint64_t id = 0;
        double key = 0.0;
        std::uint32_t state = 0;
        std::uint32_t pad[11] = {};
    };
    static_assert(sizeof(Rec) == 64, "a record per cache line, as the core's Request");
    const std::vector<RequestSpec> specs = make_specs(n + kBatch * (rounds + 2), seed, false, 0.0);
    std::mutex mu;
    struct Guard {  // std::lock_guard, or nothing
        std::mutex& m;
        explicit Guard(std::mutex& x) : m(x) {
            if (Locked) m.lock();
        }
        ~Guard() {
            if (Locked) m.unlock();
        }
        Guard(const Guard&) = delete;
        Guard& operator=(const Guard&) = delete;
    };
    std::vector<Rec> slab;
    std::vector<capsched::Handle> free_handles;
    capsched::IdMap ids;
    capsched::ReadyQueue ready;
    const std::size_t cap = n + 2 * kBatch;
    slab.reserve(cap);
    free_handles.reserve(cap);
    ids.reserve(cap, [&](capsched::Handle h) { return slab[h].id; });
    ready.reserve(cap);
    std::uint64_t next_id = 1;
    std::size_t next = 0;
    std::vector<std::uint64_t> out;
    out.reserve(kBatch);
    const auto id_of = [&slab](capsched::Handle h) { return slab[h].id; };
    const auto submit = [&](const RequestSpec& spec, double now) {
        const Guard lock(mu);
        capsched::Handle h;
        if (!free_handles.empty()) {
            h = free_handles.back();
            free_handles.pop_back();
        } else {
            h = static_cast<capsched::Handle>(slab.size());
            slab.emplace_back();
        }
        Rec& r = slab[h];
        r.id = next_id++;
        r.key = -spec.priority + 0.01 * now;
        r.state = 1;
        ids.insert(h, id_of);
        ready.push(h, capsched::ReadyKey{r.key, static_cast<std::uint32_t>(r.id)});
        return r.id;
    };
    const auto step = [&]() {
        const Guard lock(mu);
        out.clear();
        for (std::size_t i = 0; i < kBatch && !ready.empty(); ++i) {
            const capsched::Handle h = ready.pop();
            slab[h].state = 2;
            out.push_back(slab[h].id);
        }
    };
    const auto complete = [&](const std::vector<std::uint64_t>& done) {
        const Guard lock(mu);
        for (const std::uint64_t id : done) {
            const capsched::Handle h = ids.find(id, id_of);
            if (h == capsched::kNoHandle || slab[h].state != 2) fail("skeleton: completed an id not in flight");
            ids.erase(id, id_of);
            slab[h].state = 0;
            free_handles.push_back(h);
        }
    };
    double now = 0.0;
    for (std::size_t i = 0; i < n + kBatch; ++i) submit(specs[next++], now);
    step();
    std::vector<std::uint64_t> running = out;
    const auto t0 = Clock::now();
    for (std::size_t k = 0; k < rounds; ++k) {
        now += kDt;
        complete(running);
        for (std::size_t i = 0; i < kBatch; ++i) submit(specs[next++], now);
        step();
        running = out;
    }
    const double ns = ns_since(t0) / static_cast<double>(rounds * kBatch);
    if (ready.size() != n || ids.size() != n + kBatch) fail("skeleton: the queue's size changed");
    return ns;
}

// ------------------------------------------------------------------ the core

std::vector<DeviceSpec> fleet(std::uint32_t devices, bool mixed) {
    std::vector<DeviceSpec> v(devices);
    for (std::uint32_t i = 0; i < devices; ++i) {
        v[i].max_inflight_batches = 1;
        if (mixed) v[i].capacity = 1.0 - 0.25 * static_cast<double>(i % 4);
    }
    return v;
}

SchedulerConfig config() {
    SchedulerConfig cfg;  // defaults: weighted policy, batch mode
    cfg.max_batch_size = static_cast<std::uint32_t>(kBatch);
    return cfg;
}

struct Loop {
    std::vector<RequestSpec> specs;
    Scheduler s;
    std::size_t next = 0;
    std::vector<std::vector<std::uint64_t>> running;  // per device: its batch in flight
    StepOutput out;
    double now = 0.0;

    // n queued, every device holding one full batch; room for `rounds` rounds.
    Loop(std::size_t n, std::uint32_t devices, bool mixed, std::size_t rounds, std::uint64_t seed)
        : specs(make_specs(n + kBatch * (devices + rounds + 1), seed, true,
                           static_cast<double>(rounds + 2) * kDt + 1.0)),
          s(config(), fleet(devices, mixed)),
          running(devices) {
        s.reserve(n + kBatch * (devices + 1));
        for (std::size_t i = 0; i < n + kBatch * devices; ++i) s.submit(specs[next++], now);
        s.step(now, out);  // fills every device
        if (out.num_batches() != devices || out.request_ids.size() != kBatch * devices)
            fail("the first step did not give every device a full batch");
        take();
    }
    void submit(std::size_t k) {
        for (std::size_t i = 0; i < k; ++i) s.submit(specs[next++], now);
    }
    void take() {
        for (std::size_t b = 0; b < out.num_batches(); ++b)
            running[out.batch_device[b]].assign(
                out.request_ids.begin() + static_cast<std::ptrdiff_t>(out.batch_offsets[b]),
                out.request_ids.begin() + static_cast<std::ptrdiff_t>(out.batch_offsets[b + 1]));
    }
    double complete_ns = 0.0, submit_ns = 0.0;  // summed over rounds
    // One round on device d: complete its batch, submit as many, step. Returns step ns.
    double round(std::uint32_t d) {
        now += kDt;
        std::vector<std::uint64_t>& done = running[d];
        const auto t0 = Clock::now();
        s.complete_many(done.data(), done.size(), now);
        const auto t1 = Clock::now();
        submit(done.size());
        const auto t2 = Clock::now();
        s.step(now, out);
        const auto t3 = Clock::now();
        complete_ns += std::chrono::duration<double, std::nano>(t1 - t0).count();
        submit_ns += std::chrono::duration<double, std::nano>(t2 - t1).count();
        const double ns = std::chrono::duration<double, std::nano>(t3 - t2).count();
        if (out.num_batches() != 1 || out.batch_device[0] != d || out.request_ids.size() != kBatch)
            fail("a step did not dispatch exactly one full batch to the free device");
        take();
        return ns;
    }
    void check() const {
        if (!s.check_invariants()) fail("check_invariants failed");
        const capsched::Stats st = s.stats();
        if (st.counters.expired != 0 || st.counters.failed != 0) fail("a request expired or failed");
    }
};

struct StepRun {
    double step_ns_per_request = 0.0;   // sum of step() times / dispatched
    double round_ns_per_request = 0.0;  // wall time of all rounds / dispatched
    double submit_ns_per_request = 0.0;
    double complete_ns_per_request = 0.0;
    std::vector<double> samples;        // each step(), ns
};

StepRun core_steps(std::size_t n, std::uint32_t devices, bool mixed, std::size_t rounds, std::uint64_t seed) {
    Loop loop(n, devices, mixed, rounds, seed);
    StepRun r;
    r.samples.reserve(rounds);
    double total = 0.0;
    const auto t0 = Clock::now();
    for (std::size_t i = 0; i < rounds; ++i) {
        const double ns = loop.round(static_cast<std::uint32_t>(i % devices));
        r.samples.push_back(ns);
        total += ns;
    }
    const double all = ns_since(t0);
    loop.check();
    r.step_ns_per_request = total / static_cast<double>(rounds * kBatch);
    r.round_ns_per_request = all / static_cast<double>(rounds * kBatch);
    r.submit_ns_per_request = loop.submit_ns / static_cast<double>(rounds * kBatch);
    r.complete_ns_per_request = loop.complete_ns / static_cast<double>(rounds * kBatch);
    return r;
}

// The Python bulk loop (bench/bench_core.py roundtrip_core_bulk, bench_scaling.py
// bulk_2e5) in C++: n requests by submit_many at t = 0 (prompt 0..3999, 1..1023 new
// tokens, priority uniform, half with a timeout uniform in [20, 60) s), then step and
// complete_many of what it dispatched until all completed; 8 devices, batches of 32, time
// advancing so that the run spans 19 s. Nanoseconds per request, each call and in all.
struct BulkRun {
    double submit_ns = 0.0, step_ns = 0.0, complete_ns = 0.0, total_ms = 0.0;
};

BulkRun bulk(std::size_t n, std::uint64_t seed) {
    Rng rng{seed};
    std::vector<std::int64_t> prompt(n), max_new(n);
    std::vector<double> priority(n), timeout(n), deadline(n, std::nan(""));
    for (std::size_t i = 0; i < n; ++i) {
        prompt[i] = static_cast<std::int64_t>(rng.uniform() * 4000.0);
        max_new[i] = 1 + static_cast<std::int64_t>(rng.uniform() * 1023.0);
        priority[i] = rng.uniform();
        timeout[i] = rng.uniform() < 0.5 ? 20.0 + rng.uniform() * 40.0 : std::nan("");
    }
    std::vector<std::uint64_t> ids(n);
    Scheduler s(config(), fleet(8, false));
    const std::size_t per_step = 8 * kBatch;
    const std::size_t steps = (n + per_step - 1) / per_step;
    const double dt = 19.0 / static_cast<double>(steps);
    StepOutput out;
    BulkRun r;
    const auto t0 = Clock::now();
    s.submit_many(n, prompt.data(), max_new.data(), priority.data(), timeout.data(), deadline.data(), 0.0, ids.data());
    const auto t1 = Clock::now();
    r.submit_ns = std::chrono::duration<double, std::nano>(t1 - t0).count();
    std::size_t done = 0, k = 0;
    while (done < n) {
        const double now = static_cast<double>(k++) * dt;
        const auto a = Clock::now();
        s.step(now, out);
        const auto b = Clock::now();
        s.complete_many(out.request_ids.data(), out.request_ids.size(), now);
        const auto c = Clock::now();
        r.step_ns += std::chrono::duration<double, std::nano>(b - a).count();
        r.complete_ns += std::chrono::duration<double, std::nano>(c - b).count();
        done += out.request_ids.size();
        if (k > 2 * steps) fail("the bulk loop does not finish");
    }
    r.total_ms = ns_since(t0) / 1e6;
    const capsched::Stats st = s.stats();
    if (st.counters.completed != n || st.counters.expired != 0) fail("the bulk loop lost or expired requests");
    const double per = static_cast<double>(n);
    r.submit_ns /= per;
    r.step_ns /= per;
    r.complete_ns /= per;
    return r;
}

double bytes_per_queued(std::size_t n, bool reserve, bool timeouts) {
    const std::vector<RequestSpec> specs = make_specs(n, 7, timeouts, 1.0);
    const std::size_t before = g_live_bytes;
    double per = 0.0;
    {
        Scheduler s(config(), fleet(8, false));
        if (reserve) s.reserve(n);
        for (const RequestSpec& r : specs) s.submit(r, 0.0);
        if (s.stats().queued != n) fail("not every request was queued");
        per = static_cast<double>(g_live_bytes - before) / static_cast<double>(n);
    }
    return per;
}

// Timings of a fixed register-only loop calibrated to take about `target_ns` (the
// latency section's control).
std::vector<double> control_samples(double target_ns, std::size_t count) {
    volatile std::uint64_t sink = 0;
    const auto spin = [&](std::uint64_t iters) {
        std::uint64_t x = 0x9E3779B97F4A7C15ull;
        for (std::uint64_t i = 0; i < iters; ++i) x ^= (x << 13) ^ (x >> 7) ^ i;
        sink = x;
    };
    std::uint64_t iters = 1000;
    for (int k = 0; k < 20; ++k) {  // calibrate: the median of 200 runs near the target
        std::vector<double> t;
        for (int j = 0; j < 200; ++j) {
            const auto t0 = Clock::now();
            spin(iters);
            t.push_back(ns_since(t0));
        }
        const double m = median(t);
        iters = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(static_cast<double>(iters) * target_ns / m));
    }
    std::vector<double> out;
    out.reserve(count);
    for (std::size_t j = 0; j < count; ++j) {
        const auto t0 = Clock::now();
        spin(iters);
        out.push_back(ns_since(t0));
    }
    (void)sink;
    return out;
}

}  // namespace

int main(int argc, char** argv) {
    int repeats = -1;
    bool quick = false;
    std::string json_path, only;
    std::size_t queued = 0;  // --queued N: the floor section at this one queue size
    std::size_t rounds_arg = 0;  // --rounds N: the floor section's core rounds
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--quick") {
            quick = true;
        } else if (a == "--repeats" && i + 1 < argc) {
            repeats = std::max(1, std::atoi(argv[++i]));
        } else if (a == "--json" && i + 1 < argc) {
            json_path = argv[++i];
        } else if (a == "--only" && i + 1 < argc) {
            only = argv[++i];
        } else if (a == "--queued" && i + 1 < argc) {
            queued = static_cast<std::size_t>(std::strtoull(argv[++i], nullptr, 10));
        } else if (a == "--rounds" && i + 1 < argc) {
            rounds_arg = static_cast<std::size_t>(std::strtoull(argv[++i], nullptr, 10));
        } else {
            std::fprintf(stderr, "usage: capsched_bench [--quick] [--repeats N] [--json PATH] "
                                 "[--only floor|queued|devices|latency|bulk|memory] [--queued N] [--rounds N]\n");
            return 2;
        }
    }
    if (repeats < 0) repeats = quick ? 1 : 5;
    Json js;
    const std::vector<std::size_t> sizes =
        queued ? std::vector<std::size_t>{queued} : std::vector<std::size_t>{1000, 10000, 100000, 1000000};
    std::printf("capsched_bench%s: medians of %d runs; times in ns unless marked\n\n", quick ? " --quick" : "", repeats);

    const bool run_floor = only.empty() || only == "floor" || only == "queued";
    const bool floors = only != "queued";
    if (run_floor) {
        std::printf("## floor and queued: n queued; one push+pop per op (floor); per request: complete + submit + "
                    "step dispatching one batch of 32 (skeleton; core, 1 device); ratios: median of the repeats' "
                    "own ratios [min, max]\n\n");
        std::printf("| queued | priority_queue push+pop | IndexedHeap<> push+pop | IndexedHeap<ReadyKey> push+pop | "
                    "ReadyQueue push+pop | skeleton per request (without the mutex) | core per request | of which submit / "
                    "step / complete | skeleton / priority_queue | core / priority_queue |\n");
        std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    }
    js.section("floor_and_queued");
    for (const std::size_t n : sizes) {
        if (!run_floor) break;
        const std::size_t ops = quick ? 200000 : 1000000;
        const std::size_t rounds = rounds_arg ? rounds_arg : quick ? 1000 : (n >= 1000000 ? 8000 : 20000);
        const double nan = std::nan("");
        // Each repeat times the priority_queue floor and the core loop back to back (their
        // order alternating from one repeat to the next), so that each repeat's ratio
        // compares the two at the same moment; the ratios reported are the medians of the
        // repeats' own ratios. The other floors run in the same repeat, after those two.
        std::vector<double> pqs, hks, rks, rqs, sks, sus, core_over, skel_over;
        std::vector<StepRun> runs;
        for (int i = 0; i < repeats; ++i) {
            const auto seed = static_cast<std::uint64_t>(i + 1);
            double pq = nan;
            if (floors && i % 2 == 0) pq = pq_push_pop(n, ops, seed);
            runs.push_back(core_steps(n, 1, false, rounds, seed));
            if (!floors) continue;
            if (i % 2 == 1) pq = pq_push_pop(n, ops, seed);
            const double sk = skeleton_round_trip<true>(n, rounds, seed);
            pqs.push_back(pq);
            sks.push_back(sk);
            sus.push_back(skeleton_round_trip<false>(n, rounds, seed));
            hks.push_back(heapkey_push_pop(n, ops, seed));
            rks.push_back(readykey_push_pop(n, ops, seed));
            rqs.push_back(ready_queue_push_pop(n, ops, seed));
            core_over.push_back(runs.back().round_ns_per_request / pq);
            skel_over.push_back(sk / pq);
        }
        const auto med = [&](const std::vector<double>& v) { return v.empty() ? nan : median(v); };
        const auto lo = [&](const std::vector<double>& v) { return v.empty() ? nan : *std::min_element(v.begin(), v.end()); };
        const auto hi = [&](const std::vector<double>& v) { return v.empty() ? nan : *std::max_element(v.begin(), v.end()); };
        const double pq = med(pqs), hk = med(hks), rk = med(rks), rq = med(rqs), sk = med(sks), su = med(sus);
        const double c_over = med(core_over), s_over = med(skel_over);
        std::sort(runs.begin(), runs.end(),
                  [](const StepRun& a, const StepRun& b) { return a.round_ns_per_request < b.round_ns_per_request; });
        const StepRun& mid = runs[runs.size() / 2];  // the median run (the upper one of an even count)
        const double core = mid.round_ns_per_request;
        // "-" where a figure was not measured (--only queued: no floors)
        const auto num = [](double v, const char* fmt) {
            if (!std::isfinite(v)) return std::string("-");
            char buf[48];
            std::snprintf(buf, sizeof buf, fmt, v);
            return std::string(buf);
        };
        const auto ratio = [&](double m, const std::vector<double>& v) {
            if (v.empty()) return std::string("-");
            return num(m, "%.2fx") + " [" + num(lo(v), "%.2f") + ", " + num(hi(v), "%.2f") + "]";
        };
        std::printf("| %zu | %s | %s | %s | %s | %s (%s) | %.0f | %.0f / %.0f / %.0f | %s | %s |\n", n,
                    num(pq, "%.0f").c_str(), num(hk, "%.0f").c_str(), num(rk, "%.0f").c_str(), num(rq, "%.0f").c_str(),
                    num(sk, "%.0f").c_str(), num(su, "%.0f").c_str(), core, mid.submit_ns_per_request,
                    mid.step_ns_per_request, mid.complete_ns_per_request, ratio(s_over, skel_over).c_str(),
                    ratio(c_over, core_over).c_str());
        std::fflush(stdout);
        const auto spread = [&](const char* key, const std::vector<double>& v) {
            if (v.empty()) return std::string("\"") + key + "\": null";
            return std::string("\"") + key + "\": [" + jnum(lo(v)) + ", " + jnum(hi(v)) + "]";
        };
        js.row(fields(kv("queued", std::uint64_t{n}), kv("priority_queue_ns", pq), kv("indexed_heap_ns", hk),
                      kv("indexed_heap_readykey_ns", rk), kv("ready_queue_ns", rq), kv("skeleton_ns_per_request", sk),
                      kv("skeleton_unlocked_ns_per_request", su),
                      kv("skeleton_over_priority_queue", s_over), spread("skeleton_over_priority_queue_spread", skel_over),
                      kv("core_ns_per_request", core),
                      kv("submit_ns_per_request", mid.submit_ns_per_request),
                      kv("step_ns_per_request", mid.step_ns_per_request),
                      kv("complete_ns_per_request", mid.complete_ns_per_request),
                      kv("core_over_priority_queue", c_over), spread("core_over_priority_queue_spread", core_over)));
    }

    if (only.empty() || only == "devices") {
        std::printf("\n## devices: 1e5 queued, D devices each holding one batch of 32; each round completes one "
                    "device's batch, submits 32, steps (one batch of 32 dispatched)\n\n");
        std::printf("| devices | fleet | rounds | step per dispatched request | round per request | step p50 (us) |\n");
        std::printf("|---:|---|---:|---:|---:|---:|\n");
    }
    js.section("devices");
    const std::vector<std::uint32_t> fleets = quick ? std::vector<std::uint32_t>{1, 64, 1024}
                                                    : std::vector<std::uint32_t>{1, 4, 16, 64, 256, 1024};
    for (const bool mixed : {false, true}) {
        if (!only.empty() && only != "devices") break;
        for (const std::uint32_t d : fleets) {
            if (mixed && d == 1) continue;
            // (capacity-aware placement on a large fleet costs about 1 ms a step: fewer rounds)
            const std::size_t rounds = (quick ? 1000 : 10000) / (mixed && d >= 256 ? 4 : 1);
            std::vector<double> step, round, p50;
            for (int i = 0; i < repeats; ++i) {
                const StepRun r = core_steps(100000, d, mixed, rounds, static_cast<std::uint64_t>(i + 1));
                step.push_back(r.step_ns_per_request);
                round.push_back(r.round_ns_per_request);
                p50.push_back(quantile(r.samples, 0.5) / 1e3);
            }
            const char* kind = mixed ? "mixed (capacity-aware placement)" : "equal (symmetric fast path)";
            std::printf("| %u | %s | %zu | %.0f | %.0f | %.2f |\n", d, kind, rounds, median(step), median(round),
                        median(p50));
            std::fflush(stdout);
            js.row(fields(kv("devices", std::uint64_t{d}), kv("fleet", mixed ? "mixed" : "equal"), kv("rounds", std::uint64_t{rounds}),
                          kv("step_ns_per_dispatched_request", median(step)),
                          kv("round_ns_per_request", median(round)), kv("step_p50_us", median(p50))));
        }
    }

    js.section("latency");
    if (only.empty() || only == "latency") {
        std::printf("\n## latency: each step() dispatching one batch of 32, 1e5 queued, 64 equal devices (63 busy)\n\n");
        std::vector<double> all, pers;
        for (int i = 0; i < repeats; ++i) {
            StepRun r = core_steps(100000, 64, false, quick ? 2000 : 20000, static_cast<std::uint64_t>(i + 11));
            pers.push_back(r.step_ns_per_request);
            all.insert(all.end(), r.samples.begin(), r.samples.end());
        }
        const double p50 = quantile(all, 0.5) / 1e3, p99 = quantile(all, 0.99) / 1e3, mx = quantile(all, 1.0) / 1e3;
        std::printf("| steps | p50 (us) | p99 (us) | max (us) | mean per dispatched request (ns) |\n");
        std::printf("|---:|---:|---:|---:|---:|\n");
        std::printf("| %zu | %.2f | %.2f | %.2f | %.0f |\n", all.size(), p50, p99, mx, median(pers));
        js.row(fields(kv("steps", std::uint64_t{all.size()}), kv("p50_us", p50), kv("p99_us", p99),
                      kv("max_us", mx), kv("ns_per_dispatched_request", median(pers))));
        // Control: a fixed amount of register-only arithmetic (no memory, no allocation),
        // sized to take about the step's p50, timed the same way as many times. Its tail
        // is the machine's (interrupts, the hypervisor, frequency changes), not the core's.
        const std::vector<double> ctl = control_samples(p50 * 1e3, all.size());
        const double c50 = quantile(ctl, 0.5) / 1e3, c99 = quantile(ctl, 0.99) / 1e3, cmx = quantile(ctl, 1.0) / 1e3;
        std::printf("\ncontrol (fixed arithmetic of about the same length, timed alike): p50 %.2f us, p99 %.2f us, "
                    "max %.2f us; p99 / p50: steps %.2f, control %.2f\n",
                    c50, c99, cmx, p99 / p50, c99 / c50);
        js.row(fields(kv("control_p50_us", c50), kv("control_p99_us", c99), kv("control_max_us", cmx)));
    }

    js.section("bulk");
    if (only.empty() || only == "bulk") {
        std::printf("\n## bulk: the Python bulk loop (bench_core.py core_bulk) in C++, 8 devices\n\n");
        std::printf("| requests | total (ms) | requests/s | submit / step / complete per request |\n");
        std::printf("|---:|---:|---:|---:|\n");
        for (const std::size_t n : std::vector<std::size_t>{200000}) {
            std::vector<BulkRun> runs;
            for (int i = 0; i < repeats; ++i) runs.push_back(bulk(n, static_cast<std::uint64_t>(i + 1)));
            std::sort(runs.begin(), runs.end(), [](const BulkRun& a, const BulkRun& b) { return a.total_ms < b.total_ms; });
            const BulkRun& m = runs[runs.size() / 2];
            std::printf("| %zu | %.1f | %.0f | %.0f / %.0f / %.0f |\n", n, m.total_ms,
                        static_cast<double>(n) / (m.total_ms / 1e3), m.submit_ns, m.step_ns, m.complete_ns);
            js.row(fields(kv("requests", std::uint64_t{n}), kv("total_ms", m.total_ms),
                          kv("submit_ns_per_request", m.submit_ns), kv("step_ns_per_request", m.step_ns),
                          kv("complete_ns_per_request", m.complete_ns)));
        }
    }

    if (only.empty() || only == "memory") {
        std::printf("\n## memory: live heap bytes per queued request (sizeof(capsched::Request) = %zu)\n\n",
                    sizeof(capsched::Request));
        std::printf("| queued | reserve(n) | timeouts | bytes per request |\n|---:|---|---|---:|\n");
    }
    js.section("memory");
    for (const std::size_t n : std::vector<std::size_t>{100000, 1000000}) {
        if (!only.empty() && only != "memory") break;
        for (const bool reserve : {true, false})
            for (const bool timeouts : {false, true}) {
                const double b = bytes_per_queued(n, reserve, timeouts);
                std::printf("| %zu | %s | %s | %.1f |\n", n, reserve ? "yes" : "no", timeouts ? "half" : "none", b);
                js.row(fields(kv("queued", std::uint64_t{n}), kv("reserve", reserve ? "yes" : "no"),
                              kv("timeouts", timeouts ? "half" : "none"), kv("bytes_per_request", b)));
            }
    }
    js.section("sizes");
    js.row(fields(kv("sizeof_request", std::uint64_t{sizeof(capsched::Request)})));

    if (!json_path.empty()) {
        std::FILE* f = std::fopen(json_path.c_str(), "w");
        if (f == nullptr) {
            std::fprintf(stderr, "capsched_bench: cannot write %s\n", json_path.c_str());
            return 1;
        }
        const std::string text = js.finish(repeats, quick);
        std::fwrite(text.data(), 1, text.size(), f);
        std::fclose(f);
    }
    return 0;
}
