//! The disk tier's files: one per stored response, in the cache's
//! directory, read back when the process starts again.
//!
//! A body is written to a temporary file (`.tmp-PID-N`) as it streams to
//! the client, never held whole in memory. Once it is complete, the head
//! and what the cache knows of it (its key, secondary key and times) are
//! appended after it, and the file is renamed into place
//! (`HASH-PID-N.rwc`): a file with its name is always whole. Layout:
//!
//! ```text
//! body | head | meta | head length (u32) | meta length (u32) | "RWC1"
//! ```
//!
//! The body starts at offset 0, so a hit sends it with `sendfile` straight
//! from the page cache. Temporary files left by a crash, and files that do
//! not read back, are removed at start.

use std::{
    fs::{File, OpenOptions},
    io::{self, Seek, SeekFrom},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use super::store::SecondaryKey;

/// The end of every complete file.
const MAGIC: &[u8; 4] = b"RWC1";

/// The longest head or metadata read back (a file claiming more is
/// broken).
const MAX_TRAILER: u32 = 1 << 20;

/// A disk tier's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskSettings {
    /// The directory of its files.
    pub path: PathBuf,
    /// The most bytes its files hold together.
    pub size: u64,
}

/// What is kept beside a stored response's head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Meta {
    pub(crate) key: Vec<u8>,
    pub(crate) vary: SecondaryKey,
    pub(crate) request_time: i64,
    pub(crate) response_time: i64,
    pub(crate) age: u64,
}

/// A response read back from the directory.
#[derive(Debug)]
pub(crate) struct Loaded {
    pub(crate) meta: Meta,
    pub(crate) head: Vec<u8>,
    pub(crate) body_len: u64,
    pub(crate) path: PathBuf,
}

/// The directory of a disk tier.
#[derive(Debug)]
pub(crate) struct Disk {
    dir: PathBuf,
    next: AtomicU64,
    /// Drawn for each `Disk`, so that names never repeat across
    /// processes (a container's PID is always 1) or reloads.
    nonce: u64,
}

impl Disk {
    pub(crate) fn new(dir: &Path) -> Self {
        use std::hash::BuildHasher;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Self {
            dir: dir.to_owned(),
            next: AtomicU64::new(0),
            nonce: std::hash::RandomState::new().hash_one((now, std::process::id())),
        }
    }

    /// A new temporary file for a body about to stream in.
    pub(crate) fn create(&self) -> io::Result<(File, PathBuf)> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let path = self.dir.join(format!(".tmp-{:016x}-{n}", self.nonce));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((file, path))
    }

    /// Completes the temporary file at `tmp` (`body_len` bytes of body
    /// written): appends `head` and `meta`, and renames it into place.
    /// Returns its final path; on an error the temporary file is gone.
    pub(crate) fn commit(
        &self,
        file: &mut File,
        tmp: &Path,
        body_len: u64,
        head: &[u8],
        meta: &Meta,
    ) -> io::Result<PathBuf> {
        let result = (|| {
            let mut trailer = Vec::with_capacity(head.len() + meta.key.len() + 64);
            trailer.extend_from_slice(head);
            let meta_bytes = encode(meta);
            trailer.extend_from_slice(&meta_bytes);
            trailer.extend_from_slice(&(head.len() as u32).to_le_bytes());
            trailer.extend_from_slice(&(meta_bytes.len() as u32).to_le_bytes());
            trailer.extend_from_slice(MAGIC);
            file.write_all_at(&trailer, body_len)?;
            let hash = meta.key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            let path = self.dir.join(format!("{hash:016x}-{:016x}-{n}.rwc", self.nonce));
            std::fs::rename(tmp, &path)?;
            Ok(path)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(tmp);
        }
        result
    }

    /// Every complete file in the directory, read back; temporary files
    /// and files that do not read back are removed.
    pub(crate) fn load(&self) -> io::Result<Vec<Loaded>> {
        let mut loaded = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with(".tmp-") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".rwc") {
                continue;
            }
            match read_back(&path) {
                Ok(found) => loaded.push(found),
                // Only a file that reads back wrong is removed; one that
                // could not be read now (out of descriptors, permissions)
                // is left for later.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                    ) =>
                {
                    tracing::warn!(file = %path.display(), "cache disk: removing a file that does not read back: {e}");
                    let _ = std::fs::remove_file(&path);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), "cache disk: skipping a file that cannot be read now: {e}");
                }
            }
        }
        Ok(loaded)
    }
}

fn broken(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_owned())
}

fn read_back(path: &Path) -> io::Result<Loaded> {
    let mut file = OpenOptions::new().read(true).open(path)?;
    let len = file.seek(SeekFrom::End(0))?;
    if len < 12 {
        return Err(broken("too short"));
    }
    let mut tail = [0u8; 12];
    file.read_exact_at(&mut tail, len - 12)?;
    if &tail[8..] != MAGIC {
        return Err(broken("no end mark"));
    }
    let head_len = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let meta_len = u32::from_le_bytes([tail[4], tail[5], tail[6], tail[7]]);
    if head_len > MAX_TRAILER || meta_len > MAX_TRAILER {
        return Err(broken("trailer too long"));
    }
    let body_len = len
        .checked_sub(12 + u64::from(head_len) + u64::from(meta_len))
        .ok_or_else(|| broken("lengths past the file"))?;
    let mut head = vec![0u8; head_len as usize];
    file.read_exact_at(&mut head, body_len)?;
    let mut meta = vec![0u8; meta_len as usize];
    file.read_exact_at(&mut meta, body_len + u64::from(head_len))?;
    let meta = decode(&meta).ok_or_else(|| broken("metadata does not decode"))?;
    Ok(Loaded {
        meta,
        head,
        body_len,
        path: path.to_owned(),
    })
}

fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn encode(meta: &Meta) -> Vec<u8> {
    let mut out = Vec::new();
    put(&mut out, &meta.key);
    out.extend_from_slice(&(meta.vary.len() as u32).to_le_bytes());
    for (name, value) in meta.vary.iter() {
        put(&mut out, name.as_bytes());
        match value {
            Some(v) => {
                out.push(1);
                put(&mut out, v);
            }
            None => out.push(0),
        }
    }
    out.extend_from_slice(&meta.request_time.to_le_bytes());
    out.extend_from_slice(&meta.response_time.to_le_bytes());
    out.extend_from_slice(&meta.age.to_le_bytes());
    out
}

/// Reads what [`encode`] wrote; `None` for anything else.
fn decode(mut bytes: &[u8]) -> Option<Meta> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        if bytes.len() < n {
            return None;
        }
        let (first, rest) = bytes.split_at(n);
        *bytes = rest;
        Some(first)
    }
    fn u32_of(bytes: &mut &[u8]) -> Option<u32> {
        Some(u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?))
    }
    fn u64_of(bytes: &mut &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(take(bytes, 8)?.try_into().ok()?))
    }
    fn field<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
        let n = u32_of(bytes)? as usize;
        take(bytes, n)
    }
    let key = field(&mut bytes)?.to_vec();
    let count = u32_of(&mut bytes)?;
    if count > 1024 {
        return None;
    }
    let mut vary = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let name = std::str::from_utf8(field(&mut bytes)?).ok()?.into();
        let value = match take(&mut bytes, 1)?[0] {
            0 => None,
            1 => Some(field(&mut bytes)?.into()),
            _ => return None,
        };
        vary.push((name, value));
    }
    // Times from a file are bounded: a broken one must not make the age
    // arithmetic overflow, or an entry fresh for ever.
    let plausible = |t: u64| (t <= i64::MAX as u64 / 4).then_some(t as i64);
    let request_time = plausible(u64_of(&mut bytes)?)?;
    let response_time = plausible(u64_of(&mut bytes)?)?;
    let age = u64_of(&mut bytes)?.min(super::control::MAX_DELTA);
    bytes.is_empty().then_some(Meta {
        key,
        vary: vary.into(),
        request_time,
        response_time,
        age,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringway-disk-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        dir
    }

    #[test]
    fn a_committed_file_reads_back_and_leftovers_are_removed() {
        let dir = dir("roundtrip");
        let disk = Disk::new(&dir);
        let meta = Meta {
            key: b"hsite.test\0/a".to_vec(),
            vary: vec![
                ("accept-language".into(), Some(b"en".as_slice().into())),
                ("x".into(), None),
            ]
            .into(),
            request_time: 1_700_000_000,
            response_time: 1_700_000_001,
            age: 7,
        };
        let (mut file, tmp) = disk.create().expect("create");
        std::io::Write::write_all(&mut file, b"the body").expect("body");
        let head = b"HTTP/1.1 200 OK\r\nETag: \"x\"\r\n\r\n";
        let path = disk.commit(&mut file, &tmp, 8, head, &meta).expect("commit");
        assert!(!tmp.exists() && path.exists());
        // A crash's leftovers: a temporary file and a torn one.
        let (_, leftover) = disk.create().expect("create");
        std::fs::write(dir.join("torn.rwc"), b"half a file").expect("write");
        let loaded = disk.load().expect("load");
        assert_eq!(loaded.len(), 1);
        let found = &loaded[0];
        assert_eq!(
            (found.meta.clone(), found.head.as_slice(), found.body_len),
            (meta, &head[..], 8)
        );
        let mut body = [0u8; 8];
        File::open(&found.path)
            .and_then(|f| f.read_exact_at(&mut body, 0))
            .expect("read");
        assert_eq!(&body, b"the body");
        assert!(!leftover.exists() && !dir.join("torn.rwc").exists());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
