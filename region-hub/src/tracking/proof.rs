//! Photo proof of delivery (sans-IO): image type sniffing by magic bytes, and the metadata
//! kept with the `delivered` event. The image itself is stored by `durable::blobs`.

use protocol::{DeliveryId, DriverId};
use serde::{Deserialize, Serialize};

/// Image types accepted as proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageType {
    Jpeg,
    Png,
    Webp,
    Heic,
}

impl ImageType {
    pub fn content_type(self) -> &'static str {
        match self {
            ImageType::Jpeg => "image/jpeg",
            ImageType::Png => "image/png",
            ImageType::Webp => "image/webp",
            ImageType::Heic => "image/heic",
        }
    }

    pub fn ext(self) -> &'static str {
        match self {
            ImageType::Jpeg => "jpg",
            ImageType::Png => "png",
            ImageType::Webp => "webp",
            ImageType::Heic => "heic",
        }
    }

    fn name(self) -> &'static str {
        match self {
            ImageType::Jpeg => "JPEG",
            ImageType::Png => "PNG",
            ImageType::Webp => "WebP",
            ImageType::Heic => "HEIC",
        }
    }

    /// The type a declared `Content-Type` names (`image/heif` counts as HEIC).
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let ct = ct
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match ct.as_str() {
            "image/jpeg" | "image/jpg" | "image/pjpeg" => Some(ImageType::Jpeg),
            "image/png" => Some(ImageType::Png),
            "image/webp" => Some(ImageType::Webp),
            "image/heic" | "image/heif" | "image/heic-sequence" | "image/heif-sequence" => {
                Some(ImageType::Heic)
            }
            _ => None,
        }
    }

    /// The type the bytes really are, by their magic numbers.
    pub fn sniff(b: &[u8]) -> Option<Self> {
        if b.starts_with(&[0xFF, 0xD8, 0xFF]) {
            return Some(ImageType::Jpeg);
        }
        if b.starts_with(&[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A]) {
            return Some(ImageType::Png);
        }
        if b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WEBP" {
            return Some(ImageType::Webp);
        }
        // ISO-BMFF: [size u32][ftyp][major brand][minor version][compatible brands...]
        if b.len() >= 12 && &b[4..8] == b"ftyp" {
            const HEIF_BRANDS: [&[u8; 4]; 9] = [
                b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1",
            ];
            let is_heif =
                |brand: &[u8]| HEIF_BRANDS.iter().any(|h| &h[..] == brand) || brand == b"msf1";
            let box_len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
            let end = box_len.clamp(12, b.len());
            if is_heif(&b[8..12]) || b[16.min(end)..end].chunks_exact(4).any(is_heif) {
                return Some(ImageType::Heic);
            }
        }
        None
    }
}

/// Why an upload is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ImageRejection {
    #[error("unsupported image: the bytes are not JPEG, PNG, WebP or HEIC (declared {declared})")]
    Unsupported { declared: String },
    #[error("mislabelled image: declared {declared} but the bytes are {detected}")]
    Mislabelled {
        declared: String,
        detected: &'static str,
    },
}

/// Checks the bytes against the declared content type. A missing or generic declaration
/// (`application/octet-stream`) accepts whatever supported type the bytes are.
pub fn check_image(declared: Option<&str>, bytes: &[u8]) -> Result<ImageType, ImageRejection> {
    let declared_s = declared.unwrap_or("nothing").to_owned();
    let Some(detected) = ImageType::sniff(bytes) else {
        return Err(ImageRejection::Unsupported {
            declared: declared_s,
        });
    };
    match declared {
        None => Ok(detected),
        Some(d) if d.trim().eq_ignore_ascii_case("application/octet-stream") => Ok(detected),
        Some(d) => match ImageType::from_content_type(d) {
            Some(t) if t == detected => Ok(detected),
            _ => Err(ImageRejection::Mislabelled {
                declared: declared_s,
                detected: detected.name(),
            }),
        },
    }
}

/// Metadata of a stored proof (the `proofs` table, one per delivery).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProofRecord {
    pub delivery_id: DeliveryId,
    pub driver_id: DriverId,
    /// Hex SHA-256 of the image; the blob is `proofs/<sha256>.<ext>` in the data directory.
    pub sha256: String,
    pub image_type: ImageType,
    pub bytes: u64,
    /// Where the driver says the photo was taken.
    pub lat: f64,
    pub lng: f64,
    /// Distance from the drop-off, and whether it is beyond the configured limit.
    pub distance_m: f64,
    pub far_from_dropoff: bool,
    pub ts_ms: u64,
}

impl ProofRecord {
    /// File name of the blob.
    pub fn file_name(&self) -> String {
        format!("{}.{}", self.sha256, self.image_type.ext())
    }
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0];
    const PNG: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13];
    const WEBP: &[u8] = b"RIFF\x24\0\0\0WEBPVP8 ";
    const HEIC: &[u8] = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic";
    const HEIF_MIF1: &[u8] = b"\0\0\0\x18ftypmif1\0\0\0\0mif1heic";
    const MP4: &[u8] = b"\0\0\0\x18ftypisom\0\0\0\0isomiso2";

    #[test]
    fn sniffs_each_supported_type_by_its_magic_bytes() {
        assert_eq!(ImageType::sniff(JPEG), Some(ImageType::Jpeg));
        assert_eq!(ImageType::sniff(PNG), Some(ImageType::Png));
        assert_eq!(ImageType::sniff(WEBP), Some(ImageType::Webp));
        assert_eq!(ImageType::sniff(HEIC), Some(ImageType::Heic));
        assert_eq!(ImageType::sniff(HEIF_MIF1), Some(ImageType::Heic));
        assert_eq!(
            ImageType::sniff(MP4),
            None,
            "an MP4 is an ftyp box but not HEIF"
        );
        assert_eq!(ImageType::sniff(b"GIF89a......"), None);
        assert_eq!(ImageType::sniff(b""), None);
        assert_eq!(ImageType::sniff(b"RIFF\0\0\0\0WAVE"), None);
    }

    #[test]
    fn refuses_a_mislabelled_or_unsupported_image_with_what_was_found() {
        assert_eq!(check_image(Some("image/jpeg"), JPEG), Ok(ImageType::Jpeg));
        assert_eq!(check_image(Some("image/heif"), HEIC), Ok(ImageType::Heic));
        assert_eq!(check_image(None, PNG), Ok(ImageType::Png));
        assert_eq!(
            check_image(Some("application/octet-stream"), WEBP),
            Ok(ImageType::Webp)
        );
        let e = check_image(Some("image/png"), JPEG).expect_err("mislabelled");
        assert_eq!(
            e.to_string(),
            "mislabelled image: declared image/png but the bytes are JPEG"
        );
        let e = check_image(Some("image/gif"), b"GIF89a").expect_err("unsupported");
        assert!(e.to_string().contains("declared image/gif"), "{e}");
    }
}
