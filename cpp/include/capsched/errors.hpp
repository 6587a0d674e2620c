// Exceptions the core throws. The bindings translate each into the Python class of the
// same name in capsched.errors. Every throwing entry point validates before it changes
// anything, so a throw leaves the scheduler exactly as it was (strong guarantee).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>

namespace capsched {

struct Error : std::runtime_error {
    using std::runtime_error::runtime_error;
};
// An argument out of range or NaN (e.g. a time).
struct InvalidArgument : Error {
    using Error::Error;
};
// A request field (or bulk array element) out of range, NaN, or inconsistent.
struct InvalidRequest : InvalidArgument {
    using InvalidArgument::InvalidArgument;
};
// Scheduler configuration or device list unusable.
struct ConfigError : Error {
    using Error::Error;
};
// An id that this scheduler never issued.
struct UnknownRequest : Error {
    using Error::Error;
};
// A known id in the wrong state for the call (e.g. completing one that is not in flight).
struct RequestStateError : Error {
    using Error::Error;
};
// A deadline-class request whose bandwidth no device can admit.
struct AdmissionError : Error {
    using Error::Error;
};
// Back-pressure: accepting the request(s) would exceed max_queued or
// max_queued_per_tenant. Nothing was accepted.
struct QueueFull : Error {
    using Error::Error;
};
// depends_on names an unknown request or one that ended without completing.
struct DependencyError : Error {
    using Error::Error;
};

// Shortest faithful text of a number for error messages ("nan", "-1", "0.25", "1e+300").
inline std::string format_number(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.17g", v);
    // Prefer the short form when it round-trips.
    char short_buf[32];
    std::snprintf(short_buf, sizeof short_buf, "%g", v);
    if (std::strtod(short_buf, nullptr) == v) return short_buf;
    return buf;
}

}  // namespace capsched
