//! From an image source to what the store needs: each image's names,
//! verified configuration and layer blobs, read from an OCI layout
//! (`index.json`, `blobs/sha256/...`) or `docker save`'s `manifest.json`.
//! Every JSON document is checked against its digest here; layer blobs are
//! checked while they are unpacked ([`unpack_layer`]).

use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

use super::config::{self, Descriptor, Document, ImageConfig};
use super::digest::{Digest, Hashing};
use super::image_error;
use super::layer;
use super::source::Source;
use crate::error::{Error, Result};

/// One layer to unpack: where its blob is, and what it must hash to.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    pub rel: String,
    /// Compressed digest and size, when the format gives them (an OCI
    /// manifest does; old `docker save` layers are checked by diff id only).
    pub expect: Option<(Digest, u64)>,
}

/// One image found in the source, its documents verified.
#[derive(Debug)]
pub struct Pending {
    pub names: Vec<String>,
    pub id: Digest,
    pub config_json: Vec<u8>,
    pub config: ImageConfig,
    pub layers: Vec<LayerBlob>,
}

fn blob_rel(d: &Digest) -> String {
    format!("blobs/sha256/{}", d.hex())
}

/// A JSON blob named by a descriptor, checked against its digest and size.
fn read_blob(src: &Source, d: &Descriptor) -> Result<(Digest, Vec<u8>)> {
    let digest = Digest::parse(&d.digest)?;
    let data = src.read_json(&blob_rel(&digest))?;
    verify(&digest, &data, Some(d.size))?;
    Ok((digest, data))
}

fn verify(want: &Digest, data: &[u8], size: Option<u64>) -> Result<()> {
    let got = Digest::of(data);
    if &got != want {
        return Err(image_error(format!(
            "blob {want} does not match its digest (its content is {got})"
        )));
    }
    if let Some(s) = size.filter(|s| *s != data.len() as u64) {
        return Err(image_error(format!(
            "blob {want} is {} bytes, its descriptor says {s}",
            data.len()
        )));
    }
    Ok(())
}

/// The hex digest a `docker save` path carries (`HEX.json`,
/// `blobs/sha256/HEX`), if any.
fn digest_in_path(rel: &str) -> Option<Digest> {
    let last = rel.rsplit('/').next()?;
    Digest::from_hex(last.strip_suffix(".json").unwrap_or(last))
}

/// Every image in `src`.
pub fn plan(src: &Source) -> Result<Vec<Pending>> {
    if src.exists("manifest.json") {
        return plan_docker(src);
    }
    if !src.exists("index.json") {
        return Err(image_error(
            "neither an OCI image layout (no index.json) nor docker save output (no manifest.json)",
        ));
    }
    let index = src.read_json("index.json")?;
    let Document::Index(manifests) = Document::parse("index.json", &index)? else {
        return Err(image_error("index.json is a manifest, not an index"));
    };
    let mut out = Vec::new();
    for d in &manifests {
        walk(src, d, config::names_of(d), 0, &mut out)?;
    }
    Ok(out)
}

/// An index entry down to its image (nested indexes: the linux/amd64 one).
fn walk(
    src: &Source,
    d: &Descriptor,
    names: Vec<String>,
    depth: u32,
    out: &mut Vec<Pending>,
) -> Result<()> {
    if depth > 4 {
        return Err(image_error("indexes nested too deeply"));
    }
    let (_, data) = read_blob(src, d)?;
    match Document::parse(&d.digest, &data)? {
        Document::Index(children) => {
            let pick = children.iter().find(|c| {
                c.platform
                    .as_ref()
                    .is_none_or(|p| p.os == "linux" && p.architecture == "amd64")
            });
            let child = pick.ok_or_else(|| {
                image_error(format!("index {} has no linux/amd64 image", d.digest))
            })?;
            walk(src, child, names, depth + 1, out)
        }
        Document::Manifest { config, layers } => {
            let (id, config_json) = read_blob(src, &config)?;
            let layers = layers
                .iter()
                .map(|l| {
                    let dg = Digest::parse(&l.digest)?;
                    Ok(LayerBlob {
                        rel: blob_rel(&dg),
                        expect: Some((dg, l.size)),
                    })
                })
                .collect::<Result<_>>()?;
            out.push(pending(names, id, config_json, layers)?);
            Ok(())
        }
    }
}

fn plan_docker(src: &Source) -> Result<Vec<Pending>> {
    let entries = config::parse_docker_manifest(&src.read_json("manifest.json")?)?;
    let mut out = Vec::new();
    for e in entries {
        let config_json = src.read_json(&e.config)?;
        if let Some(want) = digest_in_path(&e.config) {
            verify(&want, &config_json, None)?;
        }
        let id = Digest::of(&config_json);
        let layers = e
            .layers
            .iter()
            .map(|rel| LayerBlob {
                rel: rel.clone(),
                expect: rel
                    .starts_with("blobs/")
                    .then(|| digest_in_path(rel))
                    .flatten()
                    .map(|d| (d, 0)),
            })
            .collect();
        let names = e.repo_tags.unwrap_or_default();
        let names = names.iter().map(|n| config::normalize_name(n)).collect();
        out.push(pending(names, id, config_json, layers)?);
    }
    Ok(out)
}

fn pending(
    names: Vec<String>,
    id: Digest,
    config_json: Vec<u8>,
    layers: Vec<LayerBlob>,
) -> Result<Pending> {
    let config = ImageConfig::parse(&config_json)?;
    let n = config.diff_ids()?.len();
    if n != layers.len() {
        return Err(image_error(format!(
            "image {id}: its config lists {n} layers, its manifest {}",
            layers.len()
        )));
    }
    let names = names
        .into_iter()
        .filter(|n| config::valid_name(n))
        .collect();
    Ok(Pending {
        names,
        id,
        config_json,
        config,
        layers,
    })
}

/// Unpacks one layer blob into `tmp` (made here), checking the blob's
/// digest and size when known and its uncompressed stream against
/// `diff_id`. Returns the bytes of file content written.
pub fn unpack_layer(src: &Source, blob: &LayerBlob, diff_id: &Digest, tmp: &Path) -> Result<u64> {
    let (r, size) = src.reader(&blob.rel)?;
    if let Some((d, want)) = blob.expect.as_ref().filter(|(_, s)| *s != 0) {
        if size != *want {
            return Err(image_error(format!(
                "blob {d} is {size} bytes, its descriptor says {want}"
            )));
        }
    }
    let rd = |e: io::Error| Error::io(format!("reading {}", blob.rel), e);
    let mut buf = BufReader::new(Hashing::new(r));
    let head = buf.fill_buf().map_err(rd)?;
    if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(image_error(format!(
            "{}: zstd-compressed layers are not supported (gzip and plain tar are)",
            blob.rel
        )));
    }
    let gzip = head.starts_with(&[0x1f, 0x8b]);
    fs::create_dir(tmp).map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
    let unpacked = (|| -> Result<(layer::Unpacked, Digest)> {
        let decoded: Box<dyn Read + '_> = match gzip {
            true => Box::new(flate2::read::MultiGzDecoder::new(&mut buf)),
            false => Box::new(&mut buf),
        };
        let mut diff = Hashing::new(decoded);
        let n = layer::unpack(&mut diff, tmp)?;
        let (d, _) = diff
            .finish()
            .map_err(|e| image_error(format!("{}: {e}", blob.rel)))?;
        Ok((n, d))
    })();
    // A blob that is not what its digest says is reported as such, even
    // when the damage also broke its tar or gzip framing.
    io::copy(&mut buf, &mut io::sink()).map_err(rd)?;
    let (got_blob, _) = buf.into_inner().finish().map_err(rd)?;
    if let Some((want, _)) = &blob.expect {
        if &got_blob != want {
            return Err(image_error(format!(
                "blob {want} does not match its digest (its content is {got_blob})"
            )));
        }
    }
    let (unpacked, got_diff) = unpacked?;
    if &got_diff != diff_id {
        return Err(image_error(format!(
            "layer {} unpacks to {got_diff}, the image config says {diff_id}",
            blob.rel
        )));
    }
    Ok(unpacked.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_in_docker_paths() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(digest_in_path(&format!("{hex}.json")).unwrap().hex(), hex);
        assert_eq!(
            digest_in_path(&format!("blobs/sha256/{hex}"))
                .unwrap()
                .hex(),
            hex
        );
        assert!(digest_in_path("abc/layer.tar").is_none());
    }
}
