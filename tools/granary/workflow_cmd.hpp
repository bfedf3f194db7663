#pragma once

namespace granary::cli {

/// `granary workflow history --data DIR TYPE ID [--json] [--export FILE]`:
/// shows a stopped silo's workflow journal, and exports it for
/// `check_replay`. Returns the exit code.
int workflow_main(int argc, char** argv);

} // namespace granary::cli
