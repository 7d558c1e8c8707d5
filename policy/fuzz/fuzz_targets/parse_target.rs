//! parse_target never panics on any request target, and the path it yields is
//! canonical and re-parses to itself (with the same query).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::http::{normalize_path, parse_target};

fuzz_target!(|data: &[u8]| {
    let target = String::from_utf8_lossy(data);
    if let Ok(t) = parse_target(&target) {
        if t.path != "*" {
            assert_eq!(normalize_path(&t.path).as_ref(), Ok(&t.path), "{target:?}");
            let again = parse_target(&t.path_and_query()).expect("a canonical target re-parses");
            assert_eq!(again, t, "{target:?}");
        }
    }
});
