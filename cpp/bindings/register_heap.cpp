// The indexed heap and the bucket queue on their own, for tests and benchmarks.
#include <cmath>

#include "capsched/bucket_queue.hpp"
#include "capsched/heap.hpp"
#include "pybind.hpp"

namespace capsched::bindings {

namespace {
// Handles index the heap's position table, so they must be small dense integers; keys
// must be ordered (NaN is not).
constexpr Handle kMaxPythonHandle = 1u << 24;

void check_entry(Handle handle, double key) {
    if (handle >= kMaxPythonHandle)
        throw py::value_error("handle " + std::to_string(handle) + " is too large: handles are slot numbers below " +
                              std::to_string(kMaxPythonHandle));
    if (std::isnan(key)) throw py::value_error("key must not be NaN");
}
}  // namespace

template <class Heap>
void register_queue(py::module_& m, const char* name, const char* doc) {
    py::class_<Heap>(m, name, doc)
        .def(py::init<>())
        .def("__len__", &Heap::size)
        .def(
            "reserve",
            [](Heap& h, std::size_t n) {
                if (n > kMaxPythonHandle)
                    throw py::value_error("reserve(" + std::to_string(n) + ") exceeds the handle range " +
                                          std::to_string(kMaxPythonHandle));
                h.reserve(n);
            },
            py::arg("n"))
        .def("contains", &Heap::contains, py::arg("handle"))
        .def(
            "push",
            [](Heap& h, Handle handle, double key, std::uint64_t seq) {
                check_entry(handle, key);
                if (h.contains(handle))
                    throw py::value_error("handle " + std::to_string(handle) + " is already in the heap");
                h.push(handle, HeapKey{key, seq});
            },
            py::arg("handle"), py::arg("key"), py::arg("seq") = 0)
        .def("pop",
             [](Heap& h) {
                 if (h.empty()) throw py::index_error("pop from an empty heap");
                 return h.pop();
             })
        .def("top",
             [](const Heap& h) {
                 if (h.empty()) throw py::index_error("top of an empty heap");
                 const auto& e = h.top();
                 return py::make_tuple(e.handle, e.key.key, e.key.seq);
             })
        .def(
            "update",
            [](Heap& h, Handle handle, double key, std::uint64_t seq) {
                if (!h.contains(handle)) throw py::key_error("handle " + std::to_string(handle) + " is not in the heap");
                check_entry(handle, key);
                h.update(handle, HeapKey{key, seq});
            },
            py::arg("handle"), py::arg("key"), py::arg("seq") = 0)
        .def("erase", &Heap::erase, py::arg("handle"))
        .def("clear", &Heap::clear)
        .def("check_invariants", &Heap::check_invariants);
}

void register_heap(py::module_& m) {
    register_queue<IndexedHeap<HeapKey, 4>>(m, "IndexedHeap",
                                            "Indexed 4-ary min-heap of integer handles keyed by (key, seq).");
    // (small front and buckets, so that tests reach splits and refills with few entries;
    // the scheduler's ready queues use a front of 1024 and buckets of 512)
    register_queue<BucketQueue<HeapKey, 4, 8, 2>>(
        m, "BucketQueue",
        "Indexed priority queue of integer handles keyed by (key, seq): a heap front of up to 8 "
        "entries, the rest in buckets of up to 4 by key range (the scheduler's ready queues, "
        "with small sizes for tests).");
}

}  // namespace capsched::bindings
