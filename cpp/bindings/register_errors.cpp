// Maps the core's exceptions onto the Python classes in capsched.errors.
#include "capsched/errors.hpp"
#include "pybind.hpp"

namespace capsched::bindings {

namespace {
// The classes of capsched.errors, set by register_errors(); kept alive for the
// interpreter's lifetime by the errors module itself.
PyObject* invalid_argument = nullptr;
PyObject* invalid_request = nullptr;
PyObject* config_error = nullptr;
PyObject* unknown_request = nullptr;
PyObject* state_error = nullptr;
PyObject* dependency_error = nullptr;
PyObject* admission_error = nullptr;
PyObject* queue_full = nullptr;
PyObject* base_error = nullptr;
}  // namespace

bool set_core_error(std::exception_ptr p) {
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
    } catch (...) {
        return false;
    }
    return p != nullptr;
}

void set_python_error(std::exception_ptr p) {
    if (!set_core_error(p)) py::detail::translate_exception(p);
}

void register_errors(py::module_& m) {
    (void)m;
    py::module_ errors = py::module_::import("capsched.errors");
    invalid_argument = errors.attr("InvalidArgumentError").ptr();
    invalid_request = errors.attr("InvalidRequestError").ptr();
    config_error = errors.attr("ConfigError").ptr();
    unknown_request = errors.attr("UnknownRequestError").ptr();
    state_error = errors.attr("RequestStateError").ptr();
    dependency_error = errors.attr("DependencyError").ptr();
    admission_error = errors.attr("AdmissionError").ptr();
    queue_full = errors.attr("QueueFullError").ptr();
    base_error = errors.attr("CapschedError").ptr();
    py::register_exception_translator([](std::exception_ptr p) {
        if (p && !set_core_error(p)) std::rethrow_exception(p);  // not the core's: the next translator
    });
}

}  // namespace capsched::bindings
