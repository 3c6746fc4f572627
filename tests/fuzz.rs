//! A fuzzing harness for the YAML front-ends (catalog, recipe, configuration) and the
//! template compiler and renderer, on stable Rust with proptest's generators.
//!
//! Each target mutates seed files (the fixtures) and also generates text from a small,
//! hostile alphabet (`{{`, `(`, `${`, `---`, NUL, deep indentation), for a bounded time:
//! `GHLFLOW_FUZZ_SECS` per target (2 s by default, so `cargo test` stays quick; `.ci/run`
//! gives each 60 s). The property is that nothing panics and every problem is placed at a
//! line of the file. A failing input is written to `tests/fixtures/hostile/fuzz/` (named
//! `<target>-<hash>.txt`); every file there is replayed first, on every run, so a crash
//! found once stays a regression test. Before each case the input is also written to
//! `target/fuzz-last-<target>.txt`, so an abort (a stack overflow cannot be caught) still
//! leaves the input behind.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config as RunnerConfig, RngAlgorithm, TestRng, TestRunner};
use serde_json::json;

use ghlflow::catalog::{self, CatalogSource, SourceFile};
use ghlflow::config::Config;
use ghlflow::diagnostic::Diagnostics;
use ghlflow::recipe;
use ghlflow::template::{CompiledTemplate, context};

const REGRESSIONS: &str = "tests/fixtures/hostile/fuzz";

fn budget() -> Duration {
    let secs = std::env::var("GHLFLOW_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0f64);
    Duration::from_secs_f64(secs.max(0.0))
}

/// Problems must be placed inside the text (line 1 or later).
fn placed(d: &Diagnostics) -> Result<(), String> {
    match d.iter().find(|d| d.position.line == 0) {
        Some(bad) => Err(format!("a problem without a line: {bad}")),
        None => Ok(()),
    }
}

type Check = fn(&str) -> Result<(), String>;

fn check_recipe(text: &str) -> Result<(), String> {
    thread_local! {
        static WORLD: (catalog::Catalog, Config) = {
            let catalog = catalog::load_embedded().unwrap();
            let config = Config::load(Path::new("tests/fixtures/recipes/ghlflow.yaml"), &catalog, &|_| None).unwrap();
            (catalog, config)
        };
    }
    WORLD.with(|(catalog, config)| {
        match recipe::compile_recipe("fuzz.yaml", "fuzz", text, catalog, config, &|_| None) {
            Ok(r) => {
                // What compiled must also render without panicking.
                let ctx = context(json!({"trigger": {"id": 1, "about": "a b c", "updatedAt": "2026-01-01T00:00:00Z"}}));
                for s in &r.steps {
                    for (_, input) in &s.input {
                        let _ = input.render(&ctx);
                    }
                }
                Ok(())
            }
            Err(d) => placed(&d),
        }
    })
}

fn check_config(text: &str) -> Result<(), String> {
    thread_local! {
        static CATALOG: catalog::Catalog = catalog::load_embedded().unwrap();
    }
    CATALOG.with(|catalog| {
        let env = |name: &str| name.len().is_multiple_of(2).then(|| format!("SECRET-{name}-value"));
        match Config::parse(text, Path::new("ghlflow.yaml"), catalog, &env) {
            Ok(_) => Ok(()),
            Err(d) => {
                placed(&d)?;
                match d.iter().find(|d| d.message.contains("SECRET-")) {
                    Some(leak) => Err(format!("a value from the environment was printed: {leak}")),
                    None => Ok(()),
                }
            }
        }
    })
}

fn check_catalog(text: &str) -> Result<(), String> {
    let app = std::fs::read_to_string("tests/fixtures/catalog/app.yaml").unwrap_or_default();
    let file = |stem: &str, text: &str| SourceFile {
        display: format!("fx/{stem}.yaml"),
        app: "fx".into(),
        stem: stem.into(),
        text: text.to_owned(),
    };
    let source = CatalogSource { files: vec![file("app", &app), file("things", text)] };
    match source.compile() {
        Ok(_) => Ok(()),
        Err(d) => placed(&d),
    }
}

fn check_template(text: &str) -> Result<(), String> {
    if let Ok(t) = CompiledTemplate::compile(text) {
        let _ = t.references();
        let ctx = context(json!({"trigger": {"a": "x,y,z", "n": 5, "list": [1, 2, 3], "o": {"k": "v"}}}));
        let _ = t.render(&ctx);
    }
    Ok(())
}

/// Hostile pieces, joined at random.
fn tokens() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("{{".to_owned()),
        Just("}}".to_owned()),
        Just("{{#if trigger.a}}".to_owned()),
        Just("{{#each (split trigger.a)}}".to_owned()),
        Just("{{/each}}".to_owned()),
        Just("{{/if}}".to_owned()),
        Just("{{> p}}".to_owned()),
        Just("(lower ".to_owned()),
        Just(")".to_owned()),
        Just("{{date_add trigger.n 1e300 \"days\"}}".to_owned()),
        Just("${GHL_TOKEN}".to_owned()),
        Just("${".to_owned()),
        Just("\n---\n".to_owned()),
        Just("\0".to_owned()),
        Just("\u{feff}".to_owned()),
        Just(": ".to_owned()),
        Just("\n  ".to_owned()),
        Just("- ".to_owned()),
        Just("[".to_owned()),
        Just("{".to_owned()),
        Just("&a ".to_owned()),
        Just("*a".to_owned()),
        Just("!!binary ".to_owned()),
        Just("'".to_owned()),
        Just("\"".to_owned()),
        "[a-z_]{1,8}",
        "[0-9]{1,22}",
        any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..64).prop_map(|v| v.concat())
}

/// A seed file with a few edits: a range replaced by hostile tokens, repeated or cut.
fn mutated(seeds: Vec<String>) -> impl Strategy<Value = String> {
    let n = seeds.len().max(1);
    (0..n, any::<prop::sample::Index>(), any::<prop::sample::Index>(), tokens(), 0..4usize).prop_map(
        move |(which, a, b, insert, how)| {
            let seed = seeds.get(which).cloned().unwrap_or_default();
            let chars: Vec<char> = seed.chars().collect();
            if chars.is_empty() {
                return insert;
            }
            let (i, j) = {
                let (x, y) = (a.index(chars.len()), b.index(chars.len()));
                (x.min(y), x.max(y))
            };
            let (head, mid, tail): (String, String, String) =
                (chars[..i].iter().collect(), chars[i..j].iter().collect(), chars[j..].iter().collect());
            match how {
                0 => format!("{head}{insert}{tail}"),
                1 => format!("{head}{insert}{mid}{tail}"),
                2 => format!("{head}{}{tail}", mid.repeat(8)),
                _ => format!("{head}{tail}"),
            }
        },
    )
}

fn seeds(dir: &str, ext: &str) -> Vec<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|e| e == ext)).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read_to_string(p).ok()).collect()
}

fn fuzz(target: &str, check: Check, strategy: impl Strategy<Value = String>) {
    // Regressions first.
    let mut replayed = 0;
    if let Ok(rd) = std::fs::read_dir(REGRESSIONS) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{target}-"))
                && let Ok(bytes) = std::fs::read(e.path())
            {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                run_case(target, check, &text, false);
                replayed += 1;
            }
        }
    }
    let last = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("target/fuzz-last-{target}.txt"));
    let seed: [u8; 32] = rand_seed();
    let mut runner = TestRunner::new_with_rng(RunnerConfig::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    let start = Instant::now();
    let mut cases = 0u64;
    while start.elapsed() < budget() {
        let Ok(tree) = strategy.new_tree(&mut runner) else { continue };
        let text = tree.current();
        let _ = std::fs::write(&last, &text);
        run_case(target, check, &text, true);
        cases += 1;
    }
    eprintln!("fuzz {target}: {cases} cases in {:.1?}, {replayed} regression(s) replayed", start.elapsed());
}

fn run_case(target: &str, check: Check, text: &str, keep: bool) {
    let outcome = catch_unwind(AssertUnwindSafe(|| check(text)));
    let problem = match outcome {
        Ok(Ok(())) => return,
        Ok(Err(problem)) => problem,
        Err(panic) => format!(
            "panicked: {}",
            panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        ),
    };
    let saved = if keep { save(target, text) } else { None };
    panic!(
        "fuzz target {target}: {problem}\ninput ({} bytes){}:\n{text:?}",
        text.len(),
        saved.map(|p| format!(", kept as {}", p.display())).unwrap_or_default()
    );
}

fn save(target: &str, text: &str) -> Option<PathBuf> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    let path = Path::new(REGRESSIONS).join(format!("{target}-{:016x}.txt", h.finish()));
    std::fs::create_dir_all(REGRESSIONS).ok()?;
    std::fs::write(&path, text).ok()?;
    Some(path)
}

fn rand_seed() -> [u8; 32] {
    // A fresh seed each run explores new inputs; GHLFLOW_FUZZ_SEED repeats one.
    let n: u64 = std::env::var("GHLFLOW_FUZZ_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    eprintln!("fuzz seed: GHLFLOW_FUZZ_SEED={n}");
    let mut seed = [0u8; 32];
    seed[..8].copy_from_slice(&n.to_le_bytes());
    seed
}

#[test]
fn fuzz_recipe_front_end() {
    let mut s = seeds("tests/fixtures/recipes/valid", "yaml");
    s.extend(seeds("tests/fixtures/recipes/mistakes", "yaml"));
    s.extend(seeds("recipes", "yaml"));
    fuzz("recipe", check_recipe, prop_oneof![3 => mutated(s), 1 => tokens()]);
}

#[test]
fn fuzz_config_front_end() {
    let mut s = seeds("tests/fixtures/recipes", "yaml");
    s.push(
        "connections:\n  ghl:\n    app: ghl\n    location_id: ${GHL_LOCATION_ID}\n    auth: { type: private_token, token: '${GHL_TOKEN}' }\n    access: '${ACCESS}'\nstate: .ghlflow/state\nretention: 30d\n"
            .to_owned(),
    );
    fuzz("config", check_config, prop_oneof![3 => mutated(s), 1 => tokens()]);
}

#[test]
fn fuzz_catalog_front_end() {
    let s: Vec<String> = seeds("tests/fixtures/catalog", "yaml");
    fuzz("catalog", check_catalog, prop_oneof![3 => mutated(s), 1 => tokens()]);
}

#[test]
fn fuzz_template_compiler() {
    let s = vec![
        "{{#if trigger.a}}{{lower trigger.a}}{{else}}none{{/if}}".to_owned(),
        "{{#each (split trigger.a)}}{{@index}}:{{this}} {{/each}}".to_owned(),
        "{{date_add trigger.n 2 \"days\" \"%Y-%m-%d\"}}".to_owned(),
        "{{get (find trigger.list \"k\" 1) \"x\"}} {{json trigger.o}}".to_owned(),
    ];
    fuzz("template", check_template, prop_oneof![3 => mutated(s), 1 => tokens()]);
}
