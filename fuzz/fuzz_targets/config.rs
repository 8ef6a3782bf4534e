//! latchd's configuration file: any text either parses or is refused with a
//! message that names where (a line number) or what is wrong; never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = latchd::config::Config::parse(text, "fuzz.toml") {
        let msg = e.to_string();
        assert!(msg.starts_with("fuzz.toml"), "{msg}");
    }
});
