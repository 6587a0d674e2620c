// The scheduler core. Conversions only: validation and behaviour live in the core.
// Every call into the core but the per-request ones (submit, submit_spec, complete)
// releases the GIL: the core touches no Python object and guards its own state with a
// mutex, so other Python threads may run meanwhile. The per-request ones keep it (below).
#include <cstring>
#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "capsched/scheduler.hpp"
#include "pybind.hpp"

namespace capsched::bindings {

namespace {

using U64Array = py::array_t<std::uint64_t, py::array::c_style | py::array::forcecast>;
using I64Array = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;
using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;

py::dict device_dict(const Device& d) {
    py::dict out;
    out["capacity"] = d.capacity;
    out["capacity_orig"] = d.capacity_orig;
    out["clock_scale"] = d.clock_scale;
    out["pressure"] = d.pressure;
    out["util_avg"] = d.util.util_avg();
    out["placed_util"] = d.placed_util;
    out["dl_bw"] = d.dl_bw;
    out["kv_budget"] = d.kv_budget;
    out["kv_used"] = d.kv_used;
    out["max_inflight_batches"] = d.max_inflight_batches;
    out["inflight_batches"] = d.inflight_batches;
    out["inflight_requests"] = d.inflight_requests;
    out["dispatched_requests"] = d.dispatched_requests;
    out["dispatched_batches"] = d.dispatched_batches;
    out["completed_requests"] = d.completed_requests;
    out["preempted_requests"] = d.preempted_requests;
    out["batch_limit"] = d.batch_limit;
    out["breaker"] = d.breaker == Breaker::Closed ? "closed" : d.breaker == Breaker::Open ? "open" : "half_open";
    out["consecutive_failures"] = d.consecutive_failures;
    out["fail_rate"] = d.fail_rate;
    out["breaker_trips"] = d.breaker_trips;
    out["service_samples"] = d.service.samples;
    out["service_multipliers"] = py::make_tuple(d.service.m[0], d.service.m[1], d.service.m[2]);
    return out;
}

// Checkpoint snapshots as plain Python data (dicts, lists, numbers) and back.
py::dict pelt_dict(const PeltSnapshot& p) {
    py::dict d;
    d["started"] = p.started;
    d["last"] = p.last;
    d["sum"] = p.sum;
    d["contrib"] = p.contrib;
    d["avg"] = p.avg;
    return d;
}

PeltSnapshot pelt_from(const py::dict& d) {
    return PeltSnapshot{d["started"].cast<bool>(), d["last"].cast<double>(), d["sum"].cast<double>(),
                        d["contrib"].cast<double>(), d["avg"].cast<double>()};
}

// A vector as a numpy array (one copy).
template <class T>
py::array_t<T> to_array(const std::vector<T>& v) {
    py::array_t<T> a(static_cast<py::ssize_t>(v.size()));
    if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
    return a;
}

// A vector handed to numpy without a copy: the array owns it (a capsule frees it).
template <class T>
py::array_t<T> adopt(std::vector<T>&& v) {
    if (v.empty()) return py::array_t<T>(0);
    auto owned = std::make_unique<std::vector<T>>(std::move(v));
    py::capsule owner(owned.get(), [](void* p) { delete static_cast<std::vector<T>*>(p); });
    const std::vector<T>& kept = *owned.release();  // (the capsule owns it from here)
    return py::array_t<T>(static_cast<py::ssize_t>(kept.size()), kept.data(), owner);
}

// The requests by column (checkpoint format 2; the core fills them: StateSnapshot::
// columnar), one numpy array per field, each a view of the core's one buffer, which the
// arrays keep alive together (a capsule owns it): no copy.
py::dict request_columns(RequestColumns&& c) {
    py::capsule owner(c.buffer.get(), [](void* p) { delete[] static_cast<unsigned char*>(p); });
    (void)c.buffer.release();  // (the capsule owns it from here)
    const auto n = static_cast<py::ssize_t>(c.count);
    const auto view = [&owner](py::ssize_t len, auto* data) {
        using T = std::remove_pointer_t<decltype(data)>;
        return py::array_t<T>(len, data, owner);
    };
    py::dict d;
    d["id"] = view(n, c.id);
    d["state"] = view(n, c.state);
    d["arrival"] = view(n, c.arrival);
    d["deadline"] = view(n, c.deadline);
    d["priority"] = view(n, c.priority);
    d["prompt_tokens"] = view(n, c.prompt_tokens);
    d["max_new_tokens"] = view(n, c.max_new_tokens);
    d["uclamp_min"] = view(n, c.uclamp_min);
    d["uclamp_max"] = view(n, c.uclamp_max);
    d["tenant"] = view(n, c.tenant);
    d["request_class"] = view(n, c.request_class);
    d["sched_class"] = view(n, c.sched_class);
    d["batchable"] = view(n, c.batchable);
    d["retries"] = view(n, c.retries);
    d["preemptions"] = view(n, c.preemptions);
    d["progress"] = view(n, c.progress);
    d["retry_at"] = view(n, c.retry_at);
    d["dl_device"] = view(n, c.dl_device);
    d["dl_bw"] = view(n, c.dl_bw);
    d["pool"] = view(n, c.pool);
    d["fallback_pool"] = view(n, c.fallback_pool);
    d["batch"] = view(n, c.batch);
    d["util"] = view(n, c.util);
    d["dispatched_at"] = view(n, c.dispatched_at);
    d["waits_on_count"] = view(n, c.waits_on_count);
    d["waits_on"] = view(static_cast<py::ssize_t>(c.edges), c.waits_on);
    c = RequestColumns{};  // (its pointers point into what the capsule owns now)
    return d;
}

// A one-dimensional contiguous numpy array of exactly T's type, as it is (no conversion:
// a float column given for an integer one is refused, not truncated): a ValueError
// naming it otherwise.
template <class T>
py::array_t<T, py::array::c_style> exact_array(const py::handle& obj, const std::string& what) {
    using A = py::array_t<T, py::array::c_style>;
    // (exactly numpy.ndarray: a subclass, a masked array say, may stand for other values)
    const py::object ndarray = py::module_::import("numpy").attr("ndarray");
    if (!py::type::handle_of(obj).is(ndarray) || !py::isinstance<A>(obj) || py::reinterpret_borrow<py::array>(obj).ndim() != 1)
        throw py::value_error(what + " must be a one-dimensional numpy array of " +
                              py::str(py::dtype::of<T>()).cast<std::string>());
    return py::reinterpret_borrow<A>(obj);
}

// The columns back (every one the length of ``id``; ``waits_on`` as long as the counts'
// sum): a ValueError naming the column otherwise.
template <class T>
py::array_t<T, py::array::c_style> column_of(const py::dict& c, const char* name, std::size_t n) {
    if (!c.contains(name)) throw py::value_error(std::string("the request columns lack '") + name + "'");
    auto a = exact_array<T>(c[name], std::string("request column '") + name + "'");
    if (static_cast<std::size_t>(a.size()) != n)
        throw py::value_error(std::string("request column '") + name + "' has " + std::to_string(a.size()) +
                              " values, expected " + std::to_string(n));
    return a;
}

std::vector<RequestSnapshot> requests_from_columns(const py::dict& c) {
    if (!c.contains("id")) throw py::value_error("the request columns lack 'id'");
    if (c.size() != 26) throw py::value_error("the request columns must be exactly the 26 of the format");
    const auto ids = exact_array<std::uint64_t>(c["id"], "request column 'id'");
    const auto n = static_cast<std::size_t>(ids.size());
    const auto state = column_of<std::uint8_t>(c, "state", n);
    const auto arrival = column_of<double>(c, "arrival", n);
    const auto deadline = column_of<double>(c, "deadline", n);
    const auto priority = column_of<double>(c, "priority", n);
    const auto prompt = column_of<std::uint32_t>(c, "prompt_tokens", n);
    const auto max_new = column_of<std::uint32_t>(c, "max_new_tokens", n);
    const auto umin = column_of<double>(c, "uclamp_min", n);
    const auto umax = column_of<double>(c, "uclamp_max", n);
    const auto tenant = column_of<std::uint32_t>(c, "tenant", n);
    const auto rclass = column_of<std::uint32_t>(c, "request_class", n);
    const auto sclass = column_of<std::uint8_t>(c, "sched_class", n);
    const auto batchable = column_of<std::uint8_t>(c, "batchable", n);
    const auto retries = column_of<std::uint32_t>(c, "retries", n);
    const auto preemptions = column_of<std::uint32_t>(c, "preemptions", n);
    const auto progress = column_of<double>(c, "progress", n);
    const auto retry_at = column_of<double>(c, "retry_at", n);
    const auto dl_device = column_of<std::uint32_t>(c, "dl_device", n);
    const auto dl_bw = column_of<double>(c, "dl_bw", n);
    const auto pool = column_of<std::uint32_t>(c, "pool", n);
    const auto fallback = column_of<std::uint32_t>(c, "fallback_pool", n);
    const auto batch = column_of<std::uint32_t>(c, "batch", n);
    const auto util = column_of<double>(c, "util", n);
    const auto dispatched_at = column_of<double>(c, "dispatched_at", n);
    const auto counts = column_of<std::uint32_t>(c, "waits_on_count", n);
    std::uint64_t edges = 0;
    for (std::size_t i = 0; i < n; ++i) edges += counts.data()[i];
    const auto waits = column_of<std::uint64_t>(c, "waits_on", static_cast<std::size_t>(edges));
    std::vector<RequestSnapshot> out(n);
    const std::uint64_t* w = waits.data();
    for (std::size_t i = 0; i < n; ++i) {
        RequestSnapshot& q = out[i];
        q.id = ids.data()[i];
        q.state = state.data()[i];
        q.arrival = arrival.data()[i];
        q.deadline = deadline.data()[i];
        q.priority = priority.data()[i];
        q.prompt_tokens = prompt.data()[i];
        q.max_new_tokens = max_new.data()[i];
        q.uclamp_min = umin.data()[i];
        q.uclamp_max = umax.data()[i];
        q.tenant = tenant.data()[i];
        q.request_class = rclass.data()[i];
        q.sched_class = sclass.data()[i];
        q.batchable = batchable.data()[i] != 0;
        q.retries = retries.data()[i];
        q.preemptions = preemptions.data()[i];
        q.progress = progress.data()[i];
        q.retry_at = retry_at.data()[i];
        q.dl_device = dl_device.data()[i];
        q.dl_bw = dl_bw.data()[i];
        q.pool = pool.data()[i];
        q.fallback_pool = fallback.data()[i];
        q.batch = batch.data()[i];
        q.util = util.data()[i];
        q.dispatched_at = dispatched_at.data()[i];
        q.waits_on.assign(w, w + counts.data()[i]);
        w += counts.data()[i];
    }
    return out;
}

py::dict snapshot_dict(StateSnapshot& s) {
    const bool columnar = s.columnar;
    py::dict out;
    out["version"] = columnar ? 2 : StateSnapshot::kVersion;  // (2: the requests by column)
    out["now"] = s.now;
    out["next_id"] = s.next_id;
    out["rng"] = s.rng;
    out["counters"] = s.counters;
    if (columnar)
        out["outcomes"] = adopt(std::move(s.outcomes));
    else
        out["outcomes"] = s.outcomes;
    py::list pending;
    for (std::size_t i = 0; i < s.pending_failed.size(); ++i)
        pending.append(py::make_tuple(s.pending_failed[i], s.pending_reasons[i]));
    out["pending_failed"] = pending;
    if (columnar) out["requests"] = request_columns(std::move(s.columns));
    py::list reqs;
    for (const RequestSnapshot& q : s.requests) {  // (empty when columnar)
        py::dict d;
        d["id"] = q.id;
        d["state"] = q.state;
        d["arrival"] = q.arrival;
        d["deadline"] = q.deadline;
        d["priority"] = q.priority;
        d["prompt_tokens"] = q.prompt_tokens;
        d["max_new_tokens"] = q.max_new_tokens;
        d["uclamp_min"] = q.uclamp_min;
        d["uclamp_max"] = q.uclamp_max;
        d["tenant"] = q.tenant;
        d["request_class"] = q.request_class;
        d["sched_class"] = q.sched_class;
        d["batchable"] = q.batchable;
        d["retries"] = q.retries;
        d["preemptions"] = q.preemptions;
        d["progress"] = q.progress;
        d["retry_at"] = q.retry_at;
        d["dl_device"] = q.dl_device;
        d["dl_bw"] = q.dl_bw;
        d["pool"] = q.pool;
        d["fallback_pool"] = q.fallback_pool;
        d["waits_on"] = q.waits_on;
        d["batch"] = q.batch;
        d["util"] = q.util;
        d["dispatched_at"] = q.dispatched_at;
        reqs.append(d);
    }
    if (!columnar) out["requests"] = reqs;
    py::list batches;
    for (const BatchSnapshot& b : s.batches) {
        py::dict d;
        d["device"] = b.device;
        d["size"] = b.size;
        d["tokens"] = b.tokens;
        d["prompt"] = b.prompt;
        d["max_new"] = b.max_new;
        d["steps"] = b.steps;
        d["work"] = b.work;
        d["dispatched_at"] = b.dispatched_at;
        d["counted"] = b.counted;
        d["clean"] = b.clean;
        d["probe"] = b.probe;
        batches.append(d);
    }
    out["batches"] = batches;
    py::list devs;
    for (const DeviceSnapshot& x : s.devices) {
        py::dict d;
        d["clock_scale"] = x.clock_scale;
        d["max_clock"] = x.max_clock;
        d["pressure"] = x.pressure;
        d["util"] = pelt_dict(x.util);
        d["service_m"] = std::vector<double>(x.service_m, x.service_m + 3);
        d["service_cov"] = std::vector<double>(x.service_cov, x.service_cov + 9);
        d["service_samples"] = x.service_samples;
        d["batch_limit"] = x.batch_limit;
        d["breaker"] = x.breaker;
        d["consecutive_failures"] = x.consecutive_failures;
        d["fail_rate"] = x.fail_rate;
        d["open_until"] = x.open_until;
        d["breaker_trips"] = x.breaker_trips;
        d["dispatched_requests"] = x.dispatched_requests;
        d["dispatched_batches"] = x.dispatched_batches;
        d["completed_requests"] = x.completed_requests;
        d["preempted_requests"] = x.preempted_requests;
        d["probe_out"] = x.probe_out;
        d["placed_util"] = x.placed_util;
        d["inflight"] = x.inflight;
        devs.append(d);
    }
    out["devices"] = devs;
    py::list classes;
    for (const ClassSnapshot& c : s.classes) {
        py::dict d;
        d["seen"] = c.seen;
        d["ewma"] = c.ewma;
        d["last"] = c.last;
        d["util"] = pelt_dict(c.util);
        d["running"] = c.running;
        classes.append(d);
    }
    out["classes"] = classes;
    return out;
}

StateSnapshot snapshot_from(const py::dict& in) {
    StateSnapshot s;
    s.now = in["now"].cast<double>();
    s.next_id = in["next_id"].cast<std::uint64_t>();
    s.rng = in["rng"].cast<std::uint64_t>();
    s.counters = in["counters"].cast<std::vector<std::uint64_t>>();
    if (py::isinstance<py::array>(in["outcomes"])) {
        const auto a = exact_array<std::uint64_t>(in["outcomes"], "outcomes");
        s.outcomes.assign(a.data(), a.data() + a.size());
    } else {
        s.outcomes = in["outcomes"].cast<std::vector<std::uint64_t>>();
    }
    if (in.contains("pending_failed")) {  // (absent from checkpoints written before it was kept)
        for (const py::handle h : in["pending_failed"].cast<py::list>()) {
            const py::sequence pair = h.cast<py::sequence>();
            if (pair.size() != 2) throw py::value_error("pending_failed entries are [id, reason] pairs");
            s.pending_failed.push_back(pair[0].cast<std::uint64_t>());
            s.pending_reasons.push_back(pair[1].cast<std::string>());
        }
    }
    if (py::isinstance<py::dict>(in["requests"])) s.requests = requests_from_columns(in["requests"].cast<py::dict>());
    for (const py::handle h : py::isinstance<py::dict>(in["requests"]) ? py::list() : in["requests"].cast<py::list>()) {
        const py::dict d = h.cast<py::dict>();
        RequestSnapshot q;
        q.id = d["id"].cast<std::uint64_t>();
        q.state = d["state"].cast<std::uint8_t>();
        q.arrival = d["arrival"].cast<double>();
        q.deadline = d["deadline"].cast<double>();
        q.priority = d["priority"].cast<double>();
        q.prompt_tokens = d["prompt_tokens"].cast<std::uint32_t>();
        q.max_new_tokens = d["max_new_tokens"].cast<std::uint32_t>();
        q.uclamp_min = d["uclamp_min"].cast<double>();
        q.uclamp_max = d["uclamp_max"].cast<double>();
        q.tenant = d["tenant"].cast<std::uint32_t>();
        q.request_class = d["request_class"].cast<std::uint32_t>();
        q.sched_class = d["sched_class"].cast<std::uint8_t>();
        q.batchable = d["batchable"].cast<bool>();
        q.retries = d["retries"].cast<std::uint32_t>();
        q.preemptions = d["preemptions"].cast<std::uint32_t>();
        q.progress = d["progress"].cast<double>();
        q.retry_at = d["retry_at"].cast<double>();
        q.dl_device = d["dl_device"].cast<std::uint32_t>();
        q.dl_bw = d["dl_bw"].cast<double>();
        q.pool = d["pool"].cast<std::uint32_t>();
        q.fallback_pool = d["fallback_pool"].cast<std::uint32_t>();
        q.waits_on = d["waits_on"].cast<std::vector<std::uint64_t>>();
        q.batch = d["batch"].cast<std::uint32_t>();
        q.util = d["util"].cast<double>();
        q.dispatched_at = d["dispatched_at"].cast<double>();
        s.requests.push_back(std::move(q));
    }
    for (const py::handle h : in["batches"].cast<py::list>()) {
        const py::dict d = h.cast<py::dict>();
        s.batches.push_back(BatchSnapshot{d["device"].cast<std::uint32_t>(), d["size"].cast<std::uint32_t>(),
                                          d["tokens"].cast<std::int64_t>(), d["prompt"].cast<std::int64_t>(),
                                          d["max_new"].cast<std::int64_t>(), d["steps"].cast<std::int64_t>(),
                                          d["work"].cast<double>(), d["dispatched_at"].cast<double>(),
                                          d["counted"].cast<bool>(), d["clean"].cast<bool>(), d["probe"].cast<bool>()});
    }
    for (const py::handle h : in["devices"].cast<py::list>()) {
        const py::dict d = h.cast<py::dict>();
        DeviceSnapshot x;
        x.clock_scale = d["clock_scale"].cast<double>();
        x.max_clock = d["max_clock"].cast<double>();
        x.pressure = d["pressure"].cast<double>();
        x.util = pelt_from(d["util"].cast<py::dict>());
        const auto m = d["service_m"].cast<std::vector<double>>();
        const auto cov = d["service_cov"].cast<std::vector<double>>();
        if (m.size() != 3 || cov.size() != 9) throw py::value_error("service_m needs 3 values and service_cov 9");
        std::copy(m.begin(), m.end(), x.service_m);
        std::copy(cov.begin(), cov.end(), x.service_cov);
        x.service_samples = d["service_samples"].cast<std::uint64_t>();
        x.batch_limit = d["batch_limit"].cast<double>();
        x.breaker = d["breaker"].cast<std::uint8_t>();
        x.consecutive_failures = d["consecutive_failures"].cast<std::uint32_t>();
        x.fail_rate = d["fail_rate"].cast<double>();
        x.open_until = d["open_until"].cast<double>();
        x.breaker_trips = d["breaker_trips"].cast<std::uint64_t>();
        x.dispatched_requests = d["dispatched_requests"].cast<std::uint64_t>();
        x.dispatched_batches = d["dispatched_batches"].cast<std::uint64_t>();
        x.completed_requests = d["completed_requests"].cast<std::uint64_t>();
        x.preempted_requests = d["preempted_requests"].cast<std::uint64_t>();
        x.probe_out = d["probe_out"].cast<bool>();
        x.placed_util = d["placed_util"].cast<double>();
        x.inflight = d["inflight"].cast<std::vector<std::uint64_t>>();
        s.devices.push_back(x);
    }
    for (const py::handle h : in["classes"].cast<py::list>()) {
        const py::dict d = h.cast<py::dict>();
        s.classes.push_back(ClassSnapshot{d["seen"].cast<bool>(), d["ewma"].cast<double>(), d["last"].cast<double>(),
                                          pelt_from(d["util"].cast<py::dict>()), d["running"].cast<double>()});
    }
    return s;
}

// A step's output as lists of ints (what the Python side hands out), not arrays: a step
// returns few values per batch, and a list costs less than an array for so few.
py::tuple step_tuple(const StepOutput& out) {
    return py::make_tuple(py::cast(out.batch_device), py::cast(out.batch_offsets), py::cast(out.request_ids),
                          py::cast(out.expired), py::cast(out.failed), py::cast(out.failed_reasons), out.now,
                          py::cast(out.migrated), py::cast(out.migrated_from), py::cast(out.preempted),
                          py::cast(out.preempted_from), out.next_step_at, out.held);
}

// The same with numpy arrays for the four per-request fields (batch devices and offsets,
// dispatched and expired ids): one copy each, no Python int per id. For the bulk path
// (Scheduler.step_many), whose caller hands the ids on as an array.
py::tuple step_arrays_tuple(const StepOutput& out) {
    return py::make_tuple(to_array(out.batch_device), to_array(out.batch_offsets), to_array(out.request_ids),
                          to_array(out.expired), py::cast(out.failed), py::cast(out.failed_reasons), out.now,
                          py::cast(out.migrated), py::cast(out.migrated_from), py::cast(out.preempted),
                          py::cast(out.preempted_from), out.next_step_at, out.held);
}

// A step (or continuous-mode step) with the GIL released; the caller converts the output.
StepOutput run_step(Scheduler& s, double now) {
    StepOutput out;
    py::gil_scoped_release release;
    s.step(now, out);
    return out;
}

StepOutput run_step_continuous(Scheduler& s, double now, const I64Array& free_slots, const I64Array& free_kv) {
    if (static_cast<std::size_t>(free_slots.size()) != s.num_devices() ||
        static_cast<std::size_t>(free_kv.size()) != s.num_devices())
        throw py::value_error("step_continuous: one free_slots and one free_kv value per device");
    StepOutput out;
    const std::int64_t* slots = free_slots.data();
    const std::int64_t* kv = free_kv.data();
    py::gil_scoped_release release;  // the arrays are kept alive by the caller's frame
    s.step_continuous(now, slots, kv, out);
    return out;
}

// ---------------------------------------------------------------- per-request calls
//
// submit(), submit_spec(), complete() and complete_plain() run once per request. pybind11's generic
// dispatch costs more than the core's own work there (about 0.5 us for submit's 15
// arguments, 0.3 us for complete's 3, on a 2-core VM), so these are plain METH_FASTCALL
// methods of Core. Conversions only, and the same ones as pybind11's: exact floats, ints
// and bools directly, anything else through pybind11's own type caster, as its dispatcher
// would (so what converts is unchanged); positional arguments only; a TypeError naming
// the argument that does not convert; the core's exceptions become capsched.errors
// classes as everywhere else. They keep the GIL: a release and re-acquire costs about as
// much as the core's work in these calls (about 0.1 us each), and the core's mutex still
// serialises the threads (a thread that calls them while another one runs a long step()
// waits for it holding the GIL).

template <class T>
const char* expected(const T*) {
    return std::is_same<T, bool>::value ? "a bool" : std::is_floating_point<T>::value ? "a number" : "an integer";
}
const char* expected(const std::optional<U64Array>*) { return "None or an array of uint64 ids"; }

// Argument i as a T: an exact float, int or bool directly, anything else through
// pybind11's caster (the same result for those three, which are what the Python side
// passes).
template <class T>
T arg(const char* method, PyObject* const* args, Py_ssize_t i, const char* name) {
    PyObject* const o = args[i];
    if constexpr (std::is_same_v<T, bool>) {
        if (o == Py_True) return true;
        if (o == Py_False) return false;
    } else if constexpr (std::is_floating_point_v<T>) {
        if (PyFloat_CheckExact(o)) return PyFloat_AS_DOUBLE(o);
    } else if constexpr (std::is_integral_v<T> && std::is_signed_v<T>) {
        if (PyLong_CheckExact(o)) {
            int overflow = 0;
            const long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
            if (overflow == 0 && v >= std::numeric_limits<T>::min() && v <= std::numeric_limits<T>::max())
                return static_cast<T>(v);
        }
    } else if constexpr (std::is_integral_v<T>) {
        if (PyLong_CheckExact(o)) {
            const unsigned long long v = PyLong_AsUnsignedLongLong(o);
            if (v == static_cast<unsigned long long>(-1) && PyErr_Occurred() != nullptr)
                PyErr_Clear();  // negative or too large: the caster below refuses it too
            else if (v <= std::numeric_limits<T>::max())
                return static_cast<T>(v);
        }
    }
    py::detail::make_caster<T> caster;
    if (!caster.load(py::handle(o), /*convert=*/true)) {
        throw py::type_error(std::string("Core.") + method + "(): " + name + " must be " +
                             expected(static_cast<const T*>(nullptr)) + ", got " + std::string(py::repr(o)));
    }
    return py::detail::cast_op<T>(std::move(caster));
}

void check_count(const char* method, Py_ssize_t n, Py_ssize_t lo, Py_ssize_t hi) {
    if (n < lo || n > hi) {
        throw py::type_error(std::string("Core.") + method + "() takes " + std::to_string(lo) +
                             (lo == hi ? "" : " or " + std::to_string(hi)) + " positional arguments (" +
                             std::to_string(n) + " given)");
    }
}

PyTypeObject* core_type = nullptr;  // Core, set when it is registered

// The Scheduler of a Core. The method descriptors only pass instances of Core (or of a
// subclass: those take pybind11's caster).
Scheduler& core_of(PyObject* self) {
    if (Py_TYPE(self) == core_type) {
        const auto v_h = reinterpret_cast<py::detail::instance*>(self)->get_value_and_holder();
        if (v_h.holder_constructed()) return *v_h.value_ptr<Scheduler>();
    }
    py::detail::make_caster<Scheduler> caster;
    if (!caster.load(py::handle(self), /*convert=*/false)) throw py::type_error("expected a capsched._core.Core");
    return py::detail::cast_op<Scheduler&>(caster);
}

// submit(prompt_tokens, max_new_tokens, priority, timeout, deadline, tenant, request_class,
//        sched_class, batchable, uclamp_min, uclamp_max, pool, fallback_pool, depends_on, now)
PyObject* core_submit(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    try {
        const char* m = "submit";
        check_count(m, nargs, 15, 15);
        Scheduler& s = core_of(self);
        RequestSpec spec;
        spec.prompt_tokens = arg<std::int64_t>(m, args, 0, "prompt_tokens");
        spec.max_new_tokens = arg<std::int64_t>(m, args, 1, "max_new_tokens");
        spec.priority = arg<double>(m, args, 2, "priority");
        spec.timeout = arg<double>(m, args, 3, "timeout");
        spec.deadline = arg<double>(m, args, 4, "deadline");
        spec.tenant = arg<std::uint32_t>(m, args, 5, "tenant");
        spec.request_class = arg<std::uint32_t>(m, args, 6, "request_class");
        spec.sched_class = static_cast<SchedClass>(arg<std::uint8_t>(m, args, 7, "sched_class"));
        spec.batchable = arg<bool>(m, args, 8, "batchable");
        spec.uclamp_min = arg<double>(m, args, 9, "uclamp_min");
        spec.uclamp_max = arg<double>(m, args, 10, "uclamp_max");
        spec.pool = arg<std::uint32_t>(m, args, 11, "pool");
        spec.fallback_pool = arg<std::uint32_t>(m, args, 12, "fallback_pool");
        const auto depends_on = arg<std::optional<U64Array>>(m, args, 13, "depends_on");
        if (depends_on) {
            spec.depends_on = depends_on->data();
            spec.n_depends_on = static_cast<std::size_t>(depends_on->size());
        }
        const double now = arg<double>(m, args, 14, "now");
        return PyLong_FromUnsignedLongLong(s.submit(spec, now));
    } catch (...) {
        set_python_error(std::current_exception());
        return nullptr;
    }
}

// submit_spec(prompt_tokens, spec, tenant, request_class, now): submit() without pools or
// dependencies, the other fields as one tuple (InferenceRequest keeps it from its
// validation): spec = (max_new_tokens, priority, timeout, deadline, sched_class,
// batchable, uclamp_min, uclamp_max).
PyObject* core_submit_spec(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    try {
        const char* m = "submit_spec";
        check_count(m, nargs, 5, 5);
        Scheduler& s = core_of(self);
        if (!PyTuple_Check(args[1]) || PyTuple_GET_SIZE(args[1]) != 8)
            throw py::type_error("Core.submit_spec(): spec must be a tuple of 8 values, got " +
                                 std::string(py::repr(py::handle(args[1]))));
        PyObject* const* f = PySequence_Fast_ITEMS(args[1]);  // the tuple's items
        RequestSpec spec;
        spec.prompt_tokens = arg<std::int64_t>(m, args, 0, "prompt_tokens");
        spec.max_new_tokens = arg<std::int64_t>(m, f, 0, "max_new_tokens");
        spec.priority = arg<double>(m, f, 1, "priority");
        spec.timeout = arg<double>(m, f, 2, "timeout");
        spec.deadline = arg<double>(m, f, 3, "deadline");
        spec.sched_class = static_cast<SchedClass>(arg<std::uint8_t>(m, f, 4, "sched_class"));
        spec.batchable = arg<bool>(m, f, 5, "batchable");
        spec.uclamp_min = arg<double>(m, f, 6, "uclamp_min");
        spec.uclamp_max = arg<double>(m, f, 7, "uclamp_max");
        spec.tenant = arg<std::uint32_t>(m, args, 2, "tenant");
        spec.request_class = arg<std::uint32_t>(m, args, 3, "request_class");
        const double now = arg<double>(m, args, 4, "now");
        return PyLong_FromUnsignedLongLong(s.submit(spec, now));
    } catch (...) {
        set_python_error(std::current_exception());
        return nullptr;
    }
}

// complete(id, now, output_tokens=-1)
PyObject* core_complete(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    try {
        const char* m = "complete";
        check_count(m, nargs, 2, 3);
        Scheduler& s = core_of(self);
        const auto id = arg<std::uint64_t>(m, args, 0, "id");
        const double now = arg<double>(m, args, 1, "now");
        const std::int64_t output_tokens = nargs > 2 ? arg<std::int64_t>(m, args, 2, "output_tokens") : -1;
        s.complete(id, now, output_tokens);
        Py_RETURN_NONE;
    } catch (...) {
        set_python_error(std::current_exception());
        return nullptr;
    }
}

// complete_plain(id, now, output_tokens): complete() for the Python layer's common call
// taken as it is: an exact int id in 1..2^64-1, an exact float now and output_tokens None.
// Other arguments return NotImplemented with nothing done, and the Python layer checks
// and converts them (its messages), then calls complete(). This spares the common call
// those checks in Python.
PyObject* core_complete_plain(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
    try {
        check_count("complete_plain", nargs, 3, 3);
        if (!PyLong_CheckExact(args[0]) || !PyFloat_CheckExact(args[1]) || args[2] != Py_None)
            Py_RETURN_NOTIMPLEMENTED;
        const unsigned long long id = PyLong_AsUnsignedLongLong(args[0]);
        if (id == static_cast<unsigned long long>(-1) && PyErr_Occurred() != nullptr) {
            PyErr_Clear();  // negative or too large
            Py_RETURN_NOTIMPLEMENTED;
        }
        if (id == 0) Py_RETURN_NOTIMPLEMENTED;
        core_of(self).complete(id, PyFloat_AS_DOUBLE(args[1]), -1);
        Py_RETURN_NONE;
    } catch (...) {
        set_python_error(std::current_exception());
        return nullptr;
    }
}

PyMethodDef per_request_methods[] = {
    {"submit", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(core_submit)), METH_FASTCALL,
     "submit($self, prompt_tokens, max_new_tokens, priority, timeout, deadline, tenant, request_class, "
     "sched_class, batchable, uclamp_min, uclamp_max, pool, fallback_pool, depends_on, now, /)\n--\n\n"
     "Accepts one request; returns its id. timeout/deadline NaN = none; depends_on None or uint64 ids."},
    {"submit_spec", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(core_submit_spec)), METH_FASTCALL,
     "submit_spec($self, prompt_tokens, spec, tenant, request_class, now, /)\n--\n\n"
     "submit() without pools or dependencies; spec = (max_new_tokens, priority, timeout, deadline, "
     "sched_class, batchable, uclamp_min, uclamp_max)."},
    {"complete", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(core_complete)), METH_FASTCALL,
     "complete($self, id, now, output_tokens=-1, /)\n--\n\n"
     "Ends an in-flight request as completed (output_tokens < 0: not reported)."},
    {"complete_plain", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(core_complete_plain)),
     METH_FASTCALL,
     "complete_plain($self, id, now, output_tokens, /)\n--\n\n"
     "complete(id, now) when id is an int in 1..2**64-1, now a float and output_tokens None; "
     "otherwise returns NotImplemented and does nothing."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

void register_scheduler(py::module_& m) {
    m.attr("MAX_TOKENS") = kMaxTokens;
    m.attr("MAX_DEPENDENCIES") = kMaxDependencies;
    m.attr("MAX_BATCH_SIZE") = kMaxBatchSize;
    m.attr("MAX_TENANT_WEIGHT") = kMaxTenantWeight;
    m.attr("MAX_DEVICES") = kMaxDevices;
    m.attr("MAX_DEADLINE_LEVELS") = kMaxDeadlineLevels;
    m.attr("CAPACITY_SCALE") = kCapacityScale;
    m.attr("MAX_CLASSES") = kMaxClasses;
    m.attr("UNLIMITED_TOKENS") = kUnlimitedTokens;

    py::class_<SchedulerConfig>(m, "CoreConfig", "Core configuration (see capsched.Config).")
        .def(py::init<>())
        .def_property(
            "policy", [](const SchedulerConfig& c) { return std::string(policy_name(c.order.policy)); },
            [](SchedulerConfig& c, const std::string& name) { c.order.policy = parse_policy(name); })
        .def_property(
            "weight_urgency", [](const SchedulerConfig& c) { return c.order.w_urgency; },
            [](SchedulerConfig& c, double v) { c.order.w_urgency = v; })
        .def_property(
            "weight_resource", [](const SchedulerConfig& c) { return c.order.w_resource; },
            [](SchedulerConfig& c, double v) { c.order.w_resource = v; })
        .def_property(
            "weight_deadline", [](const SchedulerConfig& c) { return c.order.w_deadline; },
            [](SchedulerConfig& c, double v) { c.order.w_deadline = v; })
        .def_property(
            "resource_scale_tokens", [](const SchedulerConfig& c) { return c.order.resource_scale_tokens; },
            [](SchedulerConfig& c, double v) { c.order.resource_scale_tokens = v; })
        .def_property(
            "deadline_levels", [](const SchedulerConfig& c) { return c.order.deadline_levels; },
            [](SchedulerConfig& c, std::uint32_t v) { c.order.deadline_levels = v; })
        .def_property(
            "aging_priority", [](const SchedulerConfig& c) { return c.order.aging_priority; },
            [](SchedulerConfig& c, double v) { c.order.aging_priority = v; })
        .def_property(
            "aging_weighted", [](const SchedulerConfig& c) { return c.order.aging_weighted; },
            [](SchedulerConfig& c, double v) { c.order.aging_weighted = v; })
        .def_property(
            "aging_srtf", [](const SchedulerConfig& c) { return c.order.aging_srtf; },
            [](SchedulerConfig& c, double v) { c.order.aging_srtf = v; })
        .def_property(
            "aging_edf", [](const SchedulerConfig& c) { return c.order.aging_edf; },
            [](SchedulerConfig& c, double v) { c.order.aging_edf = v; })
        .def_property(
            "no_deadline_horizon", [](const SchedulerConfig& c) { return c.order.no_deadline_horizon; },
            [](SchedulerConfig& c, double v) { c.order.no_deadline_horizon = v; })
        .def_property(
            "fit_margin", [](const SchedulerConfig& c) { return c.placement.fit_margin; },
            [](SchedulerConfig& c, double v) { c.placement.fit_margin = v; })
        .def_property(
            "score_compute", [](const SchedulerConfig& c) { return c.placement.w_compute; },
            [](SchedulerConfig& c, double v) { c.placement.w_compute = v; })
        .def_property(
            "score_memory", [](const SchedulerConfig& c) { return c.placement.w_memory; },
            [](SchedulerConfig& c, double v) { c.placement.w_memory = v; })
        .def_property(
            "energy_aware", [](const SchedulerConfig& c) { return c.placement.energy_aware; },
            [](SchedulerConfig& c, bool v) { c.placement.energy_aware = v; })
        .def_property(
            "pelt_period", [](const SchedulerConfig& c) { return c.placement.pelt_period; },
            [](SchedulerConfig& c, double v) { c.placement.pelt_period = v; })
        .def_property(
            "default_work_per_token", [](const SchedulerConfig& c) { return c.placement.default_work_per_token; },
            [](SchedulerConfig& c, double v) { c.placement.default_work_per_token = v; })
        .def_property(
            "dl_bandwidth_limit", [](const SchedulerConfig& c) { return c.placement.dl_bandwidth_limit; },
            [](SchedulerConfig& c, double v) { c.placement.dl_bandwidth_limit = v; })
        .def_property(
            "defer_late", [](const SchedulerConfig& c) { return c.placement.defer_late; },
            [](SchedulerConfig& c, bool v) { c.placement.defer_late = v; })
        .def_property(
            "wait_for_fit", [](const SchedulerConfig& c) { return c.placement.wait_for_fit; },
            [](SchedulerConfig& c, bool v) { c.placement.wait_for_fit = v; })
        .def_property(
            "max_batch_tokens", [](const SchedulerConfig& c) { return c.batching.max_batch_tokens; },
            [](SchedulerConfig& c, std::int64_t v) { c.batching.max_batch_tokens = v; })
        .def_property(
            "preferred_batch_sizes", [](const SchedulerConfig& c) { return c.batching.preferred_batch_sizes; },
            [](SchedulerConfig& c, const std::vector<std::uint32_t>& v) { c.batching.preferred_batch_sizes = v; })
        .def_property(
            "max_queue_delay", [](const SchedulerConfig& c) { return c.batching.max_queue_delay; },
            [](SchedulerConfig& c, double v) { c.batching.max_queue_delay = v; })
        .def_property(
            "latency_target", [](const SchedulerConfig& c) { return c.batching.latency_target; },
            [](SchedulerConfig& c, double v) { c.batching.latency_target = v; })
        .def_property(
            "preemption", [](const SchedulerConfig& c) { return c.batching.preemption; },
            [](SchedulerConfig& c, bool v) { c.batching.preemption = v; })
        .def_property(
            "fair_share", [](const SchedulerConfig& c) { return c.fair.enabled; },
            [](SchedulerConfig& c, bool v) { c.fair.enabled = v; })
        .def_property(
            "fair_input_weight", [](const SchedulerConfig& c) { return c.fair.input_weight; },
            [](SchedulerConfig& c, double v) { c.fair.input_weight = v; })
        .def_property(
            "fair_output_weight", [](const SchedulerConfig& c) { return c.fair.output_weight; },
            [](SchedulerConfig& c, double v) { c.fair.output_weight = v; })
        .def_readwrite("max_batch_size", &SchedulerConfig::max_batch_size)
        .def_readwrite("max_retries", &SchedulerConfig::max_retries)
        .def_readwrite("breaker_failures", &SchedulerConfig::breaker_failures)
        .def_readwrite("breaker_cooldown", &SchedulerConfig::breaker_cooldown)
        .def_readwrite("breaker_degrade", &SchedulerConfig::breaker_degrade)
        .def_readwrite("max_queued", &SchedulerConfig::max_queued)
        .def_readwrite("max_queued_per_tenant", &SchedulerConfig::max_queued_per_tenant)
        .def_readwrite("max_dependents", &SchedulerConfig::max_dependents)
        .def_readwrite("retry_base", &SchedulerConfig::retry_base)
        .def_readwrite("retry_cap", &SchedulerConfig::retry_cap)
        .def_readwrite("retry_seed", &SchedulerConfig::retry_seed)
        .def_readwrite("dynamic_batching", &SchedulerConfig::dynamic_batching);

    py::class_<DeviceSpec>(m, "DeviceSpec", "A device as the core takes it (see capsched.Device).")
        .def(py::init<>())
        .def_readwrite("capacity", &DeviceSpec::capacity)
        .def_readwrite("max_inflight_batches", &DeviceSpec::max_inflight_batches)
        .def_readwrite("max_clock", &DeviceSpec::max_clock)
        .def_readwrite("cur_clock", &DeviceSpec::cur_clock)
        .def_readwrite("kv_tokens", &DeviceSpec::kv_tokens)
        .def_readwrite("energy_per_token", &DeviceSpec::energy_per_token)
        .def_readwrite("prefill_s_per_token", &DeviceSpec::prefill_s_per_token)
        .def_readwrite("decode_step_s", &DeviceSpec::decode_step_s)
        .def_readwrite("decode_s_per_seq", &DeviceSpec::decode_s_per_seq)
        .def_readwrite("tenants", &DeviceSpec::tenants)
        .def_readwrite("pool", &DeviceSpec::pool);

    py::class_<Scheduler>(m, "Core", "The C++ scheduler (see capsched.Scheduler).")
        .def(py::init<const SchedulerConfig&, const std::vector<DeviceSpec>&>(), py::arg("config"),
             py::arg("devices"))
        .def("reserve", &Scheduler::reserve, py::arg("n"), py::call_guard<py::gil_scoped_release>())
        .def(
            "submit_many",
            [](Scheduler& s, const I64Array& prompt_tokens, const I64Array& max_new_tokens,
               const F64Array& priority, const F64Array& timeout, const F64Array& deadline, double now) {
                const auto n = prompt_tokens.size();
                if (max_new_tokens.size() != n || priority.size() != n || timeout.size() != n ||
                    deadline.size() != n)
                    throw py::value_error("submit_many: arrays differ in length");
                py::array_t<std::uint64_t> ids(n);
                std::uint64_t* out = ids.mutable_data();
                const std::int64_t* p = prompt_tokens.data();
                const std::int64_t* q = max_new_tokens.data();
                const double* pr = priority.data();
                const double* to = timeout.data();
                const double* dl = deadline.data();
                {
                    py::gil_scoped_release release;  // arrays are kept alive by this frame
                    s.submit_many(static_cast<std::size_t>(n), p, q, pr, to, dl, now, out);
                }
                return ids;
            },
            py::arg("prompt_tokens"), py::arg("max_new_tokens"), py::arg("priority"), py::arg("timeout"),
            py::arg("deadline"), py::arg("now"))
        .def("step", [](Scheduler& s, double now) { return step_tuple(run_step(s, now)); }, py::arg("now"))
        .def(
            "step_continuous",
            [](Scheduler& s, double now, const I64Array& free_slots, const I64Array& free_kv) {
                return step_tuple(run_step_continuous(s, now, free_slots, free_kv));
            },
            py::arg("now"), py::arg("free_slots"), py::arg("free_kv"))
        .def("step_arrays", [](Scheduler& s, double now) { return step_arrays_tuple(run_step(s, now)); },
             py::arg("now"))
        .def(
            "step_continuous_arrays",
            [](Scheduler& s, double now, const I64Array& free_slots, const I64Array& free_kv) {
                return step_arrays_tuple(run_step_continuous(s, now, free_slots, free_kv));
            },
            py::arg("now"), py::arg("free_slots"), py::arg("free_kv"))
        .def("estimate_service", &Scheduler::estimate_service, py::arg("device"), py::arg("prompt_tokens"),
             py::arg("steps"), py::arg("batch"), py::call_guard<py::gil_scoped_release>())
        .def("preemption_info", &Scheduler::preemption_info, py::arg("id"),
             py::call_guard<py::gil_scoped_release>())
        .def(
            "complete_many",
            [](Scheduler& s, const U64Array& ids, double now) {
                const std::uint64_t* p = ids.data();
                const auto n = static_cast<std::size_t>(ids.size());
                py::gil_scoped_release release;  // the array is kept alive by this frame
                s.complete_many(p, n, now);
            },
            py::arg("ids"), py::arg("now"))
        .def(
            "fail",
            [](Scheduler& s, std::uint64_t id, double now, bool retryable, const std::string& error) {
                py::gil_scoped_release release;
                return s.fail(id, now, retryable, error);
            },
            py::arg("id"), py::arg("now"), py::arg("retryable"), py::arg("error"))
        .def("set_clock", &Scheduler::set_clock, py::arg("device"), py::arg("cur"), py::arg("max"), py::arg("now"),
             py::call_guard<py::gil_scoped_release>())
        .def("set_pressure", &Scheduler::set_pressure, py::arg("device"), py::arg("pressure"), py::arg("now"),
             py::call_guard<py::gil_scoped_release>())
        .def(
            "class_estimate",
            [](const Scheduler& s, std::uint32_t request_class) {
                UtilEst e;
                {
                    py::gil_scoped_release release;
                    e = s.class_estimate(request_class);
                }
                return py::make_tuple(e.seen(), e.ewma(), e.last(), e.estimate());
            },
            py::arg("request_class"))
        .def("class_util", &Scheduler::class_util, py::arg("request_class"),
             py::call_guard<py::gil_scoped_release>())
        .def("set_tenant_weight", &Scheduler::set_tenant_weight, py::arg("tenant"), py::arg("weight"),
             py::call_guard<py::gil_scoped_release>())
        .def("tenant_weight", &Scheduler::tenant_weight, py::arg("tenant"), py::call_guard<py::gil_scoped_release>())
        .def("tenant_counter", &Scheduler::tenant_counter, py::arg("tenant"),
             py::call_guard<py::gil_scoped_release>())
        .def("fair_virtual_time", &Scheduler::fair_virtual_time, py::call_guard<py::gil_scoped_release>())
        .def("cancel", &Scheduler::cancel, py::arg("id"), py::call_guard<py::gil_scoped_release>())
        .def(
            "export_state",
            [](const Scheduler& s, bool columnar) {
                StateSnapshot snap;
                {
                    py::gil_scoped_release release;
                    s.export_state(snap, columnar);
                }
                return snapshot_dict(snap);
            },
            py::arg("columnar") = false)
        .def("requeue_in_flight", &Scheduler::requeue_in_flight, py::arg("now"),
             py::call_guard<py::gil_scoped_release>())
        .def(
            "import_state",
            [](Scheduler& s, const py::dict& state) {
                const StateSnapshot snap = snapshot_from(state);
                py::gil_scoped_release release;
                s.import_state(snap);
            },
            py::arg("state"))
        .def(
            "status", [](const Scheduler& s, std::uint64_t id) { return static_cast<int>(s.status(id)); },
            py::arg("id"), py::call_guard<py::gil_scoped_release>())
        .def("check_invariants", &Scheduler::check_invariants, py::call_guard<py::gil_scoped_release>())
        .def_property_readonly("num_devices", &Scheduler::num_devices)
        .def("stats", [](const Scheduler& s) {
            Stats st;
            {
                py::gil_scoped_release release;
                st = s.stats();
            }
            py::dict out;
            out["accepted"] = st.counters.accepted;
            out["completed"] = st.counters.completed;
            out["failed"] = st.counters.failed;
            out["expired"] = st.counters.expired;
            out["cancelled"] = st.counters.cancelled;
            out["retried"] = st.counters.retried;
            out["dispatched"] = st.counters.dispatched;
            out["batches"] = st.counters.batches;
            out["placed_fitting"] = st.counters.placed_fitting;
            out["placed_fallback"] = st.counters.placed_fallback;
            out["misfits"] = st.counters.misfits;
            out["migrated"] = st.counters.migrated;
            out["readmitted"] = st.counters.readmitted;
            out["held"] = st.counters.held;
            out["trimmed"] = st.counters.trimmed;
            out["preempted"] = st.counters.preempted;
            out["deferred"] = st.counters.deferred;
            out["breaker_trips"] = st.counters.breaker_trips;
            out["waiting"] = st.waiting;
            out["queued"] = st.queued;
            out["in_flight"] = st.in_flight;
            out["retrying"] = st.retrying;
            out["queued_deadline"] = st.queued_by_class[0];
            out["queued_strict"] = st.queued_by_class[1];
            out["queued_normal"] = st.queued_by_class[2];
            out["queued_background"] = st.queued_by_class[3];
            out["now"] = st.now;
            py::list devices;
            for (const Device& d : st.devices) devices.append(device_dict(d));
            out["devices"] = devices;
            return out;
        });

    py::object core = m.attr("Core");
    core_type = reinterpret_cast<PyTypeObject*>(core.ptr());
    for (PyMethodDef* def = per_request_methods; def->ml_name != nullptr; ++def) {
        py::object method = py::reinterpret_steal<py::object>(
            PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(core.ptr()), def));
        if (!method) throw py::error_already_set();
        py::setattr(core, def->ml_name, method);
    }
}

}  // namespace capsched::bindings
