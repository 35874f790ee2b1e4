//! How responses become stored values and back: [`Storage`] (the response side) and
//! [`ValueCodec`] (the bytes that L2 keeps and that measure an entry).
//!
//! A response that is a value in memory ([`Values`]: any `Clone` type, `Bytes`, an `Arc<T>`)
//! is stored as it is; its codec turns it into bytes for L2 and for the size limit. A response
//! with a streaming body (`http::Response<B>`, feature `http`) is captured while it streams: up
//! to the partition's maximum entry size it is collected and stored; past it, what was read is
//! sent on followed by the rest of the stream, so a large body is never held whole.
//!
//! An L1 hit clones the stored value ([`Storage::respond`]): for `Bytes` or an `Arc`, a
//! reference count, with no allocation.

use std::future::{Future, Ready, ready};
use std::sync::Arc;

use bytes::Bytes;
use omega_core::reject::BoxError;

/// What [`Storage::capture`] made of a response.
#[derive(Debug)]
pub enum Captured<R, V> {
    /// The response, read within the size limit, as a value to store (and to answer with).
    Stored(V),
    /// The response was too large to store: it is passed on as it streams.
    Passed(R),
}

/// The response side of a cache: how a response of type `Res` becomes a stored value, and a
/// stored value a response.
pub trait Storage<Res>: Clone + Send + Sync + 'static {
    /// What the cached service answers with.
    type Response: Send + 'static;
    /// What L1 keeps; cloned on every hit.
    type Value: Clone + Send + Sync + 'static;
    /// The future of [`Storage::capture`].
    type Capture: Future<Output = Captured<Self::Response, Self::Value>> + Send + 'static;

    /// Reads `res` into a value, unless it turns out larger than `max_bytes`.
    fn capture(&self, res: Res, max_bytes: usize) -> Self::Capture;

    /// The response for a stored value (a hit).
    fn respond(&self, value: &Self::Value) -> Self::Response;

    /// The response for `res` when it is not stored at all.
    fn pass(res: Res) -> Self::Response;
}

/// Responses that are values: stored as they are, cloned on a hit. The codec of the partition
/// measures them against the maximum entry size.
#[derive(Clone, Copy, Debug, Default)]
pub struct Values;

impl<Res: Clone + Send + Sync + 'static> Storage<Res> for Values {
    type Response = Res;
    type Value = Res;
    type Capture = Ready<Captured<Res, Res>>;

    #[inline]
    fn capture(&self, res: Res, _max_bytes: usize) -> Self::Capture {
        ready(Captured::Stored(res))
    }

    #[inline]
    fn respond(&self, value: &Res) -> Res {
        value.clone()
    }

    #[inline]
    fn pass(res: Res) -> Res {
        res
    }
}

/// Turns stored values into bytes and back: what L2 keeps, and what an entry weighs.
pub trait ValueCodec<V>: Send + Sync + 'static {
    /// A short name for messages (`"json"`, `"bytes"`).
    fn name(&self) -> &'static str;

    /// The value's bytes.
    fn encode(&self, value: &V) -> Result<Vec<u8>, BoxError>;

    /// A value from its bytes.
    fn decode(&self, bytes: &[u8]) -> Result<V, BoxError>;
}

impl<V, C: ValueCodec<V> + ?Sized> ValueCodec<V> for Arc<C> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    fn encode(&self, value: &V) -> Result<Vec<u8>, BoxError> {
        (**self).encode(value)
    }

    fn decode(&self, bytes: &[u8]) -> Result<V, BoxError> {
        (**self).decode(bytes)
    }
}

/// Values that are bytes already: `Bytes`, `Vec<u8>`, `String` (UTF-8 checked on decode).
#[derive(Clone, Copy, Debug, Default)]
pub struct RawBytes;

impl ValueCodec<Bytes> for RawBytes {
    fn name(&self) -> &'static str {
        "bytes"
    }

    fn encode(&self, value: &Bytes) -> Result<Vec<u8>, BoxError> {
        Ok(value.to_vec())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Bytes, BoxError> {
        Ok(Bytes::copy_from_slice(bytes))
    }
}

impl ValueCodec<Vec<u8>> for RawBytes {
    fn name(&self) -> &'static str {
        "bytes"
    }

    fn encode(&self, value: &Vec<u8>) -> Result<Vec<u8>, BoxError> {
        Ok(value.clone())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Vec<u8>, BoxError> {
        Ok(bytes.to_vec())
    }
}

impl ValueCodec<String> for RawBytes {
    fn name(&self) -> &'static str {
        "bytes"
    }

    fn encode(&self, value: &String) -> Result<Vec<u8>, BoxError> {
        Ok(value.as_bytes().to_vec())
    }

    fn decode(&self, bytes: &[u8]) -> Result<String, BoxError> {
        Ok(String::from_utf8(bytes.to_vec())?)
    }
}

impl ValueCodec<Arc<str>> for RawBytes {
    fn name(&self) -> &'static str {
        "bytes"
    }

    fn encode(&self, value: &Arc<str>) -> Result<Vec<u8>, BoxError> {
        Ok(value.as_bytes().to_vec())
    }

    fn decode(&self, bytes: &[u8]) -> Result<Arc<str>, BoxError> {
        Ok(Arc::from(std::str::from_utf8(bytes)?))
    }
}

/// A codec of `T` used for `Arc<T>` values: a hit clones the `Arc`, not the value.
#[derive(Clone, Copy, Debug, Default)]
pub struct InArc<C>(pub C);

impl<T: Send + Sync + 'static, C: ValueCodec<T>> ValueCodec<Arc<T>> for InArc<C> {
    fn name(&self) -> &'static str {
        self.0.name()
    }

    fn encode(&self, value: &Arc<T>) -> Result<Vec<u8>, BoxError> {
        self.0.encode(value)
    }

    fn decode(&self, bytes: &[u8]) -> Result<Arc<T>, BoxError> {
        self.0.decode(bytes).map(Arc::new)
    }
}

#[cfg(feature = "codec")]
pub use serde_codecs::{Binary, Json};

#[cfg(feature = "codec")]
mod serde_codecs {
    use omega_core::codec::{BinaryCodec, Codec, JsonCodec};
    use omega_core::reject::BoxError;
    use serde::Serialize;
    use serde::de::DeserializeOwned;

    use super::ValueCodec;

    /// Serde values as JSON (omega-core's [`JsonCodec`]; feature `codec`). For `Arc<T>`
    /// values (a hit then clones a pointer), wrap it: [`InArc`](super::InArc)`(Json)`.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Json;

    /// Serde values in a compact binary form (postcard, omega-core's [`BinaryCodec`]; feature
    /// `codec`). For `Arc<T>` values, wrap it: [`InArc`](super::InArc)`(Binary)`.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Binary;

    macro_rules! serde_codec {
        ($name:ident, $core:ident, $label:literal) => {
            impl<T: Serialize + DeserializeOwned + Send + Sync + 'static> ValueCodec<T> for $name {
                fn name(&self) -> &'static str {
                    $label
                }

                fn encode(&self, value: &T) -> Result<Vec<u8>, BoxError> {
                    Ok($core.encode(value)?)
                }

                fn decode(&self, bytes: &[u8]) -> Result<T, BoxError> {
                    Ok($core.decode(bytes)?)
                }
            }
        };
    }

    serde_codec!(Json, JsonCodec, "json");
    serde_codec!(Binary, BinaryCodec, "binary");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_bytes_round_trip() {
        let b = Bytes::from_static(b"abc");
        let back: Bytes = RawBytes.decode(&RawBytes.encode(&b).unwrap()).unwrap();
        assert_eq!(back, b);
        let s = String::from("héllo");
        let back: String = RawBytes.decode(&RawBytes.encode(&s).unwrap()).unwrap();
        assert_eq!(back, s);
        assert!(ValueCodec::<String>::decode(&RawBytes, &[0xff]).is_err());
    }

    #[cfg(feature = "codec")]
    #[test]
    fn serde_codecs_round_trip() {
        let v = Arc::new(vec![1u32, 2, 3]);
        let j = InArc(Json).encode(&v).unwrap();
        assert_eq!(j, b"[1,2,3]");
        let back: Arc<Vec<u32>> = InArc(Json).decode(&j).unwrap();
        assert_eq!(back, v);
        let b = Binary.encode(&*v).unwrap();
        let back: Vec<u32> = Binary.decode(&b).unwrap();
        assert_eq!(back, *v);
    }
}
