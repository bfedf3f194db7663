#pragma once

namespace granary::cli {

/// `granary dead-letters --data DIR [list|requeue|drop] ...`: manages the
/// dead letters of a stopped silo's data directory. Returns the exit code.
int dead_letters_main(int argc, char** argv);

} // namespace granary::cli
