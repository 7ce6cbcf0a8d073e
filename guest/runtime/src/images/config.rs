//! The JSON documents of an image: an OCI layout's `index.json`, image
//! indexes and manifests, `docker save`'s `manifest.json`, and the image
//! configuration whose `config` gives a container its defaults.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::digest::Digest;
use super::image_error;
use crate::error::Result;

/// A content descriptor: what a blob is, its digest and size.
#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
}

/// An OCI index (or Docker manifest list), or an image manifest: told apart
/// by what they hold, since `mediaType` is optional in both.
#[derive(Debug)]
pub enum Document {
    Index(Vec<Descriptor>),
    Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

#[derive(Deserialize)]
struct RawDocument {
    manifests: Option<Vec<Descriptor>>,
    config: Option<Descriptor>,
    layers: Option<Vec<Descriptor>>,
}

impl Document {
    pub fn parse(what: &str, data: &[u8]) -> Result<Document> {
        let raw: RawDocument = serde_json::from_slice(data)
            .map_err(|e| image_error(format!("{what}: not a valid index or manifest: {e}")))?;
        match raw {
            RawDocument {
                manifests: Some(m), ..
            } => Ok(Document::Index(m)),
            RawDocument {
                config: Some(config),
                layers: Some(layers),
                ..
            } => Ok(Document::Manifest { config, layers }),
            _ => Err(image_error(format!(
                "{what}: neither an index (manifests) nor a manifest (config, layers)"
            ))),
        }
    }
}

/// The image names an index entry carries: containerd's full reference,
/// else the OCI ref name (a tag, or a whole reference).
pub fn names_of(d: &Descriptor) -> Vec<String> {
    let full = d.annotations.get("io.containerd.image.name");
    let oci = d.annotations.get("org.opencontainers.image.ref.name");
    full.or(oci)
        .map(|n| normalize_name(n))
        .into_iter()
        .collect()
}

/// One image of `docker save`'s `manifest.json`.
#[derive(Debug, Deserialize)]
pub struct DockerEntry {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    pub layers: Vec<String>,
}

pub fn parse_docker_manifest(data: &[u8]) -> Result<Vec<DockerEntry>> {
    serde_json::from_slice(data)
        .map_err(|e| image_error(format!("manifest.json: not docker save's manifest: {e}")))
}

/// The part of an image configuration uvm uses; the whole document is kept
/// as imported for `uvm image inspect`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ImageConfig {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub config: Option<RunConfig>,
    pub rootfs: RootFs,
}

/// The defaults a container of the image gets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "Env", default)]
    pub env: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Entrypoint", default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    pub working_dir: Option<String>,
    #[serde(rename = "User", default)]
    pub user: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub typ: String,
    pub diff_ids: Vec<String>,
}

impl ImageConfig {
    pub fn parse(data: &[u8]) -> Result<ImageConfig> {
        let c: ImageConfig =
            serde_json::from_slice(data).map_err(|e| image_error(format!("image config: {e}")))?;
        if c.rootfs.typ != "layers" {
            return Err(image_error(format!(
                "image config: rootfs type {:?}, expected \"layers\"",
                c.rootfs.typ
            )));
        }
        if !c.os.is_empty() && c.os != "linux" {
            return Err(image_error(format!(
                "image config: an image for {:?}, not linux",
                c.os
            )));
        }
        Ok(c)
    }

    /// The uncompressed digests of the layers, bottom first.
    pub fn diff_ids(&self) -> Result<Vec<Digest>> {
        self.rootfs
            .diff_ids
            .iter()
            .map(|d| Digest::parse(d))
            .collect()
    }

    pub fn run_config(&self) -> RunConfig {
        self.config.clone().unwrap_or_default()
    }
}

impl RunConfig {
    /// The command a container runs: the entrypoint, then the arguments
    /// given on the command line, else the image's Cmd (Docker's rule).
    pub fn command(&self, args: &[String]) -> Vec<String> {
        let mut c = self.entrypoint.clone().unwrap_or_default();
        match args.is_empty() {
            true => c.extend(self.cmd.clone().unwrap_or_default()),
            false => c.extend(args.iter().cloned()),
        }
        c
    }
}

/// `NAME[:TAG]` with the tag defaulted to `latest` and Docker Hub's
/// implied prefixes dropped, so `busybox`, `busybox:latest` and
/// `docker.io/library/busybox:latest` are one name.
pub fn normalize_name(name: &str) -> String {
    let n = name
        .strip_prefix("docker.io/library/")
        .or_else(|| name.strip_prefix("docker.io/"))
        .unwrap_or(name);
    // A ':' after the last '/' is a tag; before it, a registry's port.
    let last = n.rsplit('/').next().unwrap_or(n);
    if last.contains(':') || last.contains('@') {
        n.to_string()
    } else {
        format!("{n}:latest")
    }
}

/// Whether `name` is usable as an image name (it is never a path).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with(['-', '.', '/', ':'])
        && !name.contains("..")
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._-/:@".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn index_and_manifest() {
        let idx = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{D}","size":7,"annotations":{{"org.opencontainers.image.ref.name":"demo:1"}}}}]}}"#
        );
        let Document::Index(m) = Document::parse("index.json", idx.as_bytes()).unwrap() else {
            panic!("not an index")
        };
        assert_eq!(m[0].size, 7);
        assert_eq!(names_of(&m[0]), ["demo:1"]);
        let man = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{D}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{D}","size":3}}]}}"#
        );
        let Document::Manifest { config, layers } =
            Document::parse("manifest", man.as_bytes()).unwrap()
        else {
            panic!("not a manifest")
        };
        assert_eq!(config.size, 2);
        assert_eq!(layers.len(), 1);
        for bad in [&b"{}"[..], b"garbage", b"{\"config\":{}}"] {
            let e = Document::parse("x", bad).unwrap_err().to_string();
            assert_eq!(e.lines().count(), 1, "{e}");
        }
    }

    #[test]
    fn docker_manifest() {
        let m = parse_docker_manifest(
            br#"[{"Config":"abc.json","RepoTags":["demo:latest"],"Layers":["l1/layer.tar"]}]"#,
        )
        .unwrap();
        assert_eq!(m[0].config, "abc.json");
        assert_eq!(
            m[0].repo_tags.as_deref(),
            Some(&["demo:latest".to_string()][..])
        );
        assert!(parse_docker_manifest(b"{}").is_err());
    }

    #[test]
    fn image_config() {
        let c = ImageConfig::parse(
            format!(
                r#"{{"architecture":"amd64","os":"linux","config":{{"Env":["A=1"],"Entrypoint":["/bin/echo"],"Cmd":["hi"],"WorkingDir":"/srv","User":"1000:1000"}},"rootfs":{{"type":"layers","diff_ids":["{D}"]}}}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        let r = c.run_config();
        assert_eq!(r.env.as_deref(), Some(&["A=1".to_string()][..]));
        assert_eq!(r.working_dir.as_deref(), Some("/srv"));
        assert_eq!(r.user.as_deref(), Some("1000:1000"));
        assert_eq!(r.command(&[]), ["/bin/echo", "hi"]);
        assert_eq!(r.command(&["bye".into()]), ["/bin/echo", "bye"]);
        assert_eq!(c.diff_ids().unwrap().len(), 1);
        let no_config = ImageConfig::parse(br#"{"rootfs":{"type":"layers","diff_ids":[]}}"#);
        assert_eq!(no_config.unwrap().run_config(), RunConfig::default());
        for bad in [
            &br#"{"rootfs":{"type":"other","diff_ids":[]}}"#[..],
            br#"{"os":"windows","rootfs":{"type":"layers","diff_ids":[]}}"#,
            br#"{"config":{}}"#,
        ] {
            let e = ImageConfig::parse(bad).unwrap_err().to_string();
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let bad_id = ImageConfig::parse(br#"{"rootfs":{"type":"layers","diff_ids":["md5:00"]}}"#);
        assert!(bad_id.unwrap().diff_ids().is_err());
    }

    #[test]
    fn names() {
        assert_eq!(normalize_name("busybox"), "busybox:latest");
        assert_eq!(
            normalize_name("docker.io/library/busybox:1.36"),
            "busybox:1.36"
        );
        assert_eq!(
            normalize_name("localhost:5000/app"),
            "localhost:5000/app:latest"
        );
        assert_eq!(normalize_name("quay.io/x/y:v1"), "quay.io/x/y:v1");
        assert!(valid_name("demo:1"));
        for bad in ["", "../x", "/abs", "a b", "-x", "a\nb"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
