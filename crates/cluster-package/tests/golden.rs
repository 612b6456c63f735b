//! Golden tests of the parser: every `tests/golden/*.toml` and every `packages.d/*.toml` example is parsed and
//! its result (the model, or every diagnostic) compared with the `.expected` file beside it.
//! Re-bless with `UPDATE_EXPECT=1 cargo test -p cluster-package --test golden`.

use std::path::{Path, PathBuf};

fn render(file_name: &str, text: &str) -> String {
    match cluster_package::parse_package(file_name, text) {
        Ok(package) => format!("{package:#?}\n"),
        Err(diagnostics) => diagnostics.iter().map(|diagnostic| format!("{diagnostic}\n")).collect(),
    }
}

fn check_directory(directory: &Path, expected_directory: &Path) -> usize {
    let mut inputs: Vec<PathBuf> = std::fs::read_dir(directory)
        .expect("read golden directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "toml"))
        .collect();
    inputs.sort();
    let bless = std::env::var_os("UPDATE_EXPECT").is_some();
    let mut failures = Vec::new();
    for input in &inputs {
        let file_name = input.file_name().expect("file name").to_string_lossy().to_string();
        let text = std::fs::read_to_string(input).expect("read input");
        let actual = render(&file_name, &text);
        let expected_path = expected_directory.join(format!("{file_name}.expected"));
        if bless {
            std::fs::write(&expected_path, &actual).expect("write expected");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(format!("{}:\n--- expected\n{expected}\n+++ actual\n{actual}", expected_path.display()));
        }
    }
    assert!(failures.is_empty(), "golden mismatches (re-bless with UPDATE_EXPECT=1):\n{}", failures.join("\n"));
    inputs.len()
}

#[test]
fn golden_cases() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let count = check_directory(&golden, &golden);
    assert!(count >= 4, "expected golden inputs in {}", golden.display());
}

#[test]
fn shipped_examples_are_valid_and_match_their_golden_output() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packages.d");
    let reports = cluster_package::validate_paths(&[&examples]);
    let lines: Vec<String> = reports.iter().flat_map(|report| report.lines()).collect();
    assert!(cluster_package::all_valid(&reports), "{lines:#?}");
    let set_errors: Vec<String> = cluster_package::set_errors(&reports).iter().map(ToString::to_string).collect();
    assert!(set_errors.is_empty(), "the examples do not hold together: {set_errors:#?}");
    assert_eq!(reports.len(), 7, "{lines:#?}");
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/examples");
    std::fs::create_dir_all(&golden).expect("create golden/examples");
    check_directory(&examples, &golden);
}
