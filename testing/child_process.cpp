#include "testing/child_process.hpp"

#include <sys/prctl.h>

namespace granary::testing {

pid_t spawn_child(const std::vector<std::string>& args, int out_fd, int err_fd,
                  bool die_with_parent, std::string& error) {
  if (args.empty()) {
    error = "spawn_child: no program";
    return -1;
  }
  // Built before the fork: the child may only make async-signal-safe calls.
  std::vector<char*> argv;
  argv.reserve(args.size() + 1);
  for (auto& arg : args)
    argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  auto parent = ::getpid();
  auto pid = ::fork();
  if (pid < 0) {
    error = std::string{"fork: "} + std::strerror(errno);
    return -1;
  }
  if (pid == 0) {
    if (die_with_parent) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      // The parent died before the request took effect.
      if (::getppid() != parent)
        ::_exit(127);
    }
    if (out_fd >= 0 && ::dup2(out_fd, STDOUT_FILENO) < 0)
      ::_exit(126);
    if (err_fd >= 0 && ::dup2(err_fd, STDERR_FILENO) < 0)
      ::_exit(126);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

} // namespace granary::testing
