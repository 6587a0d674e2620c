// Maps the core's exceptions onto the Python classes in capsched.errors.
#include "capsched/errors.hpp"
#include "pybind.hpp"

namespace capsched::bindings {

void register_errors(py::module_& m) {
    (void)m;
    py::module_ errors = py::module_::import("capsched.errors");
    // Kept alive for the interpreter's lifetime by the errors module itself.
    static PyObject* invalid_argument = errors.attr("InvalidArgumentError").ptr();
    static PyObject* invalid_request = errors.attr("InvalidRequestError").ptr();
    static PyObject* config_error = errors.attr("ConfigError").ptr();
    static PyObject* unknown_request = errors.attr("UnknownRequestError").ptr();
    static PyObject* state_error = errors.attr("RequestStateError").ptr();
    static PyObject* dependency_error = errors.attr("DependencyError").ptr();
    static PyObject* admission_error = errors.attr("AdmissionError").ptr();
    static PyObject* queue_full = errors.attr("QueueFullError").ptr();
    static PyObject* base_error = errors.attr("CapschedError").ptr();
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const InvalidRequest& e) {
            PyErr_SetString(invalid_request, e.what());
        } catch (const InvalidArgument& e) {
            PyErr_SetString(invalid_argument, e.what());
        } catch (const ConfigError& e) {
            PyErr_SetString(config_error, e.what());
        } catch (const UnknownRequest& e) {
            PyErr_SetString(unknown_request, e.what());
        } catch (const RequestStateError& e) {
            PyErr_SetString(state_error, e.what());
        } catch (const DependencyError& e) {
            PyErr_SetString(dependency_error, e.what());
        } catch (const AdmissionError& e) {
            PyErr_SetString(admission_error, e.what());
        } catch (const QueueFull& e) {
            PyErr_SetString(queue_full, e.what());
        } catch (const Error& e) {
            PyErr_SetString(base_error, e.what());
        }
    });
}

}  // namespace capsched::bindings
