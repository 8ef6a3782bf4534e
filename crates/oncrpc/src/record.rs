//! TCP record marking (RFC 5531 section 11): a record is a sequence of
//! fragments, each behind a 4-byte header whose top bit marks the last one.

const LAST_FRAGMENT: u32 = 0x8000_0000;

/// Why a stream must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record of at least {claimed} bytes exceeds the limit of {max}")]
    TooLarge { claimed: u64, max: usize },
    #[error("more than {0} fragments in one record")]
    TooManyFragments(usize),
}

/// Frames `payload` as one record of one fragment.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    push_frame(&mut out, payload);
    out
}

/// Appends `payload` framed as one record to `out` (for batching replies).
pub fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    // Our records are bounded far below 2^31 (see `RecordDecoder`), so the
    // length fits the 31-bit field.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX) & !LAST_FRAGMENT;
    out.extend_from_slice(&(len | LAST_FRAGMENT).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Reassembles records from a byte stream. Sans-IO: feed it what the socket
/// read, take out complete records. Memory is bounded by `max_record`: a
/// fragment header that would push the record past it is an error at once,
/// before any of its bytes are buffered.
#[derive(Debug)]
pub struct RecordDecoder {
    max_record: usize,
    max_fragments: usize,
    /// Bytes read but not yet consumed (at most one header plus a fragment).
    input: Vec<u8>,
    /// The record assembled so far.
    record: Vec<u8>,
    fragments: usize,
}

impl RecordDecoder {
    pub fn new(max_record: usize) -> Self {
        RecordDecoder {
            max_record,
            max_fragments: 1024,
            input: Vec::new(),
            record: Vec::new(),
            fragments: 0,
        }
    }

    /// Bytes held for a record not yet complete.
    pub fn buffered(&self) -> usize {
        self.input.len() + self.record.len()
    }

    /// Whether a partial record is pending (for idle-time decisions).
    pub fn is_idle(&self) -> bool {
        self.buffered() == 0
    }

    /// Feeds bytes from the stream.
    pub fn extend(&mut self, bytes: &[u8]) {
        self.input.extend_from_slice(bytes);
    }

    /// Takes the next complete record, `Ok(None)` if more input is needed.
    /// After an error the stream is unusable and must be closed.
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>, RecordError> {
        let mut pos = 0;
        let result = loop {
            let Some(header) = self.input.get(pos..pos + 4) else {
                break Ok(None);
            };
            let mut h = [0u8; 4];
            h.copy_from_slice(header);
            let header = u32::from_be_bytes(h);
            let len = (header & !LAST_FRAGMENT) as usize;
            let claimed = self.record.len() as u64 + len as u64;
            if claimed > self.max_record as u64 {
                break Err(RecordError::TooLarge {
                    claimed,
                    max: self.max_record,
                });
            }
            let Some(body) = self.input.get(pos + 4..pos + 4 + len) else {
                break Ok(None);
            };
            self.fragments += 1;
            if self.fragments > self.max_fragments {
                break Err(RecordError::TooManyFragments(self.max_fragments));
            }
            self.record.extend_from_slice(body);
            pos += 4 + len;
            if header & LAST_FRAGMENT != 0 {
                self.fragments = 0;
                break Ok(Some(std::mem::take(&mut self.record)));
            }
        };
        self.input.drain(..pos);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(last: bool, body: &[u8]) -> Vec<u8> {
        let mut h = body.len() as u32;
        if last {
            h |= LAST_FRAGMENT;
        }
        let mut v = h.to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn multi_fragment_records_reassemble() {
        let mut d = RecordDecoder::new(1024);
        let mut stream = fragment(false, b"hel");
        stream.extend(fragment(false, b""));
        stream.extend(fragment(true, b"lo"));
        stream.extend(frame(b"second"));
        // Byte by byte, to exercise every partial state.
        let mut out = Vec::new();
        for b in stream {
            d.extend(&[b]);
            while let Some(rec) = d.next_record().unwrap() {
                out.push(rec);
            }
        }
        assert_eq!(out, vec![b"hello".to_vec(), b"second".to_vec()]);
        assert!(d.is_idle());
    }

    #[test]
    fn a_2gib_fragment_header_is_refused_before_buffering() {
        let mut d = RecordDecoder::new(64 * 1024);
        d.extend(&0xffff_ffffu32.to_be_bytes());
        d.extend(&[0; 100]);
        assert!(matches!(
            d.next_record(),
            Err(RecordError::TooLarge { claimed, .. }) if claimed == 0x7fff_ffff
        ));
    }

    #[test]
    fn the_limit_counts_the_whole_record_not_one_fragment() {
        let mut d = RecordDecoder::new(10);
        d.extend(&fragment(false, &[0; 6]));
        d.extend(&fragment(true, &[0; 6]));
        assert!(matches!(d.next_record(), Err(RecordError::TooLarge { .. })));
    }

    #[test]
    fn endless_empty_fragments_are_cut_off() {
        let mut d = RecordDecoder::new(10);
        for _ in 0..2000 {
            d.extend(&fragment(false, b""));
        }
        assert_eq!(d.next_record(), Err(RecordError::TooManyFragments(1024)));
    }
}
