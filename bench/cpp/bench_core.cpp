// capsched_bench: the core's cost in C++ alone, against std::priority_queue.
//
// Built by CMake with -DCAPSCHED_BENCH=ON (bench/run_cpp_bench.py does it); prints plain
// tables. Every figure is the median of `--repeats` runs (default 5). Sections:
//
//   floor    std::priority_queue<pair<double, u64>> held at n entries: one push and one pop
//            per operation (random keys drifting upward, so the queue turns over); the same
//            mix on capsched::IndexedHeap<ReadyKey> (the core's ready queue).
//   queued   the core held at n queued requests (weighted policy, 1 device, batches of 32,
//            half of the requests with a timeout, random priorities): each round submits 32
//            requests, steps (one batch of 32 is dispatched) and completes that batch with
//            complete_many. Cost per request = round time / 32, and its ratio to the floor.
//   devices  the same loop at n = 1e5 on 1 .. 1024 equal devices, each of which holds one
//            batch in flight: each round completes one device's batch, submits 32 and steps,
//            so each step dispatches exactly one batch of 32 however many devices there are.
//            Per dispatched request: step time / 32 (the per-step work over all devices
//            included). The fleet is symmetric (the placement fast path).
//   latency  the devices loop at n = 1e5 and 64 devices, each step() timed on its own:
//            p50 / p99 / max of thousands of steps that each dispatch one batch of 32.
//   memory   live heap bytes (a counting operator new/delete in this driver) after queuing
//            n requests into a fresh scheduler, minus before, over n; with and without
//            Scheduler::reserve(n), with and without timeouts.
//
// Request inputs are generated before the timed loops (the generator is not timed). Time is
// virtual: each round advances it by 100 us, and timeouts are long, so nothing expires.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <new>
#include <queue>
#include <string>
#include <utility>
#include <vector>

#include "capsched/heap.hpp"
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

namespace {

using Clock = std::chrono::steady_clock;
using capsched::RequestSpec;
using capsched::Scheduler;
using capsched::StepOutput;

double ns_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::nano>(Clock::now() - t0).count();
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const std::size_t m = v.size() / 2;
    return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

double quantile(std::vector<double> v, double q) {
    std::sort(v.begin(), v.end());
    return v[std::min(v.size() - 1, static_cast<std::size_t>(q * static_cast<double>(v.size())))];
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

std::vector<RequestSpec> make_specs(std::size_t n, std::uint64_t seed, bool timeouts = true) {
    Rng rng{seed};
    std::vector<RequestSpec> v(n);
    for (RequestSpec& r : v) {
        r.prompt_tokens = static_cast<std::int64_t>(rng.uniform() * 4000.0);
        r.max_new_tokens = 1 + static_cast<std::int64_t>(rng.uniform() * 1023.0);
        r.priority = rng.uniform();
        if (timeouts && rng.uniform() < 0.5) r.timeout = 1e6 + rng.uniform() * 1e6;
    }
    return v;
}

// ------------------------------------------------------------------ floor

double pq_push_pop(std::size_t n, std::size_t ops, std::uint64_t seed) {
    using E = std::pair<double, std::uint64_t>;
    std::vector<double> keys(ops);
    Rng rng{seed};
    for (double& k : keys) k = rng.uniform();
    std::priority_queue<E, std::vector<E>, std::greater<E>> q;
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
    if (q.size() != n) std::abort();
    return ns;
}

double indexed_push_pop(std::size_t n, std::size_t ops, std::uint64_t seed) {
    std::vector<double> keys(ops);
    Rng rng{seed};
    for (double& k : keys) k = rng.uniform();
    capsched::IndexedHeap<capsched::ReadyKey> q;
    q.reserve(n + 1);
    std::uint32_t seq = 0;
    for (std::size_t i = 0; i < n; ++i) q.push(static_cast<capsched::Handle>(i), {rng.uniform(), seq++});
    double base = 0.0;
    capsched::Handle free_handle = static_cast<capsched::Handle>(n);
    const auto t0 = Clock::now();
    for (std::size_t i = 0; i < ops; ++i) {
        base += 1e-6;
        q.push(free_handle, {base + keys[i], seq++});
        free_handle = q.pop();
    }
    const double ns = ns_since(t0) / static_cast<double>(ops);
    if (q.size() != n) std::abort();
    return ns;
}

// ------------------------------------------------------------------ the core

struct Loop {
    Scheduler s;
    std::vector<RequestSpec> specs;
    std::size_t next = 0;
    std::vector<std::vector<std::uint64_t>> running;  // per device: its batch in flight
    StepOutput out;
    double now = 0.0;

    Loop(std::size_t n, std::uint32_t devices, std::size_t rounds, std::uint64_t seed)
        : s(capsched::SchedulerConfig{}, std::vector<capsched::DeviceSpec>(devices)),
          specs(make_specs(n + 32 * (devices + rounds + 1), seed)),
          running(devices) {
        s.reserve(n + 32 * (devices + 1));
        for (std::size_t i = 0; i < n; ++i) s.submit(specs[next++], now);
        s.step(now, out);  // fills every device
        take();
        submit(out.request_ids.size());  // back to n queued
    }
    void submit(std::size_t k) {
        for (std::size_t i = 0; i < k; ++i) s.submit(specs[next++], now);
    }
    void take() {
        for (std::size_t b = 0; b < out.num_batches(); ++b)
            running[out.batch_device[b]].assign(out.request_ids.begin() + static_cast<std::ptrdiff_t>(out.batch_offsets[b]),
                                                out.request_ids.begin() + static_cast<std::ptrdiff_t>(out.batch_offsets[b + 1]));
    }
    // One round on device d: complete its batch, submit as many, step. Returns step ns.
    double round(std::uint32_t d) {
        now += 1e-4;
        std::vector<std::uint64_t>& done = running[d];
        s.complete_many(done.data(), done.size(), now);
        submit(done.size());
        const auto t0 = Clock::now();
        s.step(now, out);
        const double ns = ns_since(t0);
        if (out.request_ids.size() != done.size()) {
            std::fprintf(stderr, "a step dispatched %zu requests, expected %zu\n", out.request_ids.size(), done.size());
            std::abort();
        }
        take();
        return ns;
    }
};

// ns per request of submit + dispatch + complete, n queued, 1 device.
double core_round_trip(std::size_t n, std::size_t rounds, std::uint64_t seed) {
    Loop loop(n, 1, rounds, seed);
    const auto t0 = Clock::now();
    for (std::size_t i = 0; i < rounds; ++i) loop.round(0);
    const double ns = ns_since(t0) / static_cast<double>(rounds * 32);
    if (!loop.s.check_invariants()) std::abort();
    return ns;
}

// (ns per dispatched request in step, all step samples).
std::pair<double, std::vector<double>> core_steps(std::size_t n, std::uint32_t devices, std::size_t rounds,
                                                  std::uint64_t seed) {
    Loop loop(n, devices, rounds, seed);
    std::vector<double> samples;
    samples.reserve(rounds);
    double total = 0.0;
    for (std::size_t i = 0; i < rounds; ++i) {
        const double ns = loop.round(static_cast<std::uint32_t>(i % devices));
        samples.push_back(ns);
        total += ns;
    }
    if (!loop.s.check_invariants()) std::abort();
    return {total / static_cast<double>(rounds * 32), samples};
}

double bytes_per_queued(std::size_t n, bool reserve, bool timeouts) {
    const std::vector<RequestSpec> specs = make_specs(n, 7, timeouts);
    const std::size_t before = g_live_bytes;
    double per = 0.0;
    {
        Scheduler s(capsched::SchedulerConfig{}, std::vector<capsched::DeviceSpec>(8));
        if (reserve) s.reserve(n);
        for (const RequestSpec& r : specs) s.submit(r, 0.0);
        per = static_cast<double>(g_live_bytes - before) / static_cast<double>(n);
    }
    return per;
}

template <class F>
double median_of(int repeats, F f) {
    std::vector<double> v;
    for (int i = 0; i < repeats; ++i) v.push_back(f(static_cast<std::uint64_t>(i + 1)));
    return median(v);
}

}  // namespace

int main(int argc, char** argv) {
    int repeats = 5;
    bool quick = false;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--quick") {
            quick = true;
            repeats = 1;
        } else if (a == "--repeats" && i + 1 < argc) {
            repeats = std::max(1, std::atoi(argv[++i]));
        } else {
            std::fprintf(stderr, "usage: capsched_bench [--quick] [--repeats N]\n");
            return 2;
        }
    }
    const std::vector<std::size_t> sizes = quick ? std::vector<std::size_t>{1000, 100000}
                                                 : std::vector<std::size_t>{1000, 10000, 100000, 1000000};
    std::printf("capsched_bench: medians of %d runs; ns per operation\n\n", repeats);

    std::printf("## floor and queued: submit + dispatch + complete per request, 1 device, batches of 32\n\n");
    std::printf("| queued | priority_queue push+pop | IndexedHeap push+pop | core per request | core / priority_queue |\n");
    std::printf("|---:|---:|---:|---:|---:|\n");
    for (const std::size_t n : sizes) {
        const std::size_t ops = quick ? 200000 : 1000000;
        const std::size_t rounds = quick ? 2000 : (n >= 1000000 ? 8000 : 20000);
        const double pq = median_of(repeats, [&](std::uint64_t s) { return pq_push_pop(n, ops, s); });
        const double ih = median_of(repeats, [&](std::uint64_t s) { return indexed_push_pop(n, ops, s); });
        const double core = median_of(repeats, [&](std::uint64_t s) { return core_round_trip(n, rounds, s); });
        std::printf("| %zu | %.0f | %.0f | %.0f | %.2fx |\n", n, pq, ih, core, core / pq);
        std::fflush(stdout);
    }

    std::printf("\n## devices: step cost per dispatched request, 1e5 queued, one batch of 32 per step\n\n");
    std::printf("| devices | step per dispatched request | step p50 (us) |\n|---:|---:|---:|\n");
    const std::vector<std::uint32_t> fleets = quick ? std::vector<std::uint32_t>{1, 64, 1024}
                                                    : std::vector<std::uint32_t>{1, 4, 16, 64, 256, 1024};
    for (const std::uint32_t d : fleets) {
        std::vector<double> per, p50;
        for (int i = 0; i < repeats; ++i) {
            auto [ns, samples] = core_steps(100000, d, quick ? 2000 : 10000, static_cast<std::uint64_t>(i + 1));
            per.push_back(ns);
            p50.push_back(quantile(samples, 0.5) / 1e3);
        }
        std::printf("| %u | %.0f | %.2f |\n", d, median(per), median(p50));
        std::fflush(stdout);
    }

    std::printf("\n## latency: one step dispatching one batch of 32, 1e5 queued, 64 devices\n\n");
    {
        std::vector<double> all;
        double per = 0.0;
        std::vector<double> pers;
        for (int i = 0; i < repeats; ++i) {
            auto [ns, samples] = core_steps(100000, 64, quick ? 3000 : 20000, static_cast<std::uint64_t>(i + 11));
            pers.push_back(ns);
            all.insert(all.end(), samples.begin(), samples.end());
        }
        per = median(pers);
        std::printf("| steps | p50 (us) | p99 (us) | max (us) | per dispatched request (ns) |\n|---:|---:|---:|---:|---:|\n");
        std::printf("| %zu | %.2f | %.2f | %.2f | %.0f |\n", all.size(), quantile(all, 0.5) / 1e3, quantile(all, 0.99) / 1e3,
                    quantile(all, 1.0) / 1e3, per);
    }

    std::printf("\n## memory: live heap bytes per queued request (sizeof(Request) = %zu)\n\n", sizeof(capsched::Request));
    std::printf("| queued | reserve(n) | timeouts | bytes per request |\n|---:|---|---|---:|\n");
    for (const std::size_t n : std::vector<std::size_t>{100000, 1000000}) {
        for (const bool reserve : {true, false})
            for (const bool timeouts : {false, true})
                std::printf("| %zu | %s | %s | %.1f |\n", n, reserve ? "yes" : "no", timeouts ? "half" : "none",
                            bytes_per_queued(n, reserve, timeouts));
    }
    return 0;
}
