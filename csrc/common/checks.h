// Error handling shared by every op: C++ throws (never aborts); messages name the function
// and the argument, with the expected and the actual value.
//
//   MEDS_CHECK_ARG(cond, "group_min_distance", "groups", "values in [0, " << g << ")", "got " << v)
//
// meds::TypeError      -> Python TypeError   (wrong dtype / device)
// std::invalid_argument -> Python ValueError (bad shape / value)
// std::runtime_error   -> Python RuntimeError (CUDA failures, out of memory)
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace meds {

// A wrong dtype or device. Derives from std::invalid_argument so C++ callers that catch
// argument errors catch it too; the bindings map it to Python's TypeError.
class TypeError : public std::invalid_argument {
 public:
  explicit TypeError(const std::string& what) : std::invalid_argument(what) {}
};

namespace detail {
// "<fn>: argument '<arg>' must be <expected>, got <actual>"
inline std::string arg_message(const char* fn, const char* arg, const std::string& expected,
                               const std::string& actual) {
  std::ostringstream os;
  os << fn << ": argument '" << arg << "' must be " << expected << ", got " << actual;
  return os.str();
}
}  // namespace detail

}  // namespace meds

// Throws std::invalid_argument (Python ValueError) unless `cond`. `expected` and `actual`
// are stream expressions: MEDS_CHECK_ARG(n > 0, "f", "n", "> 0", n)
#define MEDS_CHECK_ARG(cond, fn, arg, expected, actual)                              \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::ostringstream meds_exp_, meds_act_;                                       \
      meds_exp_ << expected;                                                         \
      meds_act_ << actual;                                                           \
      throw std::invalid_argument(                                                   \
          ::meds::detail::arg_message(fn, arg, meds_exp_.str(), meds_act_.str()));   \
    }                                                                                \
  } while (0)

// Same, but throws meds::TypeError (Python TypeError): for dtype and device mismatches.
#define MEDS_CHECK_TYPE(cond, fn, arg, expected, actual)                             \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      std::ostringstream meds_exp_, meds_act_;                                       \
      meds_exp_ << expected;                                                         \
      meds_act_ << actual;                                                           \
      throw ::meds::TypeError(                                                       \
          ::meds::detail::arg_message(fn, arg, meds_exp_.str(), meds_act_.str()));   \
    }                                                                                \
  } while (0)
