#include "pybind.hpp"

PYBIND11_MODULE(_core, m) {
    m.doc() = "capsched's compiled core. Private: use the capsched package.";
    capsched::bindings::register_errors(m);
    capsched::bindings::register_heap(m);
    capsched::bindings::register_scheduler(m);
}
