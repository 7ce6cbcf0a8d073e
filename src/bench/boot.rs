//! `uvm bench boot`: uvm against QEMU's microvm (and Firecracker, with
//! `--firecracker PATH`) booting the same kernel and initramfs, alternating,
//! in one process: time from process start to the guest init's readiness
//! line and where it went, and the VMM's resident memory outside guest RAM
//! at that moment. Reported side by side, with ratios.
//!
//! The phases come from two clocks. The host's says when the process
//! started and when the readiness line came; the guest's (CLOCK_BOOTTIME,
//! which starts early in the kernel's own set-up) says, on that line, when
//! the init started and how long its modules took. What lies between the
//! process's start and the guest's clock is the VMM's set-up, the kernel's
//! decompression and its earliest code; uvm alone also says when its vCPUs
//! first ran (its `--verbose` timeline), which splits that span in two.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use super::firecracker::{self, Firecracker};
use super::{
    median, p90, qemu_microvm, reference_cmdline, rss_outside_guest_ram, svg_plot, vmm_heading,
    write_plot, Vmm,
};
use crate::error::Error;
use crate::vmm::linux::DEFAULT_CMDLINE;
use crate::vmm::memory::parse_size;
use crate::vmm::shutdown::EXIT_UVM_ERROR;

const READY: &str = "uvm-init: ready after ";
const TIMELINE: &str = "uvm: timeline: vCPUs ran ";
/// A bound on one uvm boot, so a guest that hangs cannot hang the bench.
const UVM_TIMEOUT: &str = "120";

pub struct BootBench {
    pub runs: usize,
    pub mem: u64,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub firecracker: Option<Firecracker>,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
}

/// What the init's readiness line says, on the guest's clock (seconds).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReadyLine {
    pub ready: f64,
    pub init_start: f64,
    pub modules: f64,
}

/// `uvm-init: ready after 3.900 s (init started at 1.2 s, modules took 0.4 s)`.
pub fn parse_ready(line: &str) -> Option<ReadyLine> {
    let rest = &line[line.find(READY)? + READY.len()..];
    let number_after = |s: &str, key: &str| -> Option<f64> {
        let at = s.find(key)? + key.len();
        s[at..].split_whitespace().next()?.parse().ok()
    };
    Some(ReadyLine {
        ready: rest.split_whitespace().next()?.parse().ok()?,
        init_start: number_after(rest, "init started at ")?,
        modules: number_after(rest, "modules took ")?,
    })
}

/// `uvm: timeline: vCPUs ran 45 ms after the process started; ...`, in
/// seconds.
pub fn parse_timeline(line: &str) -> Option<f64> {
    let rest = &line[line.find(TIMELINE)? + TIMELINE.len()..];
    let ms: f64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(ms / 1000.0)
}

/// One boot, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Process start to the readiness line, on the host's clock.
    pub ready: f64,
    pub overhead_kib: u64,
    pub guest: ReadyLine,
    /// Process start to the first KVM_RUN (uvm only).
    pub setup: Option<f64>,
}

/// The phases, in the order they happen, each with how it is read.
pub const PHASES: [&str; 6] = [
    "process start to first KVM_RUN",
    "first KVM_RUN to the guest's clock",
    "process start to the guest's clock",
    "kernel: clock start to init",
    "init: start to ready",
    "  of which modules",
];

impl Sample {
    pub fn phases(&self) -> [Option<f64>; 6] {
        let before_clock = self.ready - self.guest.ready;
        [
            self.setup,
            self.setup.map(|s| before_clock - s),
            Some(before_clock),
            Some(self.guest.init_start),
            Some(self.guest.ready - self.guest.init_start),
            Some(self.guest.modules),
        ]
    }

    fn overhead_mib(&self) -> f64 {
        self.overhead_kib as f64 / 1024.0
    }
}

/// Starts `cmd`, reads its console from stdout (the references) or stderr (uvm, whose
/// `--verbose` puts the console there and its timeline after it) until the
/// readiness line, samples memory, and then either reads on to the end for
/// the timeline (`to_end`) or stops the VMM.
fn measure(mut cmd: Command, mem: u64, from_stderr: bool) -> Result<Sample, Error> {
    let what = format!("{:?}", cmd.get_program());
    let start = Instant::now();
    let (out, err) = match from_stderr {
        true => (Stdio::null(), Stdio::piped()),
        false => (Stdio::piped(), Stdio::null()),
    };
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| Error::Io(format!("starting {what}"), e))?;
    let stream: Box<dyn std::io::Read> = match from_stderr {
        true => Box::new(child.stderr.take().expect("piped stderr")),
        false => Box::new(child.stdout.take().expect("piped stdout")),
    };
    let mut lines = BufReader::new(stream).lines();
    let mut found = None;
    let mut last = Vec::new();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        if let Some(r) = parse_ready(&line) {
            found = Some((start.elapsed().as_secs_f64(), r));
            break;
        }
        last.push(line);
        if last.len() > 3 {
            last.remove(0);
        }
    }
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", child.id())).unwrap_or_default();
    let mut setup = None;
    if from_stderr && found.is_some() {
        setup = lines.map_while(Result::ok).find_map(|l| parse_timeline(&l));
        let _ = child.wait();
    } else {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (ready, guest) = found.ok_or_else(|| {
        Error::Io(
            what,
            std::io::Error::other(format!(
                "the guest never became ready; it last said: {}",
                last.join(" | ")
            )),
        )
    })?;
    Ok(Sample {
        ready,
        overhead_kib: rss_outside_guest_ram(&smaps, mem),
        guest,
        setup,
    })
}

/// Medians of the phases, and median and p90 of the totals.
#[derive(Debug, Clone, Copy)]
struct Summary {
    phases: [Option<f64>; 6],
    ready: f64,
    ready_p90: f64,
    mem: f64,
    mem_p90: f64,
}

fn summary(samples: &[Sample]) -> Summary {
    let mut phases = [None; 6];
    for (i, p) in phases.iter_mut().enumerate() {
        let v: Vec<f64> = samples.iter().filter_map(|s| s.phases()[i]).collect();
        if !v.is_empty() {
            *p = Some(median(v));
        }
    }
    let ready: Vec<f64> = samples.iter().map(|s| s.ready).collect();
    let mem: Vec<f64> = samples.iter().map(Sample::overhead_mib).collect();
    Summary {
        phases,
        ready: median(ready.clone()),
        ready_p90: p90(ready),
        mem: median(mem.clone()),
        mem_p90: p90(mem),
    }
}

/// What one VMM measured, in the order the bench ran them (uvm first).
pub type Side<'a> = (Vmm, &'a [Sample]);

/// The table: each phase and the totals (median, then p90), uvm beside
/// each reference, with uvm's ratio to each where both measured it.
pub fn table(runs: usize, mem: u64, sides: &[Side<'_>]) -> String {
    let sums: Vec<Summary> = sides.iter().map(|(_, s)| summary(s)).collect();
    let cell =
        |v: Option<f64>, digits: usize| v.map_or("-".to_string(), |v| format!("{v:.digits$}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_string(),
    };
    let mut out = format!(
        "boot to init readiness, {runs} runs each (medians; p90 below the totals), {} MiB guest, same kernel and initramfs\n",
        mem >> 20
    );
    let vmms: Vec<Vmm> = sides.iter().map(|(v, _)| *v).collect();
    out.push_str(&vmm_heading("seconds", 38, &vmms));
    let mut row = |name: &str, digits: usize, value: &dyn Fn(&Summary) -> Option<f64>| {
        out.push_str(&format!("{name:<38}"));
        for s in &sums {
            out.push_str(&format!(" {:>13}", cell(value(s), digits)));
        }
        for s in &sums[1..] {
            out.push_str(&format!(" {:>16}", ratio(value(&sums[0]), value(s))));
        }
        out.push('\n');
    };
    for (i, name) in PHASES.iter().enumerate() {
        row(name, 3, &|s| s.phases[i]);
    }
    row("total: process start to ready", 3, &|s| Some(s.ready));
    row("  p90", 3, &|s| Some(s.ready_p90));
    row("VMM memory outside guest RAM (MiB)", 1, &|s| Some(s.mem));
    row("  p90", 1, &|s| Some(s.mem_p90));
    out
}

/// Every sample with its phases, the medians and p90s, and uvm's ratios
/// to each reference, for plots and comparisons across runs.
pub fn json(runs: usize, mem: u64, sides: &[Side<'_>]) -> serde_json::Value {
    let side = |s: &[Sample]| {
        let sum = summary(s);
        serde_json::json!({
            "ready_s": s.iter().map(|x| x.ready).collect::<Vec<_>>(),
            "overhead_mib": s.iter().map(Sample::overhead_mib).collect::<Vec<_>>(),
            "phases": s.iter().map(|x| {
                PHASES.iter().zip(x.phases()).map(|(k, v)| (k.trim().to_string(), serde_json::json!(v)))
                    .collect::<serde_json::Map<_, _>>()
            }).collect::<Vec<_>>(),
            "median": { "ready_s": sum.ready, "overhead_mib": sum.mem },
            "p90": { "ready_s": sum.ready_p90, "overhead_mib": sum.mem_p90 },
        })
    };
    let mut v = serde_json::json!({ "runs": runs, "mem_mib": mem >> 20 });
    let u = summary(sides[0].1);
    let mut ratios = serde_json::Map::new();
    for (vmm, samples) in sides {
        v[vmm.key()] = side(samples);
        if *vmm != Vmm::Uvm {
            let r = summary(samples);
            ratios.insert(
                vmm.key().to_string(),
                serde_json::json!({ "ready": u.ready / r.ready, "overhead": u.mem / r.mem }),
            );
        }
    }
    v["ratio"] = ratios.into();
    v
}

const USAGE_EXIT: &str = "\
Exit status: 0 when every run of every VMM reached the init's ready line;
125 otherwise (no usable KVM, no default guest, a bad --firecracker, a
guest that never became ready).";

#[derive(Debug, clap::Args)]
#[command(after_help = USAGE_EXIT)]
pub struct BootArgs {
    /// Runs of each VMM (alternating)
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Guest memory
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub mem: u64,
    /// Also race this Firecracker binary (one you built or installed; none ships with uvm)
    #[arg(long, value_name = "PATH")]
    pub firecracker: Option<PathBuf>,
    /// Also write the samples as JSON here
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Also draw the results as an SVG plot here
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

impl BootBench {
    /// Checks what the user gave before anything starts.
    pub fn new(args: &BootArgs) -> Result<BootBench, Error> {
        if args.runs == 0 {
            return Err(Error::Usage("--runs 0: nothing to measure".into()));
        }
        let firecracker = args
            .firecracker
            .as_deref()
            .map(firecracker::check)
            .transpose()?;
        let (kernel, initrd) = super::default_paths()?;
        Ok(BootBench {
            runs: args.runs,
            mem: args.mem,
            kernel,
            initrd,
            firecracker,
            json: args.json.clone(),
            plot: args.plot.clone(),
        })
    }

    fn uvm(&self) -> Result<Command, Error> {
        let exe = std::env::current_exe().map_err(|e| Error::Io("locating uvm".into(), e))?;
        let mut c = Command::new(exe);
        c.args(["boot", "--verbose", "--timeout", UVM_TIMEOUT])
            .args(["--mem", &format!("{}M", self.mem >> 20), "--kernel"])
            .arg(&self.kernel)
            .arg("--initrd")
            .arg(&self.initrd)
            .args(["--", "true"]);
        Ok(c)
    }

    fn qemu(&self) -> Command {
        qemu_microvm(
            &self.kernel,
            &self.initrd,
            self.mem,
            1,
            &["true".into()],
            "",
        )
    }

    /// Firecracker's VM: uvm's kernel command line, no devices.
    fn firecracker_config(&self) -> firecracker::VmConfig {
        firecracker::VmConfig {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            boot_args: reference_cmdline(DEFAULT_CMDLINE, &["true".into()], ""),
            mem: self.mem,
            vcpus: 1,
            disk: None,
            tap: None,
        }
    }

    pub fn run(&self) -> Result<String, Error> {
        let prepared = match &self.firecracker {
            Some(fc) => {
                eprintln!(
                    "bench boot: racing {} ({})",
                    fc.version,
                    fc.binary.display()
                );
                Some(fc.prepare(&self.firecracker_config())?)
            }
            None => None,
        };
        let mut sides: Vec<(Vmm, Vec<Sample>)> = [Vmm::Uvm, Vmm::Firecracker, Vmm::Qemu]
            .into_iter()
            .filter(|v| *v != Vmm::Firecracker || prepared.is_some())
            .map(|v| (v, vec![]))
            .collect();
        for i in 0..self.runs {
            eprintln!("bench boot: run {}/{}", i + 1, self.runs);
            for (vmm, samples) in sides.iter_mut() {
                let cmd = match (*vmm, &prepared) {
                    (Vmm::Uvm, _) => self.uvm()?,
                    (Vmm::Firecracker, Some(p)) => p.command(),
                    _ => self.qemu(),
                };
                samples.push(measure(cmd, self.mem, *vmm == Vmm::Uvm)?);
            }
        }
        let sides: Vec<Side<'_>> = sides.iter().map(|(v, s)| (*v, s.as_slice())).collect();
        if let Some(path) = &self.plot {
            let of = |f: fn(&Sample) -> f64| -> Vec<(&str, Vec<f64>)> {
                sides
                    .iter()
                    .map(|(v, s)| (v.name(), s.iter().map(f).collect()))
                    .collect()
            };
            let names: Vec<&str> = sides.iter().map(|(v, _)| v.name()).collect();
            let svg = svg_plot(
                &format!(
                    "{}: same kernel and initramfs, {} MiB, {} runs",
                    names.join(" vs "),
                    self.mem >> 20,
                    self.runs
                ),
                &[
                    ("boot to init ready (s)", of(|s| s.ready)),
                    (
                        "process start to the guest's clock (s)",
                        of(|s| s.ready - s.guest.ready),
                    ),
                    (
                        "VMM memory outside guest RAM (MiB)",
                        of(Sample::overhead_mib),
                    ),
                ],
            );
            write_plot(path, &svg)?;
        }
        if let Some(path) = &self.json {
            let mut v = json(self.runs, self.mem, &sides);
            if let Some(fc) = &self.firecracker {
                v["firecracker_version"] = fc.version.clone().into();
            }
            std::fs::write(path, format!("{v}\n"))
                .map_err(|e| Error::Io(path.display().to_string(), e))?;
        }
        Ok(table(self.runs, self.mem, &sides))
    }
}

/// `uvm bench boot`: prints the table, or the error; the exit status.
pub fn main(args: &BootArgs) -> i32 {
    match BootBench::new(args).and_then(|b| b.run()) {
        Ok(table) => {
            print!("{table}");
            0
        }
        Err(e) => {
            eprintln!("uvm bench boot: {e}");
            EXIT_UVM_ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lines_that_time_a_boot() {
        let r = parse_ready(
            "uvm-init: ready after 3.900 s (init started at 1.250 s, modules took 0.400 s)",
        )
        .unwrap();
        assert_eq!(
            r,
            ReadyLine {
                ready: 3.9,
                init_start: 1.25,
                modules: 0.4
            }
        );
        // An init of before the phases: no breakdown, so no sample.
        assert_eq!(parse_ready("uvm-init: ready after 3.900 s"), None);
        assert_eq!(parse_ready("uvm-init: listening"), None);
        assert_eq!(
            parse_timeline(
                "uvm: timeline: vCPUs ran 45 ms after the process started; the guest's init said ready at 900 ms"
            ),
            Some(0.045)
        );
        assert_eq!(parse_timeline("uvm: timeline: vCPUs ran soon"), None);
    }

    #[test]
    fn phases_add_up_and_the_table_compares_uvm_with_each_reference() {
        let guest = ReadyLine {
            ready: 2.0,
            init_start: 1.5,
            modules: 0.2,
        };
        let u = Sample {
            ready: 3.0,
            overhead_kib: 2048,
            guest,
            setup: Some(0.25),
        };
        let p = u.phases();
        assert_eq!(p[0], Some(0.25));
        assert_eq!(p[1], Some(0.75));
        assert_eq!(p[2], Some(1.0));
        assert_eq!(p[3], Some(1.5));
        assert_eq!(p[4], Some(0.5));
        // Set-up, decompression, kernel, init: the whole boot.
        assert_eq!(
            p[0].unwrap() + p[1].unwrap() + p[3].unwrap() + p[4].unwrap(),
            u.ready
        );
        let q = Sample {
            ready: 6.0,
            overhead_kib: 40 << 10,
            guest,
            setup: None,
        };
        let f = Sample {
            ready: 4.0,
            overhead_kib: 4 << 10,
            guest,
            setup: None,
        };
        let sides = [
            (Vmm::Uvm, &[u][..]),
            (Vmm::Firecracker, &[f][..]),
            (Vmm::Qemu, &[q][..]),
        ];
        let t = table(1, 256 << 20, &sides);
        let lines: Vec<&str> = t.lines().collect();
        fn words(l: &str) -> Vec<&str> {
            l.split_whitespace().rev().take(5).collect()
        }
        assert!(
            lines[1].ends_with("uvm   firecracker  qemu microvm  uvm/firecracker         uvm/qemu"),
            "{t}"
        );
        let setup = lines
            .iter()
            .find(|l| l.starts_with("process start to first KVM_RUN"))
            .unwrap();
        assert_eq!(words(setup), ["-", "-", "-", "-", "0.250"], "{t}");
        let clock = lines
            .iter()
            .find(|l| l.starts_with("process start to the guest's clock"))
            .unwrap();
        // 1.0 s for uvm, 2.0 for Firecracker, 4.0 for QEMU.
        assert_eq!(
            words(clock),
            ["0.25", "0.50", "4.000", "2.000", "1.000"],
            "{t}"
        );
        let total = lines.iter().position(|l| l.starts_with("total")).unwrap();
        assert_eq!(
            words(lines[total]),
            ["0.50", "0.75", "6.000", "4.000", "3.000"],
            "{t}"
        );
        assert!(lines[total + 1].starts_with("  p90"), "{t}");
        let mem = lines
            .iter()
            .position(|l| l.starts_with("VMM memory"))
            .unwrap();
        assert_eq!(
            words(lines[mem]),
            ["0.05", "0.50", "40.0", "4.0", "2.0"],
            "{t}"
        );
        assert!(lines[mem + 1].starts_with("  p90"), "{t}");
        // Without Firecracker, its columns are not there.
        let two = table(1, 256 << 20, &[sides[0], sides[2]]);
        assert!(!two.contains("firecracker"), "{two}");
        let total = two.lines().find(|l| l.starts_with("total")).unwrap();
        assert!(total.ends_with("0.50"), "{two}");

        let j = json(1, 256 << 20, &sides);
        assert_eq!(j["uvm"]["phases"][0]["init: start to ready"], 0.5);
        assert_eq!(
            j["qemu_microvm"]["phases"][0]["process start to first KVM_RUN"],
            serde_json::Value::Null
        );
        assert_eq!(j["firecracker"]["ready_s"][0], 4.0);
        assert_eq!(j["firecracker"]["median"]["overhead_mib"], 4.0);
        assert_eq!(j["uvm"]["p90"]["ready_s"], 3.0);
        assert_eq!(j["ratio"]["firecracker"]["ready"], 0.75);
        assert_eq!(j["ratio"]["qemu_microvm"]["overhead"], 0.05);
    }
}
