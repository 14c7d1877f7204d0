"""ksmtuned, the shell daemon of Fedora, RHEL, Debian and (patched) Proxmox VE.

Sources: Debian's package ksmtuned 4.20150326+b1 (/usr/sbin/ksmtuned, from
qemu-kvm's ksmtuned by Dan Kenigsberg, Red Hat 2009); upstream ksmtuned/ksmtuned
``src/ksmtuned.sh.in`` @3dc2f08 (the same but for the qemu process match); Proxmox
``proxmox/ksm-control-daemon`` @2349336 (2024-04-08: debian/patches ksmtuned.diff,
adjust-ksm-slepp.diff, use-pss-instead-of-rsz.diff).

The algorithm (bash integer arithmetic throughout)::

    total = MemTotal; sleep = max(10, KSM_SLEEP_MSEC * 16 GiB_kB // total)   # at start
    thres = max(total * KSM_THRES_COEF // 100, KSM_THRES_CONST); npages = 0
    every KSM_MONITOR_INTERVAL s:
        free = MemFree + Buffers + Cached; committed = sum of ps RSS of the guests
        if committed + thres < total and free > thres: write run = 0
        else: npages = clamp(npages + (BOOST if free < thres else DECAY), MIN, MAX)
              write pages_to_scan = npages, sleep_millisecs = sleep, run = 1

Variants (option ``variant``): ``debian`` (guests: ``pgrep -f '^qemu-system.*-enable-kvm'``,
``ps -o rsz``), ``fedora`` (``pgrep '^qemu(-(kvm|system-.+)|:.{1,11})$'`` on the comm),
``proxmox`` (``ps -C kvm -o pss``, KSM_SLEEP_MSEC = 100, a plain foreground sleep).
The SIGUSR1 "retune" of debian/fedora (an immediate adjust) is not modelled.
"""

from __future__ import annotations

from .base import HostView, Policy, PolicyError

VARIANTS = {
    # variant: (match pattern, ps field of the pattern, ps metric, KSM_SLEEP_MSEC)
    "debian": (r"^qemu-system.*-enable-kvm", "cmdline", "rss", 10),
    "fedora": (r"^qemu(-(kvm|system-.+)|:.{1,11})$", "comm", "rss", 10),
    "proxmox": (r"^kvm$", "comm", "pss", 100),
}


class Ksmtuned(Policy):
    """ksmtuned with the defaults of its script (KSM_* variables; 0 for ``sleep_msec`` means
    the variant's default: 10, or 100 for proxmox; ``ps_metric`` "" the variant's)."""

    name = "ksmtuned"
    source = "Debian ksmtuned 4.20150326+b1 /usr/sbin/ksmtuned; ksmtuned/ksmtuned @3dc2f08"
    options = {"variant": "debian", "monitor_interval": 60, "npages_boost": 300,
               "npages_decay": -50, "npages_min": 64, "npages_max": 1250, "sleep_msec": 0,
               "thres_coef": 20, "thres_const": 2048, "ps_metric": ""}

    def __init__(self, **opts):
        super().__init__(**opts)
        o = self.opt
        if o["variant"] not in VARIANTS:
            raise PolicyError("variant", f"unknown variant {o['variant']!r} "
                                         f"(one of {', '.join(VARIANTS)})")
        if o["ps_metric"] not in ("", "rss", "rsz", "vsz", "pss"):
            raise PolicyError("ps_metric", "must be rss, vsz or pss")
        if o["monitor_interval"] <= 0:
            raise PolicyError("monitor_interval", "must be > 0")
        self.pattern, self.field, metric, sleep_msec = VARIANTS[o["variant"]]
        self.metric = {"rsz": "rss", "": metric}.get(o["ps_metric"], o["ps_metric"])
        self.sleep_msec = o["sleep_msec"] or sleep_msec
        self.interval_ms = o["monitor_interval"] * 1000.0
        self.npages = 0
        self.total = self.sleep = self.thres = 0

    def start(self, view: HostView) -> None:
        o = self.opt
        self.total = view.meminfo()["MemTotal"]
        self.sleep = self.sleep_msec * 16 * 1024 * 1024 // self.total
        if self.sleep <= 10:
            self.sleep = 10
        self.thres = self.total * o["thres_coef"] // 100
        if o["thres_const"] > self.thres:
            self.thres = o["thres_const"]

    def committed(self, view: HostView) -> int:
        return sum(getattr(p, f"{self.metric}_kb") for p in view.processes()
                   if p.matches(self.pattern, self.field))

    def step(self, view: HostView) -> None:
        o = self.opt
        mi = view.meminfo()
        free = mi["MemFree"] + mi["Buffers"] + mi["Cached"]
        committed = self.committed(view)
        if committed + self.thres < self.total and free > self.thres:
            view.sysfs_write("run", 0)
            return
        self.npages += o["npages_boost"] if free < self.thres else o["npages_decay"]
        if self.npages < o["npages_min"]:
            self.npages = o["npages_min"]
        elif self.npages > o["npages_max"]:
            self.npages = o["npages_max"]
        view.sysfs_write("pages_to_scan", self.npages)
        view.sysfs_write("sleep_millisecs", self.sleep)
        view.sysfs_write("run", 1)
