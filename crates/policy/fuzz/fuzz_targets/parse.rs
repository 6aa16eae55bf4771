//! Policy YAML comes from users and from other tools: parsing any bytes must return a
//! document list or an error, never panic; and whatever parses must compile and render.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(docs) = twill_policy::parse_documents(text) {
        let world = twill_policy::World::new(Vec::new(), Vec::new(), docs);
        let rules = twill_policy::compile(&world, "n1", twill_policy::Options::default());
        let _ = twill_policy::render(&rules);
    }
});
