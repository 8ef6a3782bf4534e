//! Turning host names from the network into file names. A name may hold any
//! bytes; the result holds only `[A-Za-z0-9._-]` and `%XX` escapes, never
//! starts with a dot (so never `.` or `..`), never holds `/` or NUL, and is
//! at most [`MAX_FILE_NAME`] bytes. Distinct names give distinct file names:
//! escaping is injective, and a name too long to escape whole keeps a prefix
//! plus a hash of the whole.

/// Well under NAME_MAX (255) so a `.tmp` suffix still fits.
pub const MAX_FILE_NAME: usize = 200;

fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

/// The file name for host `name`.
pub fn file_name(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, &b) in name.iter().enumerate() {
        if plain(b) && !(i == 0 && b == b'.') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('%');
    }
    if out.len() > MAX_FILE_NAME {
        // Keep a prefix that does not end inside a `%XX` escape (the string
        // is ASCII, so any byte offset is a character boundary).
        let mut cut = MAX_FILE_NAME - 18;
        if let Some(p) = out[..cut].rfind('%').filter(|p| p + 3 > cut) {
            cut = p;
        }
        out.truncate(cut);
        out.push_str(&format!("~{:016x}", fnv1a(name)));
    }
    out
}

/// Escapes a name for one line of a text record (reversible by [`unescape`]).
pub fn escape(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reverses [`escape`]; `None` for a malformed escape.
pub fn unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn safe(f: &str) -> bool {
        !f.is_empty()
            && f.len() <= MAX_FILE_NAME
            && !f.starts_with('.')
            && f.bytes().all(|b| plain(b) || b == b'%' || b == b'~')
    }

    #[test]
    fn hostile_names_become_harmless() {
        for name in [
            &b"../../etc/passwd"[..],
            b"..",
            b".",
            b"",
            b"a/b",
            b"host\0name",
            b"line\nbreak",
            b".hidden",
            &[0xff, 0xfe, b'/'],
        ] {
            let f = file_name(name);
            assert!(safe(&f), "{name:?} -> {f}");
        }
        assert_eq!(file_name(b"../../etc/passwd"), "%2E.%2F..%2Fetc%2Fpasswd");
        assert_eq!(file_name(b"client-1.example.org"), "client-1.example.org");
    }

    #[test]
    fn long_names_are_bounded_and_still_distinct() {
        let a = vec![b'a'; 1024];
        let mut b = a.clone();
        b[1023] = b'b';
        let (fa, fb) = (file_name(&a), file_name(&b));
        assert!(safe(&fa) && safe(&fb));
        assert_ne!(fa, fb);
        let slashes = vec![b'/'; 1024];
        assert!(safe(&file_name(&slashes)));
    }

    proptest! {
        #[test]
        fn any_name_is_safe_and_escape_round_trips(name in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert!(safe(&file_name(&name)));
            let e = escape(&name);
            prop_assert!(!e.contains(char::is_whitespace));
            prop_assert_eq!(unescape(&e), Some(name));
        }

        #[test]
        fn short_names_map_injectively(a in proptest::collection::vec(any::<u8>(), 0..40),
                                        b in proptest::collection::vec(any::<u8>(), 0..40)) {
            if a != b {
                prop_assert_ne!(file_name(&a), file_name(&b));
            }
        }
    }
}
