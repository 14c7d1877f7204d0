"""samepage: an executable model of Linux 6.18 KSM (mm/ksm.c) and tools around it.

Layers (imports only go downwards):
  samepage.mm        -- the memory manager: folios, address spaces, page tables, faults
  samepage.ksm       -- the KSM engine (depends only on samepage.mm)
  samepage.machine   -- the Python API: a machine with processes and ksmd
  samepage.scenario  -- scenario files, the model runner, traces
  samepage.kernel    -- the live-kernel harness
  samepage.cli       -- the command line and reports
"""

KERNEL_RELEASE_MODELLED = "6.18"
__version__ = "0.1.0"


def __getattr__(name):
    if name in ("Machine", "Process", "SyscallError"):
        from samepage import machine
        return getattr(machine, name)
    raise AttributeError(name)
