#pragma once

namespace granary::cli {

/// `granary workflow SUBCOMMAND --gateway HOST:PORT ...`: starts,
/// describes, awaits, signals, queries, cancels, updates, lists and shows
/// workflows through a silo's gateway. Returns the exit code.
int workflow_gateway_main(int argc, char** argv);

/// `granary dead-letters --gateway HOST:PORT [list|requeue|drop] ...`.
int dead_letters_gateway_main(int argc, char** argv);

/// `granary grain call|send --gateway HOST:PORT TYPE KEY ...`.
int grain_main(int argc, char** argv);

/// `granary cluster status --gateway HOST:PORT`.
int cluster_main(int argc, char** argv);

/// True when `--gateway` is among the arguments.
bool has_gateway_flag(int argc, char** argv);

} // namespace granary::cli
