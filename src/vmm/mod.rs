//! The VMM: a KVM virtual machine, its devices on two buses, its vCPU threads
//! and the event loop thread, and the builder that boots Linux in it.

pub mod boot;
pub mod console;
pub mod cpuid;
pub mod layout;
pub mod linux;
pub mod memory;
pub mod regs;
pub mod seccomp;
pub mod shutdown;
pub mod vcpu;
pub mod virtio;
pub mod virtiofsd;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_bindings::{
    kvm_pit_config, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use uvm_devices::legacy::{EventSink, GuestEvent};
use uvm_devices::{Bus, BusDevice};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use crate::error::Error;
use shutdown::{Outcome, Shutdown};

/// uvm's ceiling on vCPUs: APIC ids must fit the xAPIC's 8 bits, minus the
/// broadcast id, and the MADT lists them as u8.
pub const MAX_VCPUS: u32 = 254;

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    mem: GuestMemoryMmap,
    mem_size: u64,
    vcpus: Vec<VcpuFd>,
    pio: Bus,
    mmio: Bus,
    shutdown: Arc<Shutdown>,
    /// What must live as long as the VM (device backends such as
    /// virtiofsd). Dropped before `events`, so a backend is stopped while
    /// its device still holds the connection: one that ended on its own
    /// can be told from one that was stopped.
    keep: Vec<Box<dyn Send>>,
    events: EventManager<Subscriber>,
    /// Told on stderr when the VM ends, if `verbose`: (what, its account).
    reports: Vec<(String, Report)>,
    verbose: bool,
    /// Whether the threads run under their seccomp filters (see
    /// [`seccomp`]); on unless turned off.
    seccomp: bool,
    /// The console's ring, flushed to the host when the VM ends.
    console: Option<uvm_devices::legacy::console_ring::RingHandle>,
    /// The console thread's work, started by [`Vm::run`]: not earlier, so
    /// that a jail's drop of privileges (which glibc replays on every
    /// thread) happens before it exists under its filter.
    console_drain: Option<Box<dyn FnOnce() + Send>>,
}

/// How long the console's last bytes may take to reach a host that reads
/// slowly, once the VM has ended; a host that does not read costs this.
const CONSOLE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A device's one-line account, read when the VM has ended.
pub type Report = Box<dyn Fn() -> String + Send>;

impl Vm {
    /// A VM with `mem_size` bytes of RAM, an in-kernel irqchip and PIT, and
    /// `vcpus` vCPUs (not yet configured). `shared_memory`: RAM a
    /// vhost-user backend can map too (see [`memory::create`]).
    pub fn new(mem_size: u64, vcpus: u32, shared_memory: bool) -> Result<Self, Error> {
        Self::create(mem_size, vcpus, true, shared_memory)
    }

    /// The same without an interrupt controller: HLT then exits to uvm,
    /// which is what small test programs want.
    pub fn new_bare(mem_size: u64, vcpus: u32) -> Result<Self, Error> {
        Self::create(mem_size, vcpus, false, false)
    }

    fn create(mem_size: u64, vcpus: u32, irqchip: bool, shared: bool) -> Result<Self, Error> {
        memory::validate_size(mem_size, memory::host_memory())?;
        let kvm = Kvm::new().map_err(Error::KvmOpen)?;
        let max = u32::try_from(kvm.get_max_vcpus())
            .unwrap_or(u32::MAX)
            .min(MAX_VCPUS);
        if vcpus == 0 || vcpus > max {
            return Err(Error::Vcpus(vcpus, max));
        }
        let fd = kvm
            .create_vm()
            .map_err(|e| Error::Kvm("KVM_CREATE_VM", e))?;
        let mem = memory::create(mem_size, shared)?;
        for (slot, region) in (0u32..).zip(mem.iter()) {
            let region_desc = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: region.as_ptr() as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `mem`, which the
            // returned Vm keeps for as long as the VM fd exists.
            unsafe { fd.set_user_memory_region(region_desc) }
                .map_err(|e| Error::Kvm("KVM_SET_USER_MEMORY_REGION", e))?;
        }
        fd.set_identity_map_address(layout::KVM_IDENTITY_MAP)
            .map_err(|e| Error::Kvm("KVM_SET_IDENTITY_MAP_ADDR", e))?;
        let tss = usize::try_from(layout::KVM_TSS).map_err(|_| Error::BootSetup("TSS address"))?;
        fd.set_tss_address(tss)
            .map_err(|e| Error::Kvm("KVM_SET_TSS_ADDR", e))?;
        if irqchip {
            fd.create_irq_chip()
                .map_err(|e| Error::Kvm("KVM_CREATE_IRQCHIP", e))?;
            // The PC speaker port is answered in the kernel too.
            let pit = kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            };
            fd.create_pit2(pit)
                .map_err(|e| Error::Kvm("KVM_CREATE_PIT2", e))?;
        }
        let vcpus = (0..vcpus)
            .map(|i| fd.create_vcpu(u64::from(i)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Kvm("KVM_CREATE_VCPU", e))?;
        let events =
            EventManager::new().map_err(|e| Error::Device(format!("event loop: {e:?}")))?;
        Ok(Self {
            kvm,
            fd,
            mem,
            mem_size,
            vcpus,
            pio: Bus::new(),
            mmio: Bus::new(),
            shutdown: Arc::new(Shutdown::default()),
            keep: Vec::new(),
            events,
            reports: Vec::new(),
            console: None,
            console_drain: None,
            verbose: false,
            seccomp: true,
        })
    }

    /// Keeps `x` until the VM ends.
    pub fn keep_alive(&mut self, x: Box<dyn Send>) {
        self.keep.push(x);
    }

    /// Adds a device to the account given at the end with `verbose`.
    /// The console ring whose last bytes go out before [`Vm::run`] returns.
    pub fn set_console(
        &mut self,
        ring: uvm_devices::legacy::console_ring::RingHandle,
        drain: Box<dyn FnOnce() + Send>,
    ) {
        self.console = Some(ring);
        self.console_drain = Some(drain);
    }

    pub fn add_report(&mut self, what: String, report: Report) {
        self.reports.push((what, report));
    }

    /// At the end, tell each device's counters and queue state, and the
    /// accesses nobody claimed, on stderr.
    pub fn set_verbose(&mut self, verbose: bool) {
        self.verbose = verbose;
    }

    /// Runs the VM's threads under their seccomp filters (the default) or
    /// without (`--no-seccomp`, for debugging).
    pub fn set_seccomp(&mut self, on: bool) {
        self.seccomp = on;
    }

    pub fn seccomp(&self) -> bool {
        self.seccomp
    }

    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.mem
    }

    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }

    pub fn vcpus(&self) -> &[VcpuFd] {
        &self.vcpus
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    pub fn shutdown(&self) -> Arc<Shutdown> {
        self.shutdown.clone()
    }

    /// Where devices report guest events.
    pub fn event_sink(&self) -> EventSink {
        let s = self.shutdown.clone();
        Arc::new(move |e: GuestEvent| s.on_guest_event(e))
    }

    pub fn add_pio_device(
        &mut self,
        dev: Arc<Mutex<dyn BusDevice>>,
        base: u16,
        len: u16,
    ) -> Result<(), Error> {
        self.pio
            .insert(dev, u64::from(base), u64::from(len))
            .map_err(|e| Error::Device(e.to_string()))
    }

    pub fn add_mmio_device(
        &mut self,
        dev: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), Error> {
        self.mmio
            .insert(dev, base, len)
            .map_err(|e| Error::Device(e.to_string()))
    }

    /// An EventFd that raises IOAPIC pin `gsi` when written.
    pub fn irq_line(&self, gsi: u32) -> Result<EventFd, Error> {
        let evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Io("eventfd".into(), e))?;
        self.fd
            .register_irqfd(&evt, gsi)
            .map_err(|e| Error::Kvm("KVM_IRQFD", e))?;
        Ok(evt)
    }

    pub fn add_subscriber(&mut self, s: Subscriber) {
        self.events.add_subscriber(s);
    }

    /// Gives every vCPU its CPUID, boot MSRs and LAPIC wiring.
    pub fn configure_vcpus(&self) -> Result<(), Error> {
        let supported = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(|e| Error::Kvm("KVM_GET_SUPPORTED_CPUID", e))?;
        let count = u32::try_from(self.vcpus.len()).map_err(|_| Error::BootSetup("vCPU count"))?;
        for (i, vcpu) in (0u32..).zip(self.vcpus.iter()) {
            let id = cpuid::for_vcpu(&supported, i, count, &cpuid::NativeCpuid);
            vcpu.set_cpuid2(&id)
                .map_err(|e| Error::Kvm("KVM_SET_CPUID2", e))?;
            let msrs = regs::boot_msrs()?;
            let set = vcpu
                .set_msrs(&msrs)
                .map_err(|e| Error::Kvm("KVM_SET_MSRS", e))?;
            if set != msrs.as_slice().len() {
                return Err(Error::BootSetup("KVM refused one of the boot MSRs"));
            }
            let lapic = vcpu
                .get_lapic()
                .map_err(|e| Error::Kvm("KVM_GET_LAPIC", e))?;
            vcpu.set_lapic(&regs::lapic(lapic))
                .map_err(|e| Error::Kvm("KVM_SET_LAPIC", e))?;
        }
        Ok(())
    }

    /// Runs the VM until it ends (or `timeout`), then stops every thread.
    ///
    /// Each vCPU thread and the event loop put themselves under their
    /// seccomp filters before they touch anything the guest controls; the
    /// calling thread takes the control filter once they run (so they do
    /// not inherit it) and keeps it after this returns.
    pub fn run(self, timeout: Option<Duration>) -> Result<Outcome, Error> {
        vcpu::install_kick_handler()?;
        let handlers = vcpu::ExitHandlers {
            pio: Arc::new(self.pio),
            mmio: Arc::new(self.mmio),
            shutdown: self.shutdown.clone(),
        };
        let seccomp = self.seccomp;
        let mut threads = Vec::with_capacity(self.vcpus.len());
        let mut failed = None;
        if let Some(drain) = self.console_drain {
            failed = seccomp::spawn("console", seccomp::Role::Control, seccomp, drain).err();
        }
        let running_at = Instant::now();
        for (i, fd) in (0u32..).zip(self.vcpus) {
            if failed.is_some() {
                break;
            }
            let h = handlers.clone();
            let name = format!("vcpu{i}");
            match seccomp::spawn(&name, seccomp::Role::Vcpu, seccomp, move || {
                vcpu::run(fd, i, h)
            }) {
                Ok(t) => threads.push(t),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let mut events = self.events;
        let shutdown = self.shutdown.clone();
        let event_loop = if failed.is_none() {
            let run = move || {
                while !shutdown.is_done() {
                    if let Err(e) = events.run_with_timeout(100) {
                        shutdown.report(Outcome::VcpuError(format!("event loop failed: {e:?}")));
                    }
                }
            };
            match seccomp::spawn("event-loop", seccomp::Role::EventLoop, seccomp, run) {
                Ok(t) => Some(t),
                Err(e) => {
                    failed = Some(e);
                    None
                }
            }
        } else {
            None
        };
        // The vCPUs and the event loop run under their own filters: this
        // thread takes the control filter, which they must not inherit.
        if failed.is_none() {
            failed = seccomp::apply(seccomp::Role::Control, seccomp).err();
        }
        if let Some(e) = failed {
            // Stop what started; the outcome recorded here is never told.
            self.shutdown.report(Outcome::Halted);
            vcpu::stop_all(threads);
            if let Some(t) = event_loop {
                let _ = t.join();
            }
            return Err(e);
        }

        let outcome = self.shutdown.wait(timeout);
        vcpu::stop_all(threads);
        if let Some(t) = event_loop {
            let _ = t.join();
        }
        if let Some(ring) = &self.console {
            ring.flush(CONSOLE_GRACE);
            ring.close();
        }
        if self.verbose {
            let start = crate::process_start();
            let ms = |t: Instant| t.saturating_duration_since(start).as_millis();
            crate::say!(
                "uvm: timeline: vCPUs ran {} ms after the process started; the guest's init said ready {}",
                ms(running_at),
                match self.shutdown.ready_at() {
                    Some(t) => format!("at {} ms", ms(t)),
                    None => "never".into(),
                }
            );
            for (what, report) in &self.reports {
                crate::say!("uvm: {what}: {}", report());
            }
            crate::say!(
                "uvm: unclaimed accesses: {} port I/O, {} MMIO",
                handlers.pio.unhandled(),
                handlers.mmio.unhandled()
            );
        }
        // The fds (VM, vCPUs) close only now, after every thread is done.
        drop(self.fd);
        drop(self.mem);
        Ok(outcome)
    }
}
