//! Where a blob lives: `blobs/<2 hex>/<2 hex>/<64 hex>` (storage-layout.md, "Folders").
//!
//! Two levels of 256 folders keep every folder small (about 150 entries per leaf
//! at 10 million blobs) while the full hash as the file name keeps each file
//! self-describing for fsck.

use std::path::PathBuf;

pub fn blob_relative_path(hash: &blake3::Hash) -> PathBuf {
    let hex = hash.to_hex();
    let hex = hex.as_str();
    [&hex[0..2], &hex[2..4], hex].iter().collect()
}

/// Parses a 64-character lowercase hex hash (a file name under `blobs/`).
pub fn parse_hash_hex(s: &str) -> Option<blake3::Hash> {
    if s.len() != 64
        || !s
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    blake3::Hash::from_hex(s).ok()
}

/// Parses `<h0h1>/<h2h3>/<hash>` (an object key below `blobs/`): the hash,
/// if the name is one and sits in its own shard.
pub fn parse_blob_relative(rel: &str) -> Option<blake3::Hash> {
    let hash = parse_hash_hex(rel.rsplit('/').next()?)?;
    (blob_relative_path(&hash).to_str() == Some(rel)).then_some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_is_two_shard_levels_then_full_hash() {
        let h = blake3::hash(b"abc");
        let hex = h.to_hex().to_string();
        let p = blob_relative_path(&h);
        assert_eq!(
            p,
            PathBuf::from(format!("{}/{}/{}", &hex[..2], &hex[2..4], hex))
        );
        assert_eq!(parse_hash_hex(&hex), Some(h));
        assert_eq!(parse_hash_hex(&hex.to_uppercase()), None);
        assert_eq!(parse_hash_hex("abc"), None);
        assert_eq!(parse_blob_relative(p.to_str().unwrap()), Some(h));
        assert_eq!(parse_blob_relative(&format!("00/00/{hex}")), None);
        assert_eq!(parse_blob_relative(&hex), None);
    }
}
