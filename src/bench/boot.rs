//! `uvm bench boot`: uvm against QEMU's microvm booting the same kernel and
//! initramfs, alternating, in one process: time from process start to the
//! guest init's readiness line and where it went, and the VMM's resident
//! memory outside guest RAM at that moment. Reported side by side, with
//! ratios.
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

use super::{median, qemu_microvm, rss_outside_guest_ram, svg_plot, write_plot};
use crate::error::Error;

const READY: &str = "uvm-init: ready after ";
const TIMELINE: &str = "uvm: timeline: vCPUs ran ";
/// A bound on one uvm boot, so a guest that hangs cannot hang the bench.
const UVM_TIMEOUT: &str = "120";

pub struct BootBench {
    pub runs: usize,
    pub mem: u64,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
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

/// Starts `cmd`, reads its console from stdout (QEMU) or stderr (uvm, whose
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

fn medians(samples: &[Sample]) -> ([Option<f64>; 6], f64, f64) {
    let mut phases = [None; 6];
    for (i, p) in phases.iter_mut().enumerate() {
        let v: Vec<f64> = samples.iter().filter_map(|s| s.phases()[i]).collect();
        if !v.is_empty() {
            *p = Some(median(v));
        }
    }
    let ready = median(samples.iter().map(|s| s.ready).collect());
    let mem = median(samples.iter().map(Sample::overhead_mib).collect());
    (phases, ready, mem)
}

/// The table: each phase and the totals, uvm beside QEMU, with ratios where
/// both sides measured the phase.
pub fn table(runs: usize, mem: u64, u: &[Sample], q: &[Sample]) -> String {
    let (up, ut, um) = medians(u);
    let (qp, qt, qm) = medians(q);
    let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".to_string(),
    };
    let mut out = format!(
        "boot to init readiness, {runs} runs each (medians), {} MiB guest, same kernel and initramfs\n",
        mem >> 20
    );
    out.push_str(&format!(
        "{:<38} {:>10} {:>14} {:>10}\n",
        "seconds", "uvm", "qemu microvm", "uvm/qemu"
    ));
    for (i, name) in PHASES.iter().enumerate() {
        out.push_str(&format!(
            "{:<38} {:>10} {:>14} {:>10}\n",
            name,
            cell(up[i]),
            cell(qp[i]),
            ratio(up[i], qp[i])
        ));
    }
    out.push_str(&format!(
        "{:<38} {:>10.3} {:>14.3} {:>10.2}\n",
        "total: process start to ready",
        ut,
        qt,
        ut / qt
    ));
    out.push_str(&format!(
        "{:<38} {:>10.1} {:>14.1} {:>10.2}\n",
        "VMM memory outside guest RAM (MiB)",
        um,
        qm,
        um / qm
    ));
    out
}

/// Every sample with its phases, for plots and comparisons across runs.
pub fn json(runs: usize, mem: u64, u: &[Sample], q: &[Sample]) -> serde_json::Value {
    let side = |s: &[Sample]| {
        serde_json::json!({
            "ready_s": s.iter().map(|x| x.ready).collect::<Vec<_>>(),
            "overhead_mib": s.iter().map(Sample::overhead_mib).collect::<Vec<_>>(),
            "phases": s.iter().map(|x| {
                PHASES.iter().zip(x.phases()).map(|(k, v)| (k.trim().to_string(), serde_json::json!(v)))
                    .collect::<serde_json::Map<_, _>>()
            }).collect::<Vec<_>>(),
        })
    };
    let (_, ut, um) = medians(u);
    let (_, qt, qm) = medians(q);
    serde_json::json!({
        "runs": runs,
        "mem_mib": mem >> 20,
        "uvm": side(u),
        "qemu_microvm": side(q),
        "ratio": { "ready": ut / qt, "overhead": um / qm },
    })
}

impl BootBench {
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

    pub fn run(&self) -> Result<String, Error> {
        let (mut u, mut q) = (vec![], vec![]);
        for i in 0..self.runs {
            eprintln!("bench boot: run {}/{}", i + 1, self.runs);
            u.push(measure(self.uvm()?, self.mem, true)?);
            q.push(measure(self.qemu(), self.mem, false)?);
        }
        if let Some(path) = &self.plot {
            let of = |s: &[Sample], f: fn(&Sample) -> f64| s.iter().map(f).collect::<Vec<_>>();
            let svg = svg_plot(
                &format!(
                    "uvm vs QEMU microvm: same kernel and initramfs, {} MiB, {} runs",
                    self.mem >> 20,
                    self.runs
                ),
                &[
                    (
                        "boot to init ready (s)",
                        [
                            ("uvm", of(&u, |s| s.ready)),
                            ("qemu microvm", of(&q, |s| s.ready)),
                        ],
                    ),
                    (
                        "process start to the guest's clock (s)",
                        [
                            ("uvm", of(&u, |s| s.ready - s.guest.ready)),
                            ("qemu microvm", of(&q, |s| s.ready - s.guest.ready)),
                        ],
                    ),
                    (
                        "VMM memory outside guest RAM (MiB)",
                        [
                            ("uvm", of(&u, Sample::overhead_mib)),
                            ("qemu microvm", of(&q, Sample::overhead_mib)),
                        ],
                    ),
                ],
            );
            write_plot(path, &svg)?;
        }
        if let Some(path) = &self.json {
            let v = json(self.runs, self.mem, &u, &q);
            std::fs::write(path, format!("{v}\n"))
                .map_err(|e| Error::Io(path.display().to_string(), e))?;
        }
        Ok(table(self.runs, self.mem, &u, &q))
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
    fn phases_add_up_and_the_table_compares_what_both_measured() {
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
        let t = table(1, 256 << 20, &[u], &[q]);
        assert!(
            t.contains(
                "process start to first KVM_RUN              0.250              -          -"
            ),
            "{t}"
        );
        assert!(t.contains("process start to the guest's clock"), "{t}");
        let total = t.lines().find(|l| l.starts_with("total")).unwrap();
        assert!(total.ends_with("0.50"), "{t}");
        let mem = t.lines().find(|l| l.starts_with("VMM memory")).unwrap();
        assert!(mem.ends_with("0.05"), "{t}");
        let j = json(1, 256 << 20, &[u], &[q]);
        assert_eq!(j["uvm"]["phases"][0]["init: start to ready"], 0.5);
        assert_eq!(
            j["qemu_microvm"]["phases"][0]["process start to first KVM_RUN"],
            serde_json::Value::Null
        );
    }
}
