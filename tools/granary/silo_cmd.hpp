#pragma once

namespace granary::cli {

/// `granary silo --config FILE`: runs a silo process with its gateway until
/// SIGTERM or SIGINT. Returns the exit code.
int silo_main(int argc, char** argv);

} // namespace granary::cli
