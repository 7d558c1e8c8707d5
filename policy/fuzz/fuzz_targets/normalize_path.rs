//! normalize_path never panics, and its output is a fixed point: normalizing a
//! canonical path changes nothing (else two spellings could match differently).
#![no_main]

use libfuzzer_sys::fuzz_target;
use palisade_policy::http::normalize_path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = format!("/{text}");
    if let Ok(once) = normalize_path(&path) {
        assert_eq!(normalize_path(&once).as_ref(), Ok(&once), "input {path:?}");
        assert!(!once.contains("//"), "{once:?}");
        assert!(
            !once.split('/').any(|s| s == "." || s == ".."),
            "{once:?}"
        );
    }
});
