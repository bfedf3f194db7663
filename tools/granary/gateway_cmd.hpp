#pragma once

#include <cstddef>
#include <initializer_list>
#include <optional>
#include <string>
#include <vector>

#include "runtime/admin.hpp"

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

/// Prints `letters` for `granary dead-letters list`: one JSON object per
/// line when `json`, else two lines each and a count (noting when `limit`
/// was reached).
void print_dead_letters(const std::vector<dead_letter_info>& letters,
                        size_t limit, bool json);

/// Names the first empty argument, as "the NAME is empty": `args[i]` is
/// named `names[i]` (extra arguments are not checked).
std::optional<std::string>
empty_argument(const std::vector<std::string>& args,
               std::initializer_list<const char*> names);

/// True when `--gateway` is among the arguments.
bool has_gateway_flag(int argc, char** argv);

} // namespace granary::cli
