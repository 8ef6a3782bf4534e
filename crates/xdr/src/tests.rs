use super::*;
use proptest::prelude::*;

#[test]
fn primitives_are_big_endian_and_padded() {
    let mut w = Writer::new();
    1u32.encode(&mut w);
    (-2i32).encode(&mut w);
    0x0102_0304_0506_0708u64.encode(&mut w);
    true.encode(&mut w);
    w.put_opaque_var(b"abcde");
    assert_eq!(
        w.as_bytes(),
        &[
            0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfe, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 1, 0, 0, 0, 5,
            b'a', b'b', b'c', b'd', b'e', 0, 0, 0
        ][..]
    );
}

#[test]
fn truncated_input_is_an_error_not_a_panic() {
    for len in 0..4 {
        let buf = vec![0u8; len];
        assert!(matches!(
            Reader::new(&buf).u32(),
            Err(Error::Truncated { .. })
        ));
    }
    assert!(Reader::new(&[0u8; 7]).u64().is_err());
}

#[test]
fn a_4gib_length_is_refused_before_allocating() {
    let buf = [0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4];
    assert_eq!(
        Opaque::<1024>::decode(&mut Reader::new(&buf)),
        Err(Error::TooLong {
            len: u32::MAX,
            max: 1024
        })
    );
    // Within the bound but longer than the input: truncated, nothing allocated.
    let buf = [0, 0, 4, 0, 1, 2];
    assert!(matches!(
        Opaque::<1024>::decode(&mut Reader::new(&buf)),
        Err(Error::Truncated { .. })
    ));
    // An array count of 2^32-1 with an unbounded max is refused by the size check.
    let buf = [0xff, 0xff, 0xff, 0xff];
    assert!(matches!(
        decode_array::<u32>(&mut Reader::new(&buf), u32::MAX),
        Err(Error::Truncated { .. })
    ));
}

#[test]
fn bools_other_than_0_and_1_are_rejected() {
    assert_eq!(Reader::new(&[0, 0, 0, 2]).bool(), Err(Error::BadBool(2)));
}

#[test]
fn construction_enforces_the_bound() {
    assert!(Opaque::<4>::new(vec![0; 5]).is_err());
    assert!(Opaque::<4>::new(vec![0; 4]).is_ok());
    assert!(XdrString::<3>::from_text("abcd").is_err());
}

#[test]
fn trailing_bytes_are_reported() {
    assert_eq!(from_bytes::<u32>(&[0, 0, 0, 1, 9]), Err(Error::Trailing(1)));
}

#[test]
fn lists_are_bounded() {
    let mut w = Writer::new();
    encode_list(&mut w, &[1u32, 2, 3]);
    let bytes = w.into_bytes();
    assert_eq!(
        decode_list::<u32>(&mut Reader::new(&bytes), 3).unwrap(),
        vec![1, 2, 3]
    );
    assert!(decode_list::<u32>(&mut Reader::new(&bytes), 2).is_err());
}

#[test]
fn display_escapes_control_bytes() {
    let s = XdrString::<64>::new(b"a\nb\0".to_vec()).unwrap();
    assert_eq!(s.to_string(), "a\\nb\\u{0}");
}

proptest! {
    #[test]
    fn opaque_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let v = Opaque::<64>::new(bytes.clone()).unwrap();
        let enc = to_bytes(&v);
        prop_assert_eq!(enc.len() % 4, 0);
        let back: Opaque<64> = from_bytes(&enc).unwrap();
        prop_assert_eq!(back.as_bytes(), &bytes[..]);
    }

    #[test]
    fn arrays_round_trip(items in proptest::collection::vec(any::<u64>(), 0..32)) {
        let mut w = Writer::new();
        encode_array(&mut w, &items);
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        prop_assert_eq!(decode_array::<u64>(&mut r, 32).unwrap(), items);
        prop_assert!(r.finish().is_ok());
    }

    #[test]
    fn decoding_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut r = Reader::new(&bytes);
        let _ = Opaque::<16>::decode(&mut r);
        let _ = decode_array::<u32>(&mut r, 8);
        let _ = decode_list::<u64>(&mut r, 8);
        let _ = Option::<u32>::decode(&mut r);
    }
}
