"""The exit codes of every `epochctl` command."""

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran and failed (a port in use, a refused call, a failed check)
EXIT_USAGE = 2  # the command line cannot work as written (argparse's code for its own errors)
EXIT_TIMEOUT = 3  # a wait (rollout --wait, a deadline) ran out
