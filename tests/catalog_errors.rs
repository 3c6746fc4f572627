//! Catalog files with one mistake each (named for the mistake) are rejected with every
//! problem placed at `file:line:col`; the rendered text is snapshotted.

use std::path::Path;

use ghlflow::catalog::CatalogSource;

const DIR: &str = "tests/fixtures/catalog";

fn compile_with_fixture(file: &str) -> Result<ghlflow::catalog::Catalog, ghlflow::diagnostic::Diagnostics> {
    let mut source = CatalogSource::default();
    source.add_file("fixture", &Path::new(DIR).join("app.yaml")).unwrap();
    source.add_file("fixture", &Path::new(DIR).join(file)).unwrap();
    source.compile()
}

#[test]
fn the_base_fixture_is_valid() {
    let catalog = compile_with_fixture("valid_base.yaml").unwrap_or_else(|d| panic!("{d}"));
    assert!(catalog.get("fixture.valid_base.get_thing").is_some());
}

#[test]
fn each_mistake_is_reported_with_its_position() {
    let mut names: Vec<String> = std::fs::read_dir(DIR)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "app.yaml" && n != "valid_base.yaml")
        .collect();
    names.sort();
    assert!(names.len() >= 15, "only {} fixtures", names.len());
    for name in names {
        let err = match compile_with_fixture(&name) {
            Ok(_) => panic!("{name}: compiled, but it holds a mistake"),
            Err(e) => e,
        };
        let rendered = err.to_string();
        for d in err.iter() {
            assert!(d.position.line >= 1, "{name}: {d} has no line");
            assert!(d.file.ends_with(&name), "{name}: {d} names another file");
        }
        insta::assert_snapshot!(
            format!("catalog_error__{}", name.trim_end_matches(".yaml").replace('-', "_")),
            rendered
        );
    }
}

#[test]
fn several_mistakes_are_all_reported_at_once() {
    let err = compile_with_fixture("several_mistakes.yaml").unwrap_err();
    assert!(err.len() >= 5, "{err}");
}

#[test]
fn an_override_folder_replaces_an_embedded_operation() {
    let dir = tempfile::tempdir().unwrap();
    let ghl = dir.path().join("ghl");
    std::fs::create_dir(&ghl).unwrap();
    let original = std::fs::read_to_string("operations/ghl/workflows.yaml").unwrap();
    std::fs::write(ghl.join("workflows.yaml"), original.replace("name: List Workflows", "name: All Workflows"))
        .unwrap();
    let catalog = ghlflow::catalog::load(Some(dir.path())).unwrap_or_else(|d| panic!("{d}"));
    assert_eq!(catalog.get("ghl.workflows.list_workflows").unwrap().name, "All Workflows");
    assert_eq!(catalog.operations().filter(|o| o.key.app == "ghl").count(), 126);
}
