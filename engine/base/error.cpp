// The exception policy's last step (see engine/base/error.h): the message and exit status of an
// error that reached the command line.
#include "engine/base/error.h"

#include <exception>
#include <ostream>

namespace kd {

int report_error(std::ostream& err) {
  try {
    throw;
  } catch (const InputError& e) {
    err << e.what() << "\n";
    return kExitBadInput;
  } catch (const ContractError& e) {
    err << "internal error: " << e.what()
        << "\n(a bug in kdengine, not in your input: please report it with the command that led "
           "here)\n";
    return kExitFailure;
  } catch (const std::exception& e) {
    err << "error: " << e.what() << "\n";
    return kExitFailure;
  } catch (...) {
    err << "error: an unknown exception\n";
    return kExitFailure;
  }
}

}  // namespace kd
