//! Images end to end through `uvm-container image ...` and `run --image`
//! (the same code as `uvm image` and `uvm container run --image`). Needs
//! root (whiteouts are device nodes, opaque directories trusted xattrs,
//! the overlay is mounted). Every image is built here from files, as an
//! OCI layout or as `docker save` output; nothing is pulled.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

#[macro_use]
mod common;

use common::{assert_fails, is_root, ok, text, tmp};

const BIN: &str = env!("CARGO_BIN_EXE_uvm-container");

fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A busybox root, built (or refreshed) once: the image's base layer.
fn base_rootfs() -> &'static Path {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    ROOTFS.get_or_init(|| {
        let dir = tmp().join("image-base");
        let out = Command::new(BIN)
            .args(["mkrootfs", dir.to_str().unwrap()])
            .output()
            .unwrap();
        ok(&out);
        dir
    })
}

/// A tar entry, its name written raw so that tests can make the bad ones
/// (`..`) the tar crate's own setters refuse.
enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

fn append(b: &mut tar::Builder<Vec<u8>>, e: &Entry) {
    let mut h = tar::Header::new_gnu();
    let (name, data): (&str, &[u8]) = match e {
        Entry::File(n, d) => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            (n, d)
        }
        Entry::Dir(n) => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            (n, b"")
        }
        Entry::Symlink(n, to) => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_link_name(to).unwrap();
            (n, b"")
        }
    };
    assert!(name.len() < 100);
    h.as_mut_bytes()[..100].fill(0);
    h.as_mut_bytes()[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(data.len() as u64);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_cksum();
    b.append(&h, data).unwrap();
}

fn tar_of(entries: &[Entry]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        append(&mut b, e);
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    g.write_all(data).unwrap();
    g.finish().unwrap()
}

/// The base layer: busybox, plus what the upper layer hides.
fn base_layer() -> &'static [u8] {
    static LAYER: OnceLock<Vec<u8>> = OnceLock::new();
    LAYER.get_or_init(|| {
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        b.append_dir_all(".", base_rootfs()).unwrap();
        for e in [
            Entry::File("etc/gone.txt", b"whited out above\n"),
            Entry::Dir("data"),
            Entry::File("data/old1", b"1"),
            Entry::Dir("data/sub"),
            Entry::File("data/sub/old2", b"2"),
            Entry::File("etc/kept.txt", b"kept\n"),
        ] {
            append(&mut b, &e);
        }
        b.into_inner().unwrap()
    })
}

/// The upper layer: a whiteout, an opaque directory with new content, the app.
fn upper_layer() -> Vec<u8> {
    tar_of(&[
        Entry::File("etc/.wh.gone.txt", b""),
        Entry::Dir("data"),
        Entry::File("data/.wh..wh..opq", b""),
        Entry::File("data/new", b"upper\n"),
        Entry::Dir("srv"),
        Entry::Dir("srv/app"),
        Entry::File("srv/app/hello", b"hi from the app\n"),
    ])
}

/// `user`: the config's User (empty: none).
fn image_config(diff_ids: &[String], user: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin:/sbin:/usr/bin", "GREETING=hello from the image"],
            "Entrypoint": ["/bin/sh", "-c"],
            "Cmd": ["echo default command in $PWD"],
            "WorkingDir": "/srv/app",
            "User": user,
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap()
}

/// An image as an OCI layout: blobs by digest, a manifest, index.json.
struct Layout {
    files: Vec<(String, Vec<u8>)>,
}

impl Layout {
    /// `layers`: uncompressed tars, bottom first (the top one is gzipped).
    fn new(name: &str, layers: &[&[u8]]) -> Layout {
        Layout::with_user(name, layers, "")
    }

    fn with_user(name: &str, layers: &[&[u8]], user: &str) -> Layout {
        let mut files = Vec::new();
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            diff_ids.push(format!("sha256:{}", sha(l)));
            let (blob, mt) = match i + 1 == layers.len() && layers.len() > 1 {
                true => (gzip(l), "application/vnd.oci.image.layer.v1.tar+gzip"),
                false => (l.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
            };
            descs.push(serde_json::json!({"mediaType": mt, "digest": format!("sha256:{}", sha(&blob)), "size": blob.len()}));
            files.push((format!("blobs/sha256/{}", sha(&blob)), blob));
        }
        let config = image_config(&diff_ids, user);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", sha(&config)), "size": config.len()},
            "layers": descs,
        }))
        .unwrap();
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{}", sha(&manifest)), "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": name}}],
        }))
        .unwrap();
        files.push((format!("blobs/sha256/{}", sha(&config)), config));
        files.push((format!("blobs/sha256/{}", sha(&manifest)), manifest));
        files.push(("index.json".into(), index));
        files.push((
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ));
        Layout { files }
    }

    fn tar(&self) -> Vec<u8> {
        let entries: Vec<Entry> = self.files.iter().map(|(n, d)| Entry::File(n, d)).collect();
        tar_of(&entries)
    }

    fn write_dir(&self, dir: &Path) {
        for (n, d) in &self.files {
            let p = dir.join(n);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, d).unwrap();
        }
    }
}

/// The same image as old-style `docker save` output.
fn docker_save(tag: &str, layers: &[&[u8]]) -> Vec<u8> {
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|l| format!("sha256:{}", sha(l)))
        .collect();
    let config = image_config(&diff_ids, "");
    let cfg_name = format!("{}.json", sha(&config));
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    let mut paths = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let p = format!("layer{i}/layer.tar");
        files.push((p.clone(), l.to_vec()));
        paths.push(p);
    }
    let manifest = serde_json::to_vec(&serde_json::json!([
        {"Config": cfg_name, "RepoTags": [tag], "Layers": paths}
    ]))
    .unwrap();
    files.push((cfg_name, config));
    files.push(("manifest.json".into(), manifest));
    let entries: Vec<Entry> = files.iter().map(|(n, d)| Entry::File(n, d)).collect();
    tar_of(&entries)
}

/// An extended attribute of `path` (not following a symlink).
fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let p = CString::new(path.as_os_str().as_bytes()).unwrap();
    let n = CString::new(name).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: NUL-terminated strings and a buffer of the length given, all
    // alive for the call.
    let len =
        unsafe { libc::lgetxattr(p.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    let len = usize::try_from(len).ok()?;
    buf.truncate(len);
    Some(buf)
}

/// One test's store and container state root.
struct Env {
    store: PathBuf,
    root: PathBuf,
    cgroup_parent: String,
    scratch: PathBuf,
}

impl Env {
    fn new(tag: &str) -> Env {
        let unique = format!("{tag}-{}", std::process::id());
        let scratch = tmp().join(format!("img-{unique}"));
        let _ = std::fs::remove_dir_all(&scratch);
        std::fs::create_dir_all(&scratch).unwrap();
        Env {
            store: scratch.join("store"),
            root: scratch.join("state"),
            cgroup_parent: format!("uvm-test-{unique}"),
            scratch,
        }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env("UVM_IMAGE_STORE", &self.store)
            .arg("--root")
            .arg(&self.root)
            .arg("--cgroup-parent")
            .arg(&self.cgroup_parent)
            .stdin(Stdio::null());
        c
    }

    fn image(&self, args: &[&str]) -> Output {
        self.cmd().arg("image").args(args).output().unwrap()
    }

    fn file(&self, name: &str, data: &[u8]) -> String {
        let p = self.scratch.join(name);
        std::fs::write(&p, data).unwrap();
        p.to_str().unwrap().to_string()
    }

    /// `run --image IMAGE --net none ARGS`.
    fn run(&self, image: &str, args: &[&str]) -> Output {
        self.cmd()
            .args(["run", "--net", "none", "--image", image])
            .args(args)
            .output()
            .unwrap()
    }

    fn entries(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.store.join(sub))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn inspect(&self, name: &str) -> serde_json::Value {
        serde_json::from_str(&ok(&self.image(&["inspect", name]))).unwrap()
    }

    /// The store holds no image, no layer, nothing half-imported.
    fn assert_store_empty(&self) {
        assert_eq!(self.entries("images"), Vec::<String>::new());
        assert_eq!(self.entries("layers"), Vec::<String>::new());
        assert_eq!(self.entries("tmp"), Vec::<String>::new());
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let _ = self.cmd().arg("gc").output();
        common::remove_cgroup_parent(&self.cgroup_parent);
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}

#[test]
fn whiteouts_opaque_dirs_and_config_defaults() {
    require_root!();
    let env = Env::new("wh");
    let upper = upper_layer();
    let archive = env.file(
        "demo.tar",
        &Layout::new("demo:1", &[base_layer(), &upper]).tar(),
    );
    let out = ok(&env.image(&["import", &archive]));
    assert!(out.contains("demo:1"), "{out}");

    let script = "pwd; echo \"$GREETING\"; ls /data; \
                  test -e /etc/gone.txt && echo gone-present || echo gone-absent; \
                  cat /etc/kept.txt hello; grep ' / / ' /proc/self/mountinfo";
    let out = ok(&env.run("demo:1", &["--", script]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "/srv/app", "WorkingDir: {out}");
    assert_eq!(lines[1], "hello from the image", "Env: {out}");
    assert_eq!(
        lines[2], "new",
        "opaque /data shows only the upper layer: {out}"
    );
    assert_eq!(lines[3], "gone-absent", "whiteout: {out}");
    assert_eq!(lines[4], "kept");
    assert_eq!(lines[5], "hi from the app");
    // The layers are stacked as lower dirs, top first, not flattened.
    let dirs = env.inspect("demo:1")["layer_dirs"].clone();
    let (bottom, top) = (dirs[0].as_str().unwrap(), dirs[1].as_str().unwrap());
    assert!(
        lines[6].contains(&format!("lowerdir={top}:{bottom},")),
        "mount: {}",
        lines[6]
    );
    // The same in a user namespace, whose overlay is mounted with
    // `userxattr` (it reads user.overlay.opaque).
    let out = ok(&env.run(
        "demo:1",
        &[
            "--userns",
            "--",
            "ls /data; test -e /etc/gone.txt && echo present || echo absent",
        ],
    ));
    assert_eq!(out, "new\nabsent\n", "--userns");
    // In the store the top layer is a layer: overlayfs' own whiteout (a
    // 0/0 character device) and opaque marker, and only its own files.
    let top_dir = Path::new(top);
    let wh = std::fs::symlink_metadata(top_dir.join("etc/gone.txt")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "{wh:?}");
    assert_eq!(
        xattr(&top_dir.join("data"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!top_dir.join("bin").exists() && !top_dir.join("data/old1").exists());
    // Cmd is the default command (after the Entrypoint); flags override
    // Env and WorkingDir.
    assert_fails(&env.run("demo", &[]), 125, "no image \"demo\"");
    let out = ok(&env.run("demo:1", &[]));
    assert_eq!(out.trim(), "default command in /srv/app");
    let out = ok(&env.run(
        "demo:1",
        &[
            "-e",
            "GREETING=flag",
            "--workdir",
            "/data",
            "--",
            "echo $GREETING $PWD",
        ],
    ));
    assert_eq!(out.trim(), "flag /data");
    assert_fails(
        &env.run("demo:1", &["--no-overlay", "--", "true"]),
        125,
        "--image always runs on an overlay",
    );
    // The image's files are untouched by a container writing over them.
    ok(&env.run("demo:1", &["--", "rm /data/new; echo x > /etc/kept.txt"]));
    assert_eq!(
        ok(&env.run("demo:1", &["--", "cat /data/new /etc/kept.txt"])),
        "upper\nkept\n"
    );
}

#[test]
fn containers_share_the_unpacked_layers() {
    require_root!();
    let env = Env::new("share");
    let upper = upper_layer();
    let layout = env.scratch.join("layout");
    Layout::new("shared:1", &[base_layer(), &upper]).write_dir(&layout);
    ok(&env.image(&["import", layout.to_str().unwrap()]));
    // The same layers again, as docker save output under another name:
    // nothing is unpacked twice.
    let saved = env.file(
        "saved.tar",
        &docker_save("other:2", &[base_layer(), &upper]),
    );
    ok(&env.image(&["import", &saved]));
    assert_eq!(
        env.entries("layers").len(),
        4,
        "two layer dirs and their size files"
    );
    let listing = ok(&env.image(&["ls"]));
    assert!(
        listing.contains("shared:1") && listing.contains("other:2"),
        "{listing}"
    );
    assert_eq!(
        env.entries("images").len(),
        1,
        "one config: one image, two names"
    );

    let busybox =
        Path::new(env.inspect("shared:1")["layer_dirs"][0].as_str().unwrap()).join("bin/busybox");
    let host_ino = std::fs::metadata(&busybox).unwrap().ino();
    let first = env
        .cmd()
        .args([
            "run", "--net", "none", "--name", "sh1", "--image", "shared:1",
        ])
        .args(["--", "stat -c %i /bin/busybox; sleep 30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !env.root.join("containers/sh1/state.json").exists()
        || !text(&env.cmd().args(["ps"]).output().unwrap().stdout).contains("running")
    {
        assert!(Instant::now() < deadline, "sh1 did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = ok(&env.run("other:2", &["--", "stat -c %i /bin/busybox"]));
    assert_eq!(
        second.trim(),
        host_ino.to_string(),
        "second container's busybox"
    );

    // In use: refused, the image kept.
    assert_fails(
        &env.image(&["rm", "shared:1"]),
        125,
        "in use by container sh1",
    );
    ok(&env.cmd().args(["kill", "sh1"]).output().unwrap());
    let out = first.wait_with_output().unwrap();
    assert_eq!(
        text(&out.stdout).lines().next(),
        Some(host_ino.to_string().as_str())
    );

    // The id is shared by both names; removing by id removes the image and
    // its layers at once.
    let id = env.inspect("other:2")["id"].as_str().unwrap().to_string();
    let out = ok(&env.image(&["rm", &id[7..19]]));
    assert!(out.contains("2 layers freed"), "{out}");
    env.assert_store_empty();
    assert_fails(
        &env.run("shared:1", &["--", "true"]),
        125,
        "no image \"shared:1\"",
    );
    common::assert_no_cgroups(&env.cgroup_parent);
}

#[test]
fn layers_shared_between_images_outlive_one_of_them() {
    require_root!();
    let env = Env::new("keep");
    let upper = upper_layer();
    let other_top = tar_of(&[Entry::File("marker", b"b\n")]);
    let a = env.file("a.tar", &Layout::new("a", &[base_layer(), &upper]).tar());
    let b = Layout::with_user("b", &[base_layer(), &other_top], "nobody");
    let b = env.file("b.tar", &b.tar());
    ok(&env.image(&["import", &a]));
    ok(&env.image(&["import", &b]));
    assert_eq!(env.entries("layers").len(), 6, "base once, two tops");
    ok(&env.image(&["rm", "a"]));
    assert_eq!(env.entries("layers").len(), 4, "the base stays for b");
    assert_eq!(
        ok(&env.run("b", &["--", "cat /marker; ls /etc/gone.txt"])),
        "b\n/etc/gone.txt\n"
    );
    // b's User, a name from its base layer's /etc/passwd; -u wins.
    assert_eq!(ok(&env.run("b", &["--", "id -u; id -g"])), "65534\n65534\n");
    assert_eq!(ok(&env.run("b", &["-u", "0", "--", "id -u"])), "0\n");
    ok(&env.image(&["rm", "b:latest"]));
    env.assert_store_empty();
}

#[test]
fn bad_images_are_refused_and_write_nothing_outside_the_store() {
    require_root!();
    let env = Env::new("bad");
    let outside = tmp().join(format!("escaped-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&outside);
    std::fs::create_dir_all(&outside).unwrap();
    let escape = format!("../../../../../../../../../..{}/file", outside.display());
    let through = format!("{}", outside.display());

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dotdot",
            Layout::new("x", &[&tar_of(&[Entry::File(&escape, b"pwned")])]).tar(),
            "leaves the archive's root",
        ),
        (
            "symlink",
            Layout::new(
                "x",
                &[&tar_of(&[
                    Entry::Symlink("evil", &through),
                    Entry::File("evil/file", b"pwned"),
                ])],
            )
            .tar(),
            "goes through evil",
        ),
        (
            "outer-dotdot",
            tar_of(&[Entry::File("../index.json", b"{}")]),
            "leaves the archive's root",
        ),
        (
            "garbage",
            b"this is not an image at all\n".repeat(100),
            "not a tar archive",
        ),
        (
            "empty-archive",
            tar_of(&[Entry::File("README", b"hi")]),
            "neither an OCI image layout",
        ),
    ];
    for (name, data, want) in &cases {
        let f = env.file(&format!("{name}.tar"), data);
        assert_fails(&env.image(&["import", &f]), 125, want);
        env.assert_store_empty();
    }
    assert!(!outside.join("file").exists(), "written outside the store");

    // A layer blob changed after its digest was taken.
    let upper = upper_layer();
    let layout = Layout::new("x", &[base_layer(), &upper]);
    let mut tampered = Layout {
        files: layout.files.clone(),
    };
    let base_blob = &mut tampered.files[0].1;
    let i = base_blob.len() / 2;
    base_blob[i] ^= 0xff;
    let f = env.file("tampered.tar", &tampered.tar());
    assert_fails(
        &env.image(&["import", &f]),
        125,
        "does not match its digest",
    );
    env.assert_store_empty();
    // A manifest pointing at a blob that is not there.
    let mut missing = Layout {
        files: layout.files.clone(),
    };
    missing.files.remove(0);
    let f = env.file("missing.tar", &missing.tar());
    assert_fails(
        &env.image(&["import", &f]),
        125,
        "is missing from the image",
    );
    env.assert_store_empty();

    let nofile = env.scratch.join("no-such.tar");
    assert_fails(
        &env.image(&["import", nofile.to_str().unwrap()]),
        125,
        "No such file",
    );
    assert_fails(&env.image(&["rm", "nothing"]), 125, "no image \"nothing\"");
    assert_fails(&env.image(&["inspect", "nothing"]), 125, "no image");
    assert_fails(
        &env.run("nothing", &["--", "true"]),
        125,
        "no image \"nothing\"",
    );
    let _ = std::fs::remove_dir_all(&outside);
}
