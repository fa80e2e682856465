// Engine-internal errors. Everything inside the engine throws moe::Failure; the C ABI (router.cc) is
// the only place that catches, turning it into a moe_status and a message. Nothing crosses the ABI.
#pragma once

#include <cstdarg>
#include <cstdio>
#include <stdexcept>
#include <string>

#include "moe_router.h"

namespace moe {

class Failure : public std::runtime_error {
 public:
  Failure(moe_status code, const std::string& message) : std::runtime_error(message), code_(code) {}
  moe_status code() const { return code_; }

 private:
  moe_status code_;
};

// Throws a Failure with a printf-style message.
[[noreturn]] inline void fail(moe_status code, const char* format, ...)
    __attribute__((format(printf, 2, 3)));

[[noreturn]] inline void fail(moe_status code, const char* format, ...) {
  char buffer[512];
  va_list args;
  va_start(args, format);
  std::vsnprintf(buffer, sizeof buffer, format, args);
  va_end(args);
  throw Failure(code, buffer);
}

}  // namespace moe
