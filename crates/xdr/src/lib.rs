//! XDR (RFC 4506) encoding and decoding.
//!
//! Decoding borrows from the input and checks every length that comes from the
//! wire against both its declared bound and the bytes actually left *before*
//! anything is allocated, so a forged 4 GiB length costs nothing.
//!
//! ```
//! use latch_xdr::{Decode, Encode, Reader, Writer, Opaque};
//! let mut w = Writer::new();
//! 7u32.encode(&mut w);
//! Opaque::<8>::new(b"abc".to_vec()).unwrap().encode(&mut w);
//! let bytes = w.into_bytes();
//! let mut r = Reader::new(&bytes);
//! assert_eq!(u32::decode(&mut r).unwrap(), 7);
//! assert_eq!(Opaque::<8>::decode(&mut r).unwrap().as_bytes(), b"abc");
//! r.finish().unwrap();
//! ```

mod bounded;
mod reader;
mod writer;

pub use bounded::{FixedOpaque, Opaque, XdrString};
pub use reader::Reader;
pub use writer::Writer;

/// Why a decode failed. Every variant maps to GARBAGE_ARGS at the RPC layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("truncated: needed {needed} bytes, {left} left")]
    Truncated { needed: usize, left: usize },
    #[error("length {len} exceeds the bound {max}")]
    TooLong { len: u32, max: u32 },
    #[error("invalid bool {0}")]
    BadBool(u32),
    #[error("invalid discriminant {value} for {what}")]
    BadDiscriminant { what: &'static str, value: u32 },
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

pub type Result<T> = std::result::Result<T, Error>;

/// A type with an XDR encoding.
pub trait Encode {
    fn encode(&self, w: &mut Writer);
}

/// A type that can be decoded from XDR, possibly borrowing from the input.
pub trait Decode<'a>: Sized {
    fn decode(r: &mut Reader<'a>) -> Result<Self>;
}

/// Encodes a value into a fresh buffer.
pub fn to_bytes<T: Encode + ?Sized>(value: &T) -> Vec<u8> {
    let mut w = Writer::new();
    value.encode(&mut w);
    w.into_bytes()
}

/// Decodes a value that must use the whole input.
pub fn from_bytes<'a, T: Decode<'a>>(bytes: &'a [u8]) -> Result<T> {
    let mut r = Reader::new(bytes);
    let v = T::decode(&mut r)?;
    r.finish()?;
    Ok(v)
}

/// Rounds a length up to the XDR unit of 4 bytes.
pub const fn padded(len: usize) -> usize {
    (len + 3) & !3
}

macro_rules! primitive {
    ($t:ty, $get:ident, $put:ident) => {
        impl Encode for $t {
            fn encode(&self, w: &mut Writer) {
                w.$put(*self);
            }
        }
        impl<'a> Decode<'a> for $t {
            fn decode(r: &mut Reader<'a>) -> Result<Self> {
                r.$get()
            }
        }
    };
}
primitive!(u32, u32, put_u32);
primitive!(i32, i32, put_i32);
primitive!(u64, u64, put_u64);
primitive!(i64, i64, put_i64);
primitive!(bool, bool, put_bool);

/// `void`.
impl Encode for () {
    fn encode(&self, _: &mut Writer) {}
}

impl<'a> Decode<'a> for () {
    fn decode(_: &mut Reader<'a>) -> Result<Self> {
        Ok(())
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode(&self, w: &mut Writer) {
        match self {
            None => w.put_bool(false),
            Some(v) => {
                w.put_bool(true);
                v.encode(w);
            }
        }
    }
}

impl<'a, T: Decode<'a>> Decode<'a> for Option<T> {
    fn decode(r: &mut Reader<'a>) -> Result<Self> {
        if r.bool()? {
            Ok(Some(T::decode(r)?))
        } else {
            Ok(None)
        }
    }
}

impl<T: Encode + ?Sized> Encode for &T {
    fn encode(&self, w: &mut Writer) {
        (**self).encode(w);
    }
}

/// Encodes a variable-length array `T<>`.
pub fn encode_array<T: Encode>(w: &mut Writer, items: &[T]) {
    w.put_u32(len_u32(items.len()));
    for item in items {
        item.encode(w);
    }
}

/// Decodes a variable-length array `T<max>`. Every XDR item takes at least 4
/// bytes, so the count is checked against the input left before allocating.
pub fn decode_array<'a, T: Decode<'a>>(r: &mut Reader<'a>, max: u32) -> Result<Vec<T>> {
    let n = r.u32()?;
    if n > max {
        return Err(Error::TooLong { len: n, max });
    }
    let need = n as usize * 4;
    if need > r.remaining() {
        return Err(Error::Truncated {
            needed: need,
            left: r.remaining(),
        });
    }
    (0..n).map(|_| T::decode(r)).collect()
}

/// Decodes an optional-data linked list (`*next` chains, as in rpcbind DUMP),
/// bounded to `max` items.
pub fn decode_list<'a, T: Decode<'a>>(r: &mut Reader<'a>, max: usize) -> Result<Vec<T>> {
    let mut out = Vec::new();
    while r.bool()? {
        if out.len() >= max {
            return Err(Error::TooLong {
                len: len_u32(out.len() + 1),
                max: len_u32(max),
            });
        }
        out.push(T::decode(r)?);
    }
    Ok(out)
}

/// Encodes an optional-data linked list.
pub fn encode_list<T: Encode>(w: &mut Writer, items: &[T]) {
    for item in items {
        w.put_bool(true);
        item.encode(w);
    }
    w.put_bool(false);
}

/// Lengths we encode come from our own bounded values; saturating keeps a
/// logic error from wrapping silently.
pub(crate) fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
