//! Durable small files: checksummed records written atomically (temp file, fsync, rename, fsync dir).

use std::fs;
use std::io::Write;
use std::path::Path;

/// Writes `payload` with a CRC32 header to `path` atomically and durably.
pub(crate) fn write_atomic(path: &Path, payload: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(&crc32fast::hash(payload).to_le_bytes())?;
        file.write_all(payload)?;
        file.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Reads a file written by [`write_atomic`]; `Ok(None)` when it does not exist, an error naming
/// the file when its checksum does not match.
pub(crate) fn read_checked(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    if bytes.len() < 4 {
        return Err(std::io::Error::other(format!("{} is truncated ({} bytes)", path.display(), bytes.len())));
    }
    let (crc, payload) = bytes.split_at(4);
    if crc32fast::hash(payload).to_le_bytes() != crc {
        return Err(std::io::Error::other(format!("{} is corrupt: checksum mismatch", path.display())));
    }
    Ok(Some(payload.to_vec()))
}

/// Makes a rename or unlink in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}
