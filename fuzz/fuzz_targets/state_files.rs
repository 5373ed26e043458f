//! The loaders of what the agent reads from disk at start: the tags file, the state manifest and
//! the TOML config. Arbitrary bytes never panic; every refusal is a typed error naming the file;
//! what parses survives a round trip unchanged (so a rewrite never alters a tag).
#![no_main]

use std::collections::HashMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use spendguard_agent::config::{Config, RawConfig};
use spendguard_agent::identity::tags::TagsFile;
use spendguard_agent::statedir::parse_manifest;

fuzz_target!(|data: &[u8]| {
    let tags_path = Path::new("/var/lib/spendguard/tags.json");
    match TagsFile::parse(tags_path, data) {
        Ok(file) => {
            let again = serde_json::to_vec(&file).expect("a parsed tags file serialises");
            let back = TagsFile::parse(tags_path, &again).expect("and parses again");
            assert_eq!(back.tags, file.tags);
            assert_eq!(back.version, file.version);
        }
        Err(e) => assert!(e.to_string().contains("tags.json"), "{e}"),
    }
    let manifest = Path::new("/var/lib/spendguard/state.json");
    if let Err(e) = parse_manifest(manifest, data) {
        assert!(e.to_string().contains("state.json"), "{e}");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(raw) = toml::from_str::<RawConfig>(text) {
            // Validation may refuse, never panic.
            let _ = Config::from_raw(raw, &HashMap::<String, String>::new());
        }
    }
});
