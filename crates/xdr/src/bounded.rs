//! Owned, bounded opaque and string values. A value that exists is within its
//! bound: construction checks it, so encoding never has to.

use crate::{Decode, Encode, Error, Reader, Result, Writer};
use std::fmt;

/// `opaque x<MAX>`, owned. Short values (cookies, owner handles, host
/// names, most file handles) are kept inline: every NLM call decodes four
/// of them, and an allocation each was a measurable part of its cost.
#[derive(Clone)]
pub struct Opaque<const MAX: u32>(Bytes);

/// Up to [`INLINE`] bytes in place, longer ones on the heap.
#[derive(Clone)]
enum Bytes {
    Inline { len: u8, buf: [u8; INLINE] },
    Heap(Box<[u8]>),
}

const INLINE: usize = 38;

impl Bytes {
    fn from_slice(b: &[u8]) -> Bytes {
        let mut buf = [0; INLINE];
        match buf.get_mut(..b.len()) {
            Some(dst) => {
                dst.copy_from_slice(b);
                Bytes::Inline {
                    len: b.len() as u8,
                    buf,
                }
            }
            None => Bytes::Heap(b.into()),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Inline { len, buf } => buf.get(..usize::from(*len)).unwrap_or(&[]),
            Bytes::Heap(b) => b,
        }
    }
}

impl<const MAX: u32> Opaque<MAX> {
    pub fn new(bytes: Vec<u8>) -> Result<Self> {
        check::<MAX>(bytes.len())?;
        Ok(Opaque(if bytes.len() <= INLINE {
            Bytes::from_slice(&bytes)
        } else {
            Bytes::Heap(bytes.into_boxed_slice())
        }))
    }

    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        check::<MAX>(bytes.len())?;
        Ok(Opaque(Bytes::from_slice(bytes)))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_slice()
    }

    pub fn into_vec(self) -> Vec<u8> {
        match self.0 {
            Bytes::Heap(b) => b.into_vec(),
            i => i.as_slice().to_vec(),
        }
    }
}

impl<const MAX: u32> Default for Opaque<MAX> {
    fn default() -> Self {
        Opaque(Bytes::from_slice(&[]))
    }
}

// Compared and hashed as the bytes they hold, whatever the storage.
impl<const MAX: u32> PartialEq for Opaque<MAX> {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl<const MAX: u32> Eq for Opaque<MAX> {}

impl<const MAX: u32> std::hash::Hash for Opaque<MAX> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl<const MAX: u32> PartialOrd for Opaque<MAX> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl<const MAX: u32> Ord for Opaque<MAX> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

fn check<const MAX: u32>(len: usize) -> Result<()> {
    match u32::try_from(len) {
        Ok(l) if l <= MAX => Ok(()),
        _ => Err(Error::TooLong {
            len: crate::len_u32(len),
            max: MAX,
        }),
    }
}

impl<const MAX: u32> fmt::Debug for Opaque<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl<const MAX: u32> Encode for Opaque<MAX> {
    fn encode(&self, w: &mut Writer) {
        w.put_opaque_var(self.as_bytes());
    }
}

impl<'a, const MAX: u32> Decode<'a> for Opaque<MAX> {
    fn decode(r: &mut Reader<'a>) -> Result<Self> {
        Ok(Opaque(Bytes::from_slice(r.opaque_var(MAX)?)))
    }
}

/// `string x<MAX>`, owned. XDR strings are bytes (host names from the wire are
/// not guaranteed to be UTF-8), so this keeps bytes and displays lossily.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct XdrString<const MAX: u32>(Opaque<MAX>);

impl<const MAX: u32> XdrString<MAX> {
    pub fn new(bytes: Vec<u8>) -> Result<Self> {
        Opaque::new(bytes).map(XdrString)
    }

    pub fn from_text(s: &str) -> Result<Self> {
        Opaque::from_slice(s.as_bytes()).map(XdrString)
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The string if it is UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        std::str::from_utf8(self.as_bytes()).ok()
    }
}

impl<const MAX: u32> fmt::Debug for XdrString<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl<const MAX: u32> fmt::Display for XdrString<MAX> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in String::from_utf8_lossy(self.as_bytes()).chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        Ok(())
    }
}

impl<const MAX: u32> Encode for XdrString<MAX> {
    fn encode(&self, w: &mut Writer) {
        self.0.encode(w);
    }
}

impl<'a, const MAX: u32> Decode<'a> for XdrString<MAX> {
    fn decode(r: &mut Reader<'a>) -> Result<Self> {
        Opaque::decode(r).map(XdrString)
    }
}

/// `opaque x[N]`, owned (NSM's 16-byte private data, verifiers).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FixedOpaque<const N: usize>(pub [u8; N]);

impl<const N: usize> Default for FixedOpaque<N> {
    fn default() -> Self {
        FixedOpaque([0; N])
    }
}

impl<const N: usize> fmt::Debug for FixedOpaque<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl<const N: usize> Encode for FixedOpaque<N> {
    fn encode(&self, w: &mut Writer) {
        w.put_opaque_fixed(&self.0);
    }
}

impl<'a, const N: usize> Decode<'a> for FixedOpaque<N> {
    fn decode(r: &mut Reader<'a>) -> Result<Self> {
        let mut a = [0u8; N];
        a.copy_from_slice(r.opaque_fixed(N)?);
        Ok(FixedOpaque(a))
    }
}
