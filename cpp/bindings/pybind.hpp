// The one place that includes pybind11: every binding translation unit includes this
// header, so type casters and options are the same everywhere.
#pragma once

#include <exception>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

namespace py = pybind11;

namespace capsched::bindings {
void register_errors(py::module_& m);
// Sets the Python error for a core exception (capsched.errors); false if p is not one.
bool set_core_error(std::exception_ptr p);
// Sets the Python error for any exception, as pybind11's dispatch would: the core's
// through set_core_error, the rest through pybind11's default translation.
void set_python_error(std::exception_ptr p);
void register_heap(py::module_& m);
void register_scheduler(py::module_& m);
}  // namespace capsched::bindings
