//! Length-prefixed framing for reliable QUIC streams: a varint length, then a postcard body.
//!
//! [`FrameDecoder`] is fed whatever chunks the transport delivers and yields whole frames. It
//! refuses a frame whose announced length exceeds its limit before buffering it.

use crate::wire::WireError;
use serde::{de::DeserializeOwned, Serialize};

/// Largest control-stream frame a driver may send.
pub const MAX_DRIVER_FRAME: usize = 16 * 1024;
/// Largest edge <-> hub frame.
pub const MAX_HUB_FRAME: usize = 1024 * 1024;

/// Appends `value` as one frame to `out`.
pub fn encode_frame<T: Serialize>(value: &T, out: &mut Vec<u8>) {
    // Serializing our own types into a Vec cannot fail.
    let body = postcard::to_stdvec(value).unwrap_or_default();
    write_varint(body.len() as u64, out);
    out.extend_from_slice(&body);
}

/// Encodes one frame into a fresh buffer.
pub fn frame_bytes<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_frame(value, &mut out);
    out
}

fn write_varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint from the front of `buf`: `Ok(None)` if incomplete.
fn read_varint(buf: &[u8]) -> Result<Option<(u64, usize)>, WireError> {
    let mut v: u64 = 0;
    for (i, b) in buf.iter().enumerate() {
        if i >= 10 {
            return Err(WireError::Body("length prefix longer than 10 bytes".into()));
        }
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((v, i + 1)));
        }
    }
    Ok(None)
}

/// Incremental frame decoder (sans-IO).
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
    max_frame: usize,
}

impl FrameDecoder {
    pub fn new(max_frame: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            max_frame,
        }
    }

    /// Adds bytes received from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Returns the next complete frame, `Ok(None)` if more bytes are needed. After an error
    /// the stream is out of sync and must be closed.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, WireError> {
        let pending = &self.buf[self.start..];
        let Some((len, prefix)) = read_varint(pending)? else {
            return Ok(None);
        };
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.max_frame {
            return Err(WireError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        let Some(body) = pending.get(prefix..prefix + len) else {
            return Ok(None);
        };
        let value = crate::wire::take_exact::<T>(body)?;
        self.start += prefix + len;
        if self.start > 64 * 1024 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{DriverToEdge, EdgeToDriver};
    use crate::DriverId;

    #[test]
    fn decodes_frames_split_across_arbitrary_chunks() {
        let a = DriverToEdge::Hello {
            token: "t".repeat(300),
            app_version: "1.0".into(),
        };
        let b = DriverToEdge::Fixes(vec![]);
        let mut bytes = frame_bytes(&a);
        encode_frame(&b, &mut bytes);
        for chunk in [1, 2, 7, 1000] {
            let mut d = FrameDecoder::new(MAX_DRIVER_FRAME);
            let mut got = Vec::new();
            for c in bytes.chunks(chunk) {
                d.push(c);
                while let Some(f) = d.next_frame::<DriverToEdge>().expect("valid") {
                    got.push(f);
                }
            }
            assert_eq!(got, vec![a.clone(), b.clone()]);
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn refuses_a_frame_announced_larger_than_the_limit() {
        let mut d = FrameDecoder::new(16);
        d.push(&[0xff, 0xff, 0x03]);
        assert!(matches!(
            d.next_frame::<EdgeToDriver>(),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn rejects_an_overlong_length_prefix() {
        let mut d = FrameDecoder::new(16);
        d.push(&[0x80; 11]);
        assert!(d.next_frame::<EdgeToDriver>().is_err());
    }

    #[test]
    fn round_trips_welcome() {
        let w = EdgeToDriver::Welcome {
            driver_id: DriverId(7),
            session_id: 9,
            server_time_ms: 1,
            max_datagram: 1200,
        };
        let mut d = FrameDecoder::new(MAX_DRIVER_FRAME);
        d.push(&frame_bytes(&w));
        assert_eq!(d.next_frame::<EdgeToDriver>(), Ok(Some(w)));
    }
}
