// The one place that includes pybind11: every binding translation unit includes this
// header, so type casters and options are the same everywhere.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;

namespace capsched::bindings {
void register_errors(py::module_& m);
void register_heap(py::module_& m);
void register_scheduler(py::module_& m);
}  // namespace capsched::bindings
