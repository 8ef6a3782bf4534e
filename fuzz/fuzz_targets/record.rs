//! TCP record marking fed in arbitrary chunks: never panics, never buffers
//! more than its limit, and reassembles the same records however the stream
//! is cut.
#![no_main]
use latch_oncrpc::record::RecordDecoder;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fn records(data: &[u8], chunk: usize) -> (Vec<Vec<u8>>, bool) {
    let mut d = RecordDecoder::new(MAX);
    let mut out = Vec::new();
    for c in data.chunks(chunk.max(1)) {
        d.extend(c);
        loop {
            match d.next_record() {
                Ok(Some(r)) => {
                    assert!(r.len() <= MAX);
                    out.push(r);
                }
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
        assert!(d.buffered() <= MAX + 4 + chunk);
    }
    (out, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&c, rest)) = data.split_first() else {
        return;
    };
    let whole = records(rest, rest.len());
    let cut = records(rest, usize::from(c % 17) + 1);
    assert_eq!(whole, cut);
});
