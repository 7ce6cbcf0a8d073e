//! `uvm bench boot`: uvm against QEMU's microvm booting the same kernel and
//! initramfs, alternating, in one process: time from process start to the
//! guest init's readiness line, and the VMM's resident memory outside guest
//! RAM at that moment. Reported side by side, with ratios.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::Error;

pub mod channels;
pub mod guest;
pub mod io;
pub mod levels;
pub mod net;

const READY: &str = "uvm-init: ready";

#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub ready: Duration,
    pub overhead_kib: u64,
}

/// RSS (KiB) of every mapping of `pid` except guest RAM: the one anonymous
/// mapping about `mem` bytes long (QEMU rounds its RAM block up a little).
pub fn rss_outside_guest_ram(smaps: &str, mem: u64) -> u64 {
    let mut total = 0;
    let mut is_guest_ram = false;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let first = f.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let range = first.split_once('-').and_then(|(a, b)| {
                Some((
                    u64::from_str_radix(a, 16).ok()?,
                    u64::from_str_radix(b, 16).ok()?,
                ))
            });
            let anonymous = f.nth(4).is_none();
            is_guest_ram = match range {
                Some((a, b)) => anonymous && (mem..=mem + (8 << 20)).contains(&(b - a)),
                None => false,
            };
        } else if first == "Rss:" && !is_guest_ram {
            total += f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    total
}

/// Starts `cmd`, waits for the readiness line, samples memory, stops it.
fn measure(mut cmd: Command, mem: u64) -> Result<Sample, Error> {
    let start = Instant::now();
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| Error::Io(format!("starting {cmd:?}"), e))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut ready = None;
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if line.contains(READY) {
            ready = Some(start.elapsed());
            break;
        }
    }
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", child.id())).unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    let ready = ready.ok_or_else(|| {
        Error::Io(
            format!("{cmd:?}"),
            std::io::Error::other("the guest never became ready"),
        )
    })?;
    Ok(Sample {
        ready,
        overhead_kib: rss_outside_guest_ram(&smaps, mem),
    })
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// QEMU's microvm (ACPI on, KVM, no default devices, no user config), the
/// serial console on stdout, booting `kernel` and `initrd` to run `argv`
/// through uvm's init; `extra` is appended to the kernel command line.
/// Callers add their devices.
pub(crate) fn qemu_microvm(
    kernel: &Path,
    initrd: &Path,
    mem: u64,
    vcpus: u32,
    argv: &[String],
    extra: &str,
) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-M", "microvm,acpi=on", "-enable-kvm", "-cpu", "host"])
        .args(["-smp", &vcpus.to_string()])
        .args(["-m", &format!("{}M", mem >> 20)])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-serial",
            "stdio",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initrd)
        .args([
            "-append",
            format!(
                "console=ttyS0 reboot=k panic=-1 quiet {} {extra}",
                uvm_protocol::encode_command(argv)
            )
            .trim_end(),
        ]);
    c
}

pub struct BootBench {
    pub runs: usize,
    pub mem: u64,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub json: Option<PathBuf>,
    pub plot: Option<PathBuf>,
}

/// Two side-by-side bar panels (ready time, memory overhead), one bar per
/// VMM at its median, each run as a dot: an SVG any browser shows.
/// One panel of a plot: its label and two (name, samples) bars.
pub type Panel<'a> = (&'a str, [(&'a str, Vec<f64>); 2]);

pub fn svg_plot(title: &str, panels: &[Panel<'_>]) -> String {
    const W: f64 = 320.0;
    const H: f64 = 240.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">{title}</text>\n",
        W * panels.len() as f64,
        H + 40.0
    );
    for (p, (label, bars)) in panels.iter().enumerate() {
        let x0 = W * p as f64;
        let max = bars
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(f64::MIN_POSITIVE, f64::max)
            * 1.15;
        let y = |v: f64| 40.0 + (H - 40.0) * (1.0 - v / max);
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"38\">{label}</text>\n",
            x0 + 20.0
        ));
        svg.push_str(&format!(
            "<line x1=\"{a}\" y1=\"{b}\" x2=\"{c}\" y2=\"{b}\" stroke=\"black\"/>\n",
            a = x0 + 20.0,
            b = H,
            c = x0 + W - 20.0
        ));
        for (i, (name, values)) in bars.iter().enumerate() {
            let bx = x0 + 50.0 + 130.0 * i as f64;
            let color = if i == 0 { "#3b7dd8" } else { "#999999" };
            svg.push_str(&bar(bx, name, values, color, H, &y));
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// One bar at the median of `values` (labelled with it and `name` below
/// the axis at `h`), each value a dot; `y` maps values to the plot.
fn bar(bx: f64, name: &str, values: &[f64], color: &str, h: f64, y: &dyn Fn(f64) -> f64) -> String {
    let m = median(values.to_vec());
    let mut s = format!(
        "<rect x=\"{bx}\" y=\"{:.1}\" width=\"80\" height=\"{:.1}\" fill=\"{color}\"/>\n<text x=\"{}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>\n<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{name}</text>\n",
        y(m),
        h - y(m),
        bx + 40.0,
        y(m) - 4.0,
        if m.abs() >= 1.0 { format!("{m:.2}") } else { format!("{m:.3}") },
        bx + 40.0,
        h + 16.0
    );
    for v in values {
        s.push_str(&format!(
            "<circle cx=\"{}\" cy=\"{:.1}\" r=\"3\" fill=\"black\"/>\n",
            bx + 40.0,
            y(*v)
        ));
    }
    s
}

/// Writes `svg` to `path` (a `.svg`), and beside it a PNG drawn from it by
/// librsvg's `rsvg-convert` (installed by set-up) where that is there.
/// Returns whether the PNG was made.
pub fn write_plot(path: &std::path::Path, svg: &str) -> Result<bool, Error> {
    std::fs::write(path, svg).map_err(|e| Error::Io(format!("writing {}", path.display()), e))?;
    let png = path.with_extension("png");
    let made = Command::new("rsvg-convert")
        .args(["--format", "png", "--zoom", "2", "-o"])
        .arg(&png)
        .arg(path)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !made {
        let _ = std::fs::remove_file(&png);
    }
    Ok(made)
}

/// One bar per target at its median, each sample a dot, uvm's levels in
/// blue and the references in grey: an SVG any browser shows.
pub fn svg_bars(title: &str, bars: &[(&str, Vec<f64>)]) -> String {
    const H: f64 = 260.0;
    const BAR: f64 = 110.0;
    // Wide enough for the title too (about 8 px a character at 14 px).
    let w = (60.0 + BAR * bars.len() as f64).max(20.0 + 8.0 * title.chars().count() as f64);
    let max = bars
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .filter(|v| v.is_finite())
        .fold(f64::MIN_POSITIVE, f64::max)
        * 1.15;
    let y = |v: f64| 40.0 + (H - 40.0) * (1.0 - v / max);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">{title}</text>\n\
         <line x1=\"20\" y1=\"{H}\" x2=\"{}\" y2=\"{H}\" stroke=\"black\"/>\n",
        H + 40.0,
        w - 20.0
    );
    for (i, (name, values)) in bars.iter().enumerate() {
        let bx = 40.0 + BAR * i as f64;
        let reference = matches!(*name, "runc" | "qemu-microvm");
        let color = if reference { "#999999" } else { "#3b7dd8" };
        svg.push_str(&bar(bx, name, values, color, H, &y));
    }
    svg.push_str("</svg>\n");
    svg
}

impl BootBench {
    fn uvm(&self) -> Result<Command, Error> {
        let exe = std::env::current_exe().map_err(|e| Error::Io("locating uvm".into(), e))?;
        let mut c = Command::new(exe);
        c.args(["boot", "--mem", &format!("{}M", self.mem >> 20), "--kernel"])
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
            u.push(measure(self.uvm()?, self.mem)?);
            q.push(measure(self.qemu(), self.mem)?);
        }
        let secs = |s: &[Sample]| median(s.iter().map(|x| x.ready.as_secs_f64()).collect());
        let mib = |s: &[Sample]| median(s.iter().map(|x| x.overhead_kib as f64 / 1024.0).collect());
        let (ut, qt, um, qm) = (secs(&u), secs(&q), mib(&u), mib(&q));
        let list = |s: &[Sample], f: &dyn Fn(&Sample) -> f64| {
            s.iter()
                .map(|x| format!("{:.3}", f(x)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let t = |x: &Sample| x.ready.as_secs_f64();
        let m = |x: &Sample| x.overhead_kib as f64 / 1024.0;
        let mut out = String::new();
        out.push_str(&format!(
            "boot to init readiness, {} runs each, {} MiB guest, same kernel and initramfs\n",
            self.runs,
            self.mem >> 20
        ));
        out.push_str(&format!(
            "{:<14} {:>12} {:>18}\n",
            "", "ready (s)", "VMM overhead (MiB)"
        ));
        out.push_str(&format!("{:<14} {:>12.3} {:>18.1}\n", "uvm", ut, um));
        out.push_str(&format!(
            "{:<14} {:>12.3} {:>18.1}\n",
            "qemu microvm", qt, qm
        ));
        out.push_str(&format!(
            "{:<14} {:>12.2} {:>18.2}\n",
            "uvm / qemu",
            ut / qt,
            um / qm
        ));
        if let Some(path) = &self.plot {
            let ready = |s: &[Sample]| s.iter().map(|x| x.ready.as_secs_f64()).collect::<Vec<_>>();
            let over = |s: &[Sample]| {
                s.iter()
                    .map(|x| x.overhead_kib as f64 / 1024.0)
                    .collect::<Vec<_>>()
            };
            let svg = svg_plot(
                &format!(
                    "uvm vs QEMU microvm: same kernel and initramfs, {} MiB, {} runs",
                    self.mem >> 20,
                    self.runs
                ),
                &[
                    (
                        "boot to init ready (s)",
                        [("uvm", ready(&u)), ("qemu microvm", ready(&q))],
                    ),
                    (
                        "VMM memory outside guest RAM (MiB)",
                        [("uvm", over(&u)), ("qemu microvm", over(&q))],
                    ),
                ],
            );
            std::fs::write(path, svg).map_err(|e| Error::Io(path.display().to_string(), e))?;
        }
        if let Some(path) = &self.json {
            let json = format!(
                "{{\"runs\":{},\"mem_mib\":{},\"uvm\":{{\"ready_s\":[{}],\"overhead_mib\":[{}]}},\"qemu_microvm\":{{\"ready_s\":[{}],\"overhead_mib\":[{}]}},\"ratio\":{{\"ready\":{:.3},\"overhead\":{:.3}}}}}\n",
                self.runs, self.mem >> 20, list(&u, &t), list(&u, &m), list(&q, &t), list(&q, &m), ut / qt, um / qm
            );
            std::fs::write(path, json).map_err(|e| Error::Io(path.display().to_string(), e))?;
        }
        Ok(out)
    }
}

pub fn default_paths() -> Result<(PathBuf, PathBuf), Error> {
    Ok((
        crate::guest_image::default_file(crate::guest_image::KERNEL)?,
        crate::guest_image::default_file(crate::guest_image::INITRD)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_is_left_out_of_the_overhead() {
        let smaps = "\
55d0a0000000-55d0a0100000 r-xp 00000000 08:01 123  /usr/bin/uvm
Rss:                 800 kB
7f0000000000-7f0010000000 rw-p 00000000 00:00 0 
Rss:              100000 kB
7f0010000000-7f0010200000 rw-p 00000000 00:00 0 
Rss:                1200 kB
";
        assert_eq!(rss_outside_guest_ram(smaps, 256 << 20), 2000);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        let svg = svg_plot("t", &[("a", [("uvm", vec![1.0, 2.0]), ("q", vec![4.0])])]);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<rect").count(), 3, "background and two bars");
        assert_eq!(svg.matches("<circle").count(), 3, "one dot per run");
    }
}
