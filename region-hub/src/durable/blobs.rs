//! Durable content-addressed storage of proof images: temp file, fsync, rename, fsync of the
//! directory.

use crate::tracking::proof::{sha256_hex, ImageType};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Writes `bytes` durably to `dir/<sha256>.<ext>`: temp file, fsync, rename, fsync of the
/// directory. An existing blob with the same name is the same content and is kept.
pub fn store_blob(dir: &Path, bytes: &[u8], ty: ImageType) -> std::io::Result<(String, PathBuf)> {
    std::fs::create_dir_all(dir)?;
    let sha = sha256_hex(bytes);
    let path = dir.join(format!("{sha}.{}", ty.ext()));
    if path.exists() {
        return Ok((sha, path));
    }
    let tmp = dir.join(format!(".{sha}.{}.tmp", rand::random::<u64>()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| (sha, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0];

    #[test]
    fn stores_a_blob_under_its_hash_and_keeps_the_same_content_once() {
        let dir = std::env::temp_dir().join(format!("trackline-proof-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (sha, path) = store_blob(&dir, JPEG, ImageType::Jpeg).expect("store");
        assert_eq!(sha.len(), 64);
        assert!(path.ends_with(format!("{sha}.jpg")));
        assert_eq!(std::fs::read(&path).expect("read"), JPEG);
        let (again, _) = store_blob(&dir, JPEG, ImageType::Jpeg).expect("again");
        assert_eq!(sha, again);
        let files = std::fs::read_dir(&dir).expect("dir").count();
        assert_eq!(files, 1, "no temp files left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
