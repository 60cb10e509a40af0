"""The whole exception tree of perfkit.

    PerfkitError            anything the CLI turns into a one-line message and exit code 2
    ├── ConfigError         bad option, bad KPI file, unknown scenario or variant
    ├── TargetError         target unreachable, not ready in time, port in use, died
    ├── RunError            the load run itself could not be carried out
    ├── ClusterError        workers did not join in time, or run another perfkit version
    ├── ReportError         a run directory that cannot be read or rendered
    └── InternalError       a bug: exit code 3, its traceback in the run directory

A failed KPI or a detected regression is a result (exit code 1), never an exception.
"""


class PerfkitError(Exception):
    pass


class ConfigError(PerfkitError):
    pass


class TargetError(PerfkitError):
    pass


class RunError(PerfkitError):
    pass


class ClusterError(PerfkitError):
    pass


class ReportError(PerfkitError):
    pass


class InternalError(PerfkitError):
    pass
