//! Codecs for values that the layers store in Redis or on disk.
//!
//! A [`Codec`] turns any serde value into bytes and back. Two are built in: [`JsonCodec`]
//! (readable, self-describing, tolerant of added fields) and [`BinaryCodec`] (postcard:
//! compact and fast, but not self-describing, so both sides must agree on the type). A layer
//! that stores values is generic over its codec, so users can plug their own.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, ErrorKind, Result};

/// Encodes and decodes stored values.
pub trait Codec: Clone + Send + Sync + 'static {
    /// A short name for messages and metrics (`"json"`, `"binary"`).
    fn name(&self) -> &'static str;

    /// Encodes a value.
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>>;

    /// Decodes a value.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T>;
}

/// JSON through `serde_json`.
#[derive(Clone, Copy, Debug, Default)]
pub struct JsonCodec;

/// A compact binary format (postcard: varints, no field names).
#[derive(Clone, Copy, Debug, Default)]
pub struct BinaryCodec;

fn codec_error(
    codec: &str,
    what: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::new(ErrorKind::Codec, format!("{codec} {what}: {e}")).with_source(e)
}

impl Codec for JsonCodec {
    fn name(&self) -> &'static str {
        "json"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(value).map_err(|e| codec_error("json", "encode", e))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes).map_err(|e| codec_error("json", "decode", e))
    }
}

impl Codec for BinaryCodec {
    fn name(&self) -> &'static str {
        "binary"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        postcard::to_stdvec(value).map_err(|e| codec_error("binary", "encode", e))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        postcard::from_bytes(bytes).map_err(|e| codec_error("binary", "decode", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Snapshot {
        id: String,
        version: u64,
        balance: i64,
        tags: Vec<String>,
    }

    fn sample() -> Snapshot {
        Snapshot {
            id: "acct-7".into(),
            version: 300,
            balance: -42,
            tags: vec!["vip".into()],
        }
    }

    fn roundtrip<C: Codec>(c: C) -> Vec<u8> {
        let bytes = c.encode(&sample()).unwrap();
        assert_eq!(c.decode::<Snapshot>(&bytes).unwrap(), sample());
        bytes
    }

    #[test]
    fn both_codecs_roundtrip_and_binary_is_smaller() {
        let json = roundtrip(JsonCodec);
        let bin = roundtrip(BinaryCodec);
        assert!(
            bin.len() * 3 < json.len(),
            "{} vs {}",
            bin.len(),
            json.len()
        );
    }

    #[test]
    fn bad_bytes_give_a_codec_error_naming_the_codec() {
        let e = JsonCodec.decode::<Snapshot>(b"{not json").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Codec);
        assert!(
            e.to_string().starts_with("codec error (json decode:"),
            "{e}"
        );
        let e = BinaryCodec.decode::<Snapshot>(&[0xff]).unwrap_err();
        assert!(e.to_string().contains("binary decode"), "{e}");
    }
}
