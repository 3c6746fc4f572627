//! `cargo bench --bench validate`: how long validation takes as recipe files grow, to show
//! it stays linear (issue 9: 10,000 steps took 99 s and 20,000 over 300 s when it was
//! quadratic). A plain main that prints figures.

use std::path::Path;
use std::time::Instant;

use ghlflow::catalog;
use ghlflow::config::Config;
use ghlflow::recipe::compile_recipe;

fn recipe(steps: usize) -> String {
    let mut text = String::from(
        "name: big\ntrigger:\n  operation: capsule.parties.party_updated\n  connection: capsule\n  every: 5m\nsteps:\n",
    );
    for i in 0..steps {
        text.push_str(&format!(
            "  - id: s{i}\n    operation: ghl.contacts.create_contact_note\n    connection: ghl\n    input:\n      contactId: \"{{{{trigger.id}}}}\"\n      body: \"{{{{trigger.about}}}} {i}\"\n"
        ));
    }
    text
}

fn main() {
    let catalog = catalog::load_embedded().expect("the embedded catalog compiles");
    let config = Config::parse(
        "connections:\n  ghl: { app: ghl, location_id: L, auth: { type: private_token, token: t1 } }\n  capsule: { app: capsule, auth: { type: bearer, token: t2 }, access: read_only }\n",
        Path::new("ghlflow.yaml"),
        &catalog,
        &|_| None,
    )
    .expect("the bench configuration is valid");
    for steps in [1_000, 10_000, 20_000] {
        let text = recipe(steps);
        let start = Instant::now();
        let compiled = compile_recipe("big.yaml", "big", &text, &catalog, &config, &|_| None);
        let took = start.elapsed();
        assert!(compiled.is_ok(), "the generated recipe validates");
        println!("validate: {steps:>6} steps ({:>5} KB): {:>8.1} ms", text.len() / 1024, took.as_secs_f64() * 1e3);
    }
    let wide: String = (0..100_000).map(|i| format!("k{i}: v\n")).collect();
    let start = Instant::now();
    let _ = ghlflow::diagnostic::PositionIndex::build(&wide);
    println!("index: 100,000-key mapping: {:.1} ms", start.elapsed().as_secs_f64() * 1e3);
}
