//! `uvm bench`: uvm measured beside its references in one run (the levels
//! bench here and in `levels`, boot, I/O, channels in their own modules),
//! reported as ratios, with plots.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::Error;

pub mod boot;
pub mod channels;
pub mod firecracker;
pub mod guest;
pub mod io;
pub mod levels;
pub mod net;

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

/// The 90th percentile by nearest rank: the smallest sample that at least
/// 90% of the samples do not exceed (of 3 runs, the largest).
pub(crate) fn p90(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n => v[(n * 9).div_ceil(10) - 1],
    }
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
            &reference_cmdline("console=ttyS0 reboot=k panic=-1 quiet", argv, extra),
        ]);
    c
}

/// A reference VMM's kernel command line: `base`, then `argv` for uvm's
/// init (which runs it as `uvm boot -- ARGV` would), then `extra`.
pub(crate) fn reference_cmdline(base: &str, argv: &[String], extra: &str) -> String {
    format!("{base} {} {extra}", uvm_protocol::encode_command(argv))
        .trim_end()
        .to_string()
}

/// The VMMs the boot and I/O benches race, in the order of their columns
/// and of each round of runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vmm {
    Uvm,
    Firecracker,
    Qemu,
}

impl Vmm {
    pub fn name(self) -> &'static str {
        match self {
            Vmm::Uvm => "uvm",
            Vmm::Firecracker => "firecracker",
            Vmm::Qemu => "qemu microvm",
        }
    }

    /// Its key in the benches' JSON.
    pub fn key(self) -> &'static str {
        match self {
            Vmm::Uvm => "uvm",
            Vmm::Firecracker => "firecracker",
            Vmm::Qemu => "qemu_microvm",
        }
    }

    /// The heading of uvm's ratio to it.
    pub fn ratio_name(self) -> &'static str {
        match self {
            Vmm::Uvm => "uvm/uvm",
            Vmm::Firecracker => "uvm/firecracker",
            Vmm::Qemu => "uvm/qemu",
        }
    }
}

/// The heading row of a bench table: `first` in a column `width` wide, then
/// a column per VMM and one per reference for uvm's ratio to it.
pub(crate) fn vmm_heading(first: &str, width: usize, vmms: &[Vmm]) -> String {
    let mut out = format!("{first:<width$}");
    for vmm in vmms {
        out.push_str(&format!(" {:>13}", vmm.name()));
    }
    for vmm in vmms.iter().skip(1) {
        out.push_str(&format!(" {:>16}", vmm.ratio_name()));
    }
    out.push('\n');
    out
}

impl std::fmt::Display for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One panel of a plot: its label and its (name, samples) bars, uvm's first.
pub type Panel<'a> = (&'a str, Vec<(&'a str, Vec<f64>)>);

/// Side-by-side bar panels, one bar per VMM at its median (uvm's in blue,
/// the references in greys), each run as a dot: an SVG any browser shows.
pub fn svg_plot(title: &str, panels: &[Panel<'_>]) -> String {
    const H: f64 = 240.0;
    let bars = panels
        .iter()
        .map(|(_, b)| b.len())
        .max()
        .unwrap_or(2)
        .max(2);
    let w = 60.0 + 130.0 * bars as f64;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"20\" font-size=\"14\">{title}</text>\n",
        w * panels.len() as f64,
        H + 40.0
    );
    for (p, (label, bars)) in panels.iter().enumerate() {
        let x0 = w * p as f64;
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
            c = x0 + w - 20.0
        ));
        for (i, (name, values)) in bars.iter().enumerate() {
            let bx = x0 + 50.0 + 130.0 * i as f64;
            let color = ["#3b7dd8", "#999999", "#cccccc"][i.min(2)];
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
        assert_eq!(p90(vec![3.0, 1.0, 2.0]), 3.0);
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(p90(ten.clone()), 9.0);
        assert_eq!(p90(ten.into_iter().chain([11.0]).collect()), 10.0);
        assert!(p90(vec![]).is_nan());
        let svg = svg_plot(
            "t",
            &[("a", vec![("uvm", vec![1.0, 2.0]), ("q", vec![4.0])])],
        );
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert_eq!(svg.matches("<rect").count(), 3, "background and two bars");
        assert_eq!(svg.matches("<circle").count(), 3, "one dot per run");
        let three = svg_plot(
            "t",
            &[(
                "a",
                vec![("uvm", vec![1.0]), ("fc", vec![2.0]), ("q", vec![4.0])],
            )],
        );
        assert_eq!(
            three.matches("<rect").count(),
            4,
            "background and three bars"
        );
        assert!(
            three.contains("#cccccc"),
            "the second reference has its own grey"
        );
    }
}
