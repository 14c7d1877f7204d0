"""samepage: an executable model of Linux 6.18 KSM (mm/ksm.c) and tools around it.

Layers (imports only go downwards):
  samepage.mm        -- the memory manager: folios, address spaces, page tables, faults
  samepage.ksm       -- the KSM engine (depends only on samepage.mm)
  samepage.scenario  -- scenario files, the model runner, traces
  samepage.kernel    -- the live-kernel harness
  samepage.cli       -- the command line and reports
"""

KERNEL_RELEASE_MODELLED = "6.18"
__version__ = "0.1.0"
