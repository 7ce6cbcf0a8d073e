//! Bad input to `uvm boot`: one line on stderr, a non-zero status, no panic,
//! no hang. These run on any host: uvm checks its input before KVM.

use std::process::Command;
use std::time::{Duration, Instant};

fn uvm(args: &[&str]) -> (i32, String, String) {
    uvm_env(args, &[])
}

fn uvm_env(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_uvm"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run uvm");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "uvm {args:?} took {:?}",
        start.elapsed()
    );
    (
        out.status.code().expect("uvm exited by a signal"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(args: &[&str], code: i32, needle: &str) {
    assert_one_line_error_env(args, &[], code, needle);
}

fn assert_one_line_error_env(args: &[&str], env: &[(&str, &str)], code: i32, needle: &str) {
    let (rc, stdout, stderr) = uvm_env(args, env);
    assert_eq!(rc, code, "uvm {args:?}: stderr {stderr:?}");
    assert!(stdout.is_empty(), "uvm {args:?} printed {stdout:?}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    if code == 125 {
        assert_eq!(lines.len(), 1, "uvm {args:?}: not one line: {stderr:?}");
    }
    assert!(
        stderr.contains(needle),
        "uvm {args:?}: {stderr:?} lacks {needle:?}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
}

#[test]
fn missing_kernel() {
    assert_one_line_error(
        &["boot", "--kernel", "/nonexistent/vmlinuz", "--", "true"],
        125,
        "cannot open kernel /nonexistent/vmlinuz",
    );
}

#[test]
fn text_file_as_kernel() {
    let p = std::env::temp_dir().join(format!("uvm-text-kernel-{}", std::process::id()));
    std::fs::write(&p, "#!/bin/sh\necho not a kernel\n".repeat(100)).unwrap();
    assert_one_line_error(
        &["boot", "--kernel", p.to_str().unwrap()],
        125,
        "is not a bootable x86_64 kernel",
    );
    std::fs::remove_file(p).unwrap();
}

#[test]
fn empty_and_directory_kernels() {
    let p = std::env::temp_dir().join(format!("uvm-empty-kernel-{}", std::process::id()));
    std::fs::write(&p, "").unwrap();
    assert_one_line_error(
        &["boot", "--kernel", p.to_str().unwrap()],
        125,
        "not a bootable",
    );
    std::fs::remove_file(p).unwrap();
    assert_one_line_error(&["boot", "--kernel", "/tmp"], 125, "not a regular file");
}

#[test]
fn missing_initrd() {
    let kernel =
        uvm::guest_image::default_file(uvm::guest_image::KERNEL).expect("make guest first");
    assert_one_line_error(
        &[
            "boot",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            "/nonexistent.cpio",
        ],
        125,
        "cannot read initramfs /nonexistent.cpio",
    );
}

#[test]
fn impossible_vcpus() {
    assert_one_line_error(
        &["boot", "--vcpus", "0"],
        125,
        "--vcpus 0: must be between 1 and",
    );
    assert_one_line_error(&["boot", "--vcpus", "100000"], 125, "--vcpus 100000");
    assert_one_line_error(&["boot", "--vcpus", "two"], 2, "invalid value 'two'");
}

#[test]
fn impossible_memory() {
    assert_one_line_error(
        &["boot", "--mem", "1M"],
        125,
        "--mem 1M: a guest needs at least 64 MiB",
    );
    assert_one_line_error(
        &["boot", "--mem", "64T"],
        125,
        "more than this host can give",
    );
    assert_one_line_error(&["boot", "--mem", "12XB"], 2, "unknown unit");
    assert_one_line_error(&["boot", "--mem=-5G"], 2, "invalid value");
}

#[test]
fn overlong_command_line() {
    // Validation passes; the command line is checked when the VM is built,
    // so on a PVM host the host check answers first: either way one line.
    let long = "x=".to_string() + &"y".repeat(4000);
    let (rc, _, stderr) = uvm(&["boot", "--cmdline", &long, "--", "true"]);
    assert_eq!(rc, 125, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn help_lists_exit_codes() {
    let (rc, stdout, _) = uvm(&["boot", "--help"]);
    assert_eq!(rc, 0);
    for code in ["124", "125", "128+N"] {
        assert!(stdout.contains(code), "{stdout}");
    }
}

#[test]
fn check_reports_kvm_flavour() {
    let (_, stdout, _) = uvm(&["check"]);
    assert!(stdout.contains("KVM:"), "{stdout}");
    assert!(stdout.contains("nested runner:"), "{stdout}");
    assert!(stdout.contains("cgroups:"), "{stdout}");
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        assert!(stdout.contains("PVM"), "{stdout}");
        assert!(stdout.contains("boot Linux here: no"), "{stdout}");
    }
}

#[test]
fn missing_or_unusable_disks() {
    assert_one_line_error(
        &["boot", "--disk", "/nonexistent.img", "--", "true"],
        125,
        "disk image /nonexistent.img",
    );
    assert_one_line_error(
        &["boot", "--root", "/nonexistent-root.img", "--", "true"],
        125,
        "disk image /nonexistent-root.img",
    );
    assert_one_line_error(
        &["boot", "--disk", "/tmp", "--", "true"],
        125,
        "not a regular file or a block device",
    );
    let p = std::env::temp_dir().join(format!("uvm-tiny-disk-{}", std::process::id()));
    std::fs::write(&p, [0u8; 100]).unwrap();
    assert_one_line_error(
        &["boot", "--disk", p.to_str().unwrap(), "--", "true"],
        125,
        "smaller than one 512-byte sector",
    );
    let root = format!("{},root", p.display());
    assert_one_line_error(
        &["boot", "--disk", &root, "--disk", &root, "--", "true"],
        125,
        "only one disk can be the root",
    );
    std::fs::remove_file(p).unwrap();
    assert_one_line_error(
        &["boot", "--disk", "/x.img,readonly"],
        2,
        "unknown disk option",
    );
    assert_one_line_error(
        &["boot", "--disk", "/x.img,id=a-name-longer-than-20"],
        2,
        "1 to 20 bytes",
    );
}

#[test]
fn bad_network_devices() {
    assert_one_line_error(&["boot", "--net", "tap=a/b"], 2, "an interface name");
    assert_one_line_error(&["boot", "--net", "bridge=br0"], 2, "unknown net option");
    assert_one_line_error(
        &["boot", "--net", "tap=t0,mac=01:00:5e:00:00:01"],
        2,
        "multicast",
    );
    assert_one_line_error(
        &["boot", "--net", "tap=t0", "--net", "tap=t0", "--", "true"],
        125,
        "tap t0 is given twice",
    );
}

#[test]
fn bad_rate_limits() {
    for (disk, needle) in [
        (
            "/x.img,bw=0",
            "bw=0: a rate must be more than 0 bytes per second",
        ),
        ("/x.img,bw=-1M", "bw=-1M: expected a size"),
        ("/x.img,bw=lots", "bw=lots: expected a size"),
        ("/x.img,iops=0", "iops=0: must be more than 0"),
        ("/x.img,iops=2.5", "iops=2.5: expected a whole number"),
        ("/x.img,burst=8M", "needs a byte rate (bw=)"),
        (
            "/x.img,iops=10,ops_burst=0",
            "ops_burst=0: must be more than 0",
        ),
        ("/x.img,ops_burst=5", "needs an ops rate (iops=)"),
    ] {
        assert_one_line_error(&["boot", "--disk", disk], 2, needle);
    }
    for (net, needle) in [
        ("tap=t0,bw=0", "bw=0: a rate must be more than 0"),
        ("tap=t0,rx_bw=x", "rx_bw=x: expected a size"),
        ("tap=t0,tx_ops=-3", "tx_ops=-3: expected a whole number"),
        (
            "tap=t0,rx_bw=1M,burst=1M",
            "a byte burst for TX needs a byte rate",
        ),
        (
            "tap=t0,tx_ops_burst=4",
            "an ops burst for TX needs an ops rate",
        ),
        ("tap=t0,iops=5", "unknown net option"),
    ] {
        assert_one_line_error(&["boot", "--net", net], 2, needle);
    }
}

#[test]
fn bad_vsock_flags() {
    assert_one_line_error(
        &["boot", "--vsock", "cid=2,uds=/tmp/uvm-v.sock"],
        2,
        "the hypervisor's and the host's",
    );
    assert_one_line_error(&["boot", "--vsock", "cid=3"], 2, "needs both cid and uds");
    // An existing path is never replaced, and nothing is made.
    let taken = std::env::temp_dir().join(format!("uvm-vsock-taken-{}", std::process::id()));
    std::fs::write(&taken, b"mine").unwrap();
    let arg = format!("cid=3,uds={}", taken.display());
    assert_one_line_error(&["boot", "--vsock", &arg], 125, "the path exists");
    assert_eq!(std::fs::read(&taken).unwrap(), b"mine");
    std::fs::remove_file(&taken).unwrap();
    assert_one_line_error(
        &["boot", "--vsock", "cid=3,uds=/nonexistent-uvm/v.sock"],
        125,
        "no folder /nonexistent-uvm",
    );
}

#[test]
fn bad_fs_flags() {
    assert_one_line_error(
        &["boot", "--fs", "/nonexistent-uvm:share", "--", "true"],
        125,
        "--fs /nonexistent-uvm: no such folder",
    );
    assert_one_line_error(&["boot", "--fs", "/tmp:bad tag"], 2, "tag \"bad tag\"");
    assert_one_line_error(&["boot", "--fs", "/tmp"], 2, "HOST_DIR:TAG");
    assert_one_line_error(
        &["boot", "--fs", "/tmp:a", "--fs", "/tmp:a:ro", "--", "true"],
        125,
        "--fs tag a is given twice",
    );
    // No virtiofsd: told before anything is started.
    assert_one_line_error_env(
        &["boot", "--fs", "/tmp:share", "--", "true"],
        &[("UVM_VIRTIOFSD", "/nonexistent-uvm/virtiofsd")],
        125,
        "UVM_VIRTIOFSD=/nonexistent-uvm/virtiofsd: not an executable file",
    );
    assert_one_line_error_env(
        &["boot", "--fs", "/tmp:share", "--", "true"],
        &[
            ("PATH", "/usr/bin:/bin"),
            ("HOME", "/nonexistent-uvm"),
            ("CARGO_HOME", "/nonexistent-uvm"),
        ],
        125,
        "--fs needs virtiofsd",
    );
}

/// The helper a seccomp-filtered uvm leaves the network lease's release
/// to: hidden from help, it waits for stdin to end, and releases the
/// lease (here one that does not exist) without a word if told to.
#[test]
fn the_lease_releasing_helper_is_hidden_and_quiet() {
    use std::io::Write;
    for told in [&b""[..], b"release\n"] {
        let mut c = Command::new(env!("CARGO_BIN_EXE_uvm"))
            .args(["release-lease", "uvm-test-no-such-lease"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run uvm");
        c.stdin.take().unwrap().write_all(told).unwrap();
        let out = c.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0));
        assert!(out.stdout.is_empty() && out.stderr.is_empty(), "{out:?}");
    }
    let (_, help, _) = uvm(&["--help"]);
    assert!(!help.contains("release-lease"), "{help}");
}

#[test]
fn no_seccomp_is_refused_where_there_is_no_vmm() {
    assert_one_line_error(
        &["run", "-i", "process", "--no-seccomp", "--", "true"],
        125,
        "--no-seccomp",
    );
}

#[test]
fn oci_unknown_ids_and_refusals_exit_1_like_runc() {
    let root = std::env::temp_dir().join(format!("uvm-oci-cli-{}", std::process::id()));
    let root = root.to_str().unwrap();
    let (rc, _, err) = uvm(&["oci", "--root", root, "state", "nope"]);
    assert_eq!(rc, 1, "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("container \"nope\" does not exist"), "{err}");
    let (rc, _, err) = uvm(&["oci", "--root", root, "--systemd-cgroup", "state", "x"]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("--systemd-cgroup is not supported"), "{err}");
    // Invoked through a link named uvm-runc, the binary is `uvm oci`.
    let link = std::env::temp_dir().join(format!("uvm-runc-link-{}", std::process::id()));
    std::fs::create_dir_all(&link).unwrap();
    let runc = link.join("uvm-runc");
    let _ = std::fs::remove_file(&runc);
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_uvm"), &runc).unwrap();
    let out = Command::new(&runc)
        .args(["--root", root, "delete", "nope"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("container \"nope\" does not exist"), "{err}");
    let out = Command::new(&runc).arg("features").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("createRuntime"));
    std::fs::remove_dir_all(&link).unwrap();
}

#[test]
fn bad_jail_flags() {
    let dir = std::env::temp_dir().join(format!("uvm-jail-flags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap();
    let boot = |extra: &[&str]| {
        let mut a = vec!["boot", "--kernel", "/nonexistent/k"];
        a.extend_from_slice(extra);
        a.extend_from_slice(&["--", "true"]);
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let check = |extra: &[&str], code: i32, needle: &str| {
        let args = boot(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_one_line_error(&args, code, needle);
    };
    check(
        &["--jail", "/nonexistent/jail"],
        125,
        "--jail: /nonexistent/jail is not an existing folder",
    );
    // The jail's own flags mean nothing without it: usage errors.
    for flag in [
        &["--uid", "1000"][..],
        &["--gid", "1000"],
        &["--jail-netns"],
        &["--jail-pidns"],
        &["--jail-mem", "1G"],
    ] {
        check(flag, 2, "--jail");
    }
    check(&["--jail", d, "--uid", "0"], 125, "unprivileged user");
    check(
        &["--jail", d, "--vsock", "cid=3,uds=/tmp/uvm-jail-v.sock"],
        125,
        "--vsock and --agent (their Unix sockets would have to live in the jail) cannot be used with a jail",
    );
    check(&["--jail", d, "--fs", "/tmp:t"], 125, "--fs (virtiofsd");
    check(
        &["--jail", d, "--net", "bridge"],
        125,
        "--net bridge and -p",
    );
    check(
        &["--jail", d, "--mem", "256M", "--jail-mem", "200M"],
        125,
        "--jail-mem 200M: the cgroup must hold the guest's RAM (--mem 256M) and the VMM, at least 288M",
    );
    check(
        &["--jail", d, "--jail-cpus", "0"],
        125,
        "--jail-cpus 0: must be a number of CPUs above 0",
    );
    check(
        &["--jail", d, "--jail-pids", "0"],
        125,
        "--jail-pids: must be at least 1",
    );
    check(
        &["--jail", d, "--jail-netns", "--net", "tap=uvmnosuchtap0"],
        125,
        "tap uvmnosuchtap0 does not exist; create it first",
    );
    // A missing kernel is found before anything is made in the folder.
    check(&["--jail", d], 125, "cannot open kernel /nonexistent/k");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "the jail folder was touched"
    );
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn sandbox_bad_input_is_refused_before_anything_is_made() {
    let ghost = "uvm-test-no-such-sandbox";
    // An unknown sandbox, whatever is asked of it.
    for args in [
        vec!["sandbox", "run", ghost, "--rootfs", "/", "--", "true"],
        vec!["sandbox", "exec", ghost, "c1", "--", "true"],
        vec!["sandbox", "ps", ghost],
        vec!["sandbox", "logs", ghost, "c1"],
        vec!["sandbox", "kill", ghost, "c1"],
        vec!["sandbox", "wait", ghost, "c1"],
        vec!["sandbox", "rm", ghost],
        vec!["sandbox", "rm", ghost, "c1"],
        vec!["sandbox", "inspect", ghost],
    ] {
        assert_one_line_error(&args, 125, &format!("uvm sandbox: no sandbox {ghost}"));
    }
    // A container's root folder that is not there, or not a folder: named
    // before the sandbox is looked at.
    assert_one_line_error(
        &[
            "sandbox",
            "run",
            ghost,
            "--rootfs",
            "/nonexistent/rootfs",
            "--",
            "true",
        ],
        125,
        "--rootfs /nonexistent/rootfs: no such folder",
    );
    assert_one_line_error(
        &[
            "sandbox",
            "run",
            ghost,
            "--rootfs",
            "/etc/hostname",
            "--",
            "true",
        ],
        125,
        "--rootfs /etc/hostname: no such folder",
    );
    // Bad names and flags.
    for (args, needle) in [
        (vec!["sandbox", "create", "a/b"], "sandbox name \"a/b\""),
        (vec!["sandbox", "create", "-x"], "unexpected argument"),
        (vec!["sandbox", "create", "p", "--vcpus", "0"], "--vcpus 0"),
        (
            vec!["sandbox", "create", "p", "--net", "wifi"],
            "--net wifi: none or bridge",
        ),
        (
            vec!["sandbox", "create", "p", "-p", "8080:80"],
            "add --net bridge",
        ),
        (
            vec!["sandbox", "create", "p", "--net", "bridge", "-p", "x:80"],
            "x:80",
        ),
        (
            vec![
                "sandbox", "run", ghost, "--rootfs", "/", "--name", "../x", "--", "true",
            ],
            "container name \"../x\"",
        ),
        (
            vec![
                "sandbox", "run", ghost, "--rootfs", "/", "-e", "NOEQ", "--", "true",
            ],
            "-e NOEQ: expected KEY=VALUE",
        ),
        (
            vec![
                "sandbox", "run", ghost, "--rootfs", "/", "-w", "rel", "--", "true",
            ],
            "-w rel: must be absolute",
        ),
        (
            vec!["sandbox", "kill", ghost, "c1", "--signal", "NOPE"],
            "NOPE",
        ),
    ] {
        let code = if needle == "unexpected argument" {
            2
        } else {
            125
        };
        assert_one_line_error(&args, code, needle);
    }
    // A run without a command is a usage error.
    let (rc, _, stderr) = uvm(&["sandbox", "run", ghost]);
    assert_eq!(rc, 2, "{stderr}");
    assert!(
        !std::path::Path::new("/run/uvm/sandbox")
            .join(ghost)
            .exists(),
        "nothing was made"
    );
}

#[test]
fn sandbox_ls_and_gc_work_with_no_sandboxes() {
    let (rc, stdout, stderr) = uvm(&["sandbox", "ls"]);
    assert_eq!(rc, 0, "{stderr}");
    assert!(stdout.starts_with("SANDBOX "), "{stdout}");
    let (rc, _, stderr) = uvm(&["sandbox-vmm", "uvm-test-no-such-sandbox"]);
    assert_eq!(rc, 125, "{stderr}");
    assert!(
        stderr.contains("no sandbox uvm-test-no-such-sandbox"),
        "{stderr}"
    );
}

#[test]
fn sandbox_sizes_are_checked_before_kvm() {
    assert_one_line_error(
        &["sandbox", "create", "uvm-test-p", "--mem", "1M"],
        125,
        "--mem 1M",
    );
    assert!(!std::path::Path::new("/run/uvm/sandbox/uvm-test-p").exists());
}

#[test]
fn bench_refuses_a_firecracker_that_is_not_one_before_anything_starts() {
    use std::os::unix::fs::PermissionsExt;
    let not_executable = std::env::temp_dir().join(format!("uvm-test-fc-{}", std::process::id()));
    std::fs::write(&not_executable, "#!/bin/sh\necho Firecracker v1.0.0\n").unwrap();
    std::fs::set_permissions(&not_executable, std::fs::Permissions::from_mode(0o644)).unwrap();
    let not_executable = not_executable.to_str().unwrap().to_string();
    let cases = [
        ("/nonexistent/firecracker", "No such file or directory"),
        ("/tmp", "not a file"),
        (not_executable.as_str(), "not executable"),
        // Runs, exits 0, prints nothing.
        ("/bin/true", "not Firecracker"),
        // Runs, exits 0, prints its own version.
        ("/bin/echo", "not Firecracker"),
    ];
    for bench in ["boot", "io"] {
        for (path, why) in cases {
            assert_one_line_error(
                &["bench", bench, "--firecracker", path],
                125,
                &format!("uvm bench {bench}: --firecracker {path}: "),
            );
            let (_, _, stderr) = uvm(&["bench", bench, "--firecracker", path]);
            assert!(stderr.contains(why), "{bench} {path}: {stderr:?}");
        }
    }
    let _ = std::fs::remove_file(&not_executable);
}

/// Listings whose reader went away (`| head`) end quietly, as `ls` does:
/// no panic message from println! on EPIPE.
#[test]
fn listings_to_a_reader_that_went_away_end_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = std::env::temp_dir().join(format!("uvm-epipe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let root = dir.to_str().unwrap();
    let store = dir.join("images");
    let cases: [&[&str]; 3] = [
        &["container", "--root", root, "ps"],
        &["image", "--store", store.to_str().unwrap(), "ls"],
        &["oci", "--root", root, "features"],
    ];
    for args in cases {
        let (r, w) = std::io::pipe().unwrap();
        // The read end is gone before uvm writes: its first write fails.
        drop(r);
        let out = Command::new(env!("CARGO_BIN_EXE_uvm"))
            .args(args)
            .stdout(w)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "{args:?}: {:?} {err}",
            out.status
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
