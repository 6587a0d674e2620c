// The indexed heap on its own, for tests and benchmarks.
#include "capsched/heap.hpp"
#include "pybind.hpp"

namespace capsched::bindings {

void register_heap(py::module_& m) {
    using Heap = IndexedHeap<HeapKey, 4>;
    py::class_<Heap>(m, "IndexedHeap", "Indexed 4-ary min-heap of integer handles keyed by (key, seq).")
        .def(py::init<>())
        .def("__len__", &Heap::size)
        .def("reserve", &Heap::reserve, py::arg("n"))
        .def("contains", &Heap::contains, py::arg("handle"))
        .def(
            "push",
            [](Heap& h, Handle handle, double key, std::uint64_t seq) {
                if (handle == kNoHandle || h.contains(handle))
                    throw py::value_error("handle " + std::to_string(handle) + " is already in the heap or invalid");
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
                h.update(handle, HeapKey{key, seq});
            },
            py::arg("handle"), py::arg("key"), py::arg("seq") = 0)
        .def("erase", &Heap::erase, py::arg("handle"))
        .def("clear", &Heap::clear)
        .def("check_invariants", &Heap::check_invariants);
}

}  // namespace capsched::bindings
