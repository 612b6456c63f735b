//! Reading package files from paths (files or directories of `*.toml`): the only I/O of this crate.

use std::path::{Path, PathBuf};

use crate::model::PackageDef;
use crate::parse::{parse_package, Diagnostic};

/// A path that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The file or directory could not be read.
    #[error("failed to read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A directory held no `*.toml` file.
    #[error("no *.toml package file in directory {path}")]
    EmptyDirectory {
        /// The directory.
        path: PathBuf,
    },
}

/// What became of one file.
#[derive(Debug)]
pub enum FileResult {
    /// The file is a valid package.
    Valid(Box<PackageDef>),
    /// The file has errors: every one of them.
    Invalid(Vec<Diagnostic>),
    /// The path could not be read.
    Unreadable(PathError),
}

/// The result for one file (or one unreadable path).
#[derive(Debug)]
pub struct FileReport {
    /// The file (or the directory, for an empty one).
    pub path: PathBuf,
    /// Its result.
    pub result: FileResult,
}

impl FileReport {
    /// Lines to print: `PATH: ok`, each diagnostic, or the read error.
    pub fn lines(&self) -> Vec<String> {
        match &self.result {
            FileResult::Valid(package) => vec![format!(
                "{}: ok (package {:?}, {} resources)",
                self.path.display(),
                package.name,
                package.resources.len()
            )],
            FileResult::Invalid(diagnostics) => diagnostics.iter().map(ToString::to_string).collect(),
            FileResult::Unreadable(error) => vec![error.to_string()],
        }
    }
}

/// Validate files and directories (each directory contributes its `*.toml` files, sorted, not recursive).
/// Also reports a package name defined by two files as an error of the second file.
pub fn validate_paths<P: AsRef<Path>>(paths: &[P]) -> Vec<FileReport> {
    let mut reports = Vec::new();
    for path in paths {
        let path = path.as_ref();
        if path.is_dir() {
            match toml_files(path) {
                Ok(files) if files.is_empty() => reports.push(FileReport {
                    path: path.to_path_buf(),
                    result: FileResult::Unreadable(PathError::EmptyDirectory { path: path.to_path_buf() }),
                }),
                Ok(files) => reports.extend(files.iter().map(|file| validate_file(file))),
                Err(source) => reports.push(FileReport {
                    path: path.to_path_buf(),
                    result: FileResult::Unreadable(PathError::Read { path: path.to_path_buf(), source }),
                }),
            }
        } else {
            reports.push(validate_file(path));
        }
    }
    flag_duplicate_names(&mut reports);
    reports
}

/// What the valid files of `reports` get wrong taken together (see [`crate::validate_set`]): a
/// dependency on a package no file defines, a cycle, a contradiction.
pub fn set_errors(reports: &[FileReport]) -> Vec<crate::SetError> {
    crate::validate_set(reports.iter().filter_map(|report| match &report.result {
        FileResult::Valid(package) => Some(package.as_ref()),
        _ => None,
    }))
}

/// True when every report is valid.
pub fn all_valid(reports: &[FileReport]) -> bool {
    reports.iter().all(|report| matches!(report.result, FileResult::Valid(_)))
}

fn toml_files(directory: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(directory)? {
        let path = entry?.path();
        if path.is_file() && path.extension().is_some_and(|extension| extension == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn validate_file(path: &Path) -> FileReport {
    let result = match std::fs::read_to_string(path) {
        Ok(text) => match parse_package(&path.display().to_string(), &text) {
            Ok(package) => FileResult::Valid(Box::new(package)),
            Err(diagnostics) => FileResult::Invalid(diagnostics),
        },
        Err(source) => FileResult::Unreadable(PathError::Read { path: path.to_path_buf(), source }),
    };
    FileReport { path: path.to_path_buf(), result }
}

fn flag_duplicate_names(reports: &mut [FileReport]) {
    let mut seen: Vec<(String, PathBuf)> = Vec::new();
    for report in reports.iter_mut() {
        let FileResult::Valid(package) = &report.result else {
            continue;
        };
        if let Some((_, first)) = seen.iter().find(|(name, _)| *name == package.name) {
            let diagnostic = Diagnostic {
                file: report.path.display().to_string(),
                line: 1,
                column: 1,
                field: "name".to_string(),
                message: format!("duplicate package name {:?} (also defined in {})", package.name, first.display()),
            };
            report.result = FileResult::Invalid(vec![diagnostic]);
        } else {
            seen.push((package.name.clone(), report.path.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "name = \"web\"\n[[resource]]\nname = \"vip\"\ntype = \"ip\"\naddress = \"192.0.2.10/24\"\ninterface = \"eth0\"\n";

    #[test]
    fn validate_paths_reads_files_and_directories() {
        let directory = tempfile::tempdir().expect("tempdir");
        std::fs::write(directory.path().join("a-web.toml"), VALID).expect("write");
        std::fs::write(directory.path().join("b-bad.toml"), "name = 3\n").expect("write");
        std::fs::write(directory.path().join("notes.txt"), "not a package").expect("write");
        let single = directory.path().join("single.conf");
        std::fs::write(&single, VALID.replace("web", "other")).expect("write");
        let missing = directory.path().join("missing.toml");

        let reports = validate_paths(&[directory.path().to_path_buf(), single.clone(), missing.clone()]);
        assert_eq!(reports.len(), 4, "{reports:#?}");
        assert!(matches!(reports[0].result, FileResult::Valid(_)));
        let FileResult::Invalid(diagnostics) = &reports[1].result else { panic!("b-bad must be invalid") };
        let lines: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
        let bad = directory.path().join("b-bad.toml").display().to_string();
        assert_eq!(
            lines,
            vec![
                format!(
                    "{bad}:1:1: field `resource`: missing required field, expected at least one [[resource]] table"
                ),
                format!("{bad}:1:8: field `name`: expected a string, found an integer"),
            ]
        );
        assert!(matches!(reports[2].result, FileResult::Valid(_)));
        assert_eq!(reports[2].path, single);
        assert!(matches!(reports[3].result, FileResult::Unreadable(PathError::Read { .. })));
        assert!(!all_valid(&reports));
        assert!(all_valid(&reports[..1]));
        assert!(reports[0].lines()[0].ends_with(": ok (package \"web\", 1 resources)"));
    }

    #[test]
    fn validate_paths_flags_a_package_name_used_twice() {
        let directory = tempfile::tempdir().expect("tempdir");
        std::fs::write(directory.path().join("one.toml"), VALID).expect("write");
        std::fs::write(directory.path().join("two.toml"), VALID).expect("write");
        let reports = validate_paths(&[directory.path()]);
        assert!(matches!(reports[0].result, FileResult::Valid(_)));
        let FileResult::Invalid(diagnostics) = &reports[1].result else { panic!("two.toml must be invalid") };
        assert!(diagnostics[0].message.starts_with("duplicate package name \"web\""), "{diagnostics:?}");
    }

    #[test]
    fn validate_paths_reports_an_empty_directory() {
        let directory = tempfile::tempdir().expect("tempdir");
        let reports = validate_paths(&[directory.path()]);
        assert!(matches!(reports[0].result, FileResult::Unreadable(PathError::EmptyDirectory { .. })));
    }

    #[test]
    fn a_directory_is_checked_as_a_set() {
        let directory = tempfile::tempdir().expect("tempdir");
        let app =
            VALID.replace("name = \"web\"", "name = \"app\"\ndepends = [{ package = \"db\", where = \"same-node\" }]");
        std::fs::write(directory.path().join("app.toml"), &app).expect("write");
        std::fs::write(directory.path().join("web.toml"), VALID).expect("write");
        let reports = validate_paths(&[directory.path()]);
        assert!(all_valid(&reports));
        let errors: Vec<String> = set_errors(&reports).iter().map(ToString::to_string).collect();
        assert_eq!(errors, ["package `app` depends on `db`, which is not defined"]);
        let db = VALID.replace("name = \"web\"", "name = \"db\"");
        std::fs::write(directory.path().join("db.toml"), db).expect("write");
        assert!(set_errors(&validate_paths(&[directory.path()])).is_empty());
    }
}
