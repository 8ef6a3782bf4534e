use crate::{padded, Error, Result};

/// A cursor over XDR input. Never panics: every read checks what is left.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    /// What has not been read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    /// Fails unless the whole input was consumed.
    pub fn finish(&self) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(Error::Trailing(n)),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let left = self.remaining();
        if n > left {
            return Err(Error::Truncated { needed: n, left });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn i32(&mut self) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn i64(&mut self) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    pub fn bool(&mut self) -> Result<bool> {
        match self.u32()? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(Error::BadBool(v)),
        }
    }

    /// `opaque x[n]`: exactly `n` bytes plus padding.
    pub fn opaque_fixed(&mut self, n: usize) -> Result<&'a [u8]> {
        let s = self.take(padded(n))?;
        Ok(&s[..n])
    }

    /// `opaque x<max>`: a length checked against `max` and the input left,
    /// then the bytes. Borrows; the caller decides whether to copy.
    pub fn opaque_var(&mut self, max: u32) -> Result<&'a [u8]> {
        let len = self.u32()?;
        if len > max {
            return Err(Error::TooLong { len, max });
        }
        self.opaque_fixed(len as usize)
    }

    /// Skips `n` bytes (used to step over a body we do not interpret).
    pub fn skip(&mut self, n: usize) -> Result<()> {
        self.take(n).map(|_| ())
    }
}
