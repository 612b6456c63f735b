//! Package file parser: TOML text in, a validated [`PackageDef`] or every diagnostic out. No I/O.
//!
//! The document is read with `toml`'s spanned tree (`DeTable`) and walked by hand so that every
//! problem of a file (unknown fields, wrong types, bad values, duplicates) is reported at once,
//! each with its line and column.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::model::*;

/// One problem found in a package file.
///
/// Displays as `FILE:LINE:COL: field `X`: what was expected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// File name as given to the parser.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub column: usize,
    /// The field, e.g. `name` or `resource[2].address`; empty for TOML syntax errors.
    pub field: String,
    /// What was wrong or expected, lowercase.
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}:{}:{}: toml syntax: {}", self.file, self.line, self.column, self.message)
        } else {
            write!(f, "{}:{}:{}: field `{}`: {}", self.file, self.line, self.column, self.field, self.message)
        }
    }
}

impl std::error::Error for Diagnostic {}

pub(crate) const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(20);
pub(crate) const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(20);
pub(crate) const DEFAULT_MONITOR_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_MONITOR_TIMEOUT: Duration = Duration::from_secs(20);

/// How long the `ip` agent listens for an answer to its duplicate-address ARP probe. A host that
/// holds the address answers from its kernel within a millisecond or so on a LAN; every failover of
/// a dead node waits the whole time (nobody answers), so a long default (RFC 5227's seconds, or the
/// 500 ms this was) would only slow every failover down. Raise it per resource on slow segments.
pub(crate) const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(50);

const PACKAGE_FIELDS: &[&str] = &[
    "name",
    "nodes",
    "failover",
    "failback",
    "auto_run",
    "restart",
    "depends",
    "instances",
    "promotable",
    "needs",
    "resource",
];
/// Most instances of one package (`instances = N`).
pub const MAX_INSTANCES: u32 = 64;
const COMMON_RESOURCE_FIELDS: &[&str] = &["name", "type", "start_timeout", "stop_timeout", "monitor"];
const IP_FIELDS: &[&str] =
    &["address", "interface", "check_duplicate", "probe_timeout", "announce_count", "announce_interval"];
const FILESYSTEM_FIELDS: &[&str] =
    &["device", "mountpoint", "fstype", "options", "fsck", "device_timeout", "kill_holders", "unmount_retries"];
const PROCESS_FIELDS: &[&str] =
    &["command", "environment", "user", "group", "working_directory", "output", "ready", "stop_signal", "kill_after"];
const OCF_FIELDS: &[&str] = &["agent", "params"];
const RESOURCE_TYPES: &[&str] = &["ip", "filesystem", "process", "ocf"];

/// Parse and validate one package file. Returns every problem found, sorted by position.
pub fn parse_package(file_name: &str, text: &str) -> Result<PackageDef, Vec<Diagnostic>> {
    let mut checker = Checker::new(file_name, text);
    let (document, syntax_errors) = DeTable::parse_recoverable(text);
    if !syntax_errors.is_empty() {
        for error in syntax_errors {
            let span = error.span().unwrap_or(0..0);
            let message = error.message().trim().to_lowercase();
            checker.report(span, "", message);
        }
        return Err(checker.finish());
    }
    let root_span = document.span();
    let package = checker.package(document.get_ref(), root_span);
    if checker.diagnostics.is_empty() {
        match package {
            Some(package) => Ok(package),
            None => {
                // Every `None` path reports first; keep the invariant visible rather than panicking.
                checker.report(0..0, "name", "package could not be read");
                Err(checker.finish())
            }
        }
    } else {
        Err(checker.finish())
    }
}

type Table<'i> = DeTable<'i>;
type Value<'i> = Spanned<DeValue<'i>>;

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    diagnostics: Vec<Diagnostic>,
}

/// A table being read: reports unknown keys and missing required ones.
struct Section<'t, 'i> {
    table: &'t Table<'i>,
    span: Range<usize>,
    prefix: String,
}

impl<'t, 'i> Section<'t, 'i> {
    fn field(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.prefix)
        }
    }

    fn get(&self, key: &str) -> Option<&'t Value<'i>> {
        self.table.get(key)
    }
}

fn type_name(value: &DeValue<'_>) -> &'static str {
    match value {
        DeValue::String(_) => "a string",
        DeValue::Integer(_) => "an integer",
        DeValue::Float(_) => "a float",
        DeValue::Boolean(_) => "a boolean",
        DeValue::Datetime(_) => "a datetime",
        DeValue::Array(_) => "an array",
        DeValue::Table(_) => "a table",
    }
}

impl<'a> Checker<'a> {
    fn new(file: &'a str, text: &'a str) -> Self {
        Checker { file, text, diagnostics: Vec::new() }
    }

    fn position(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map(|index| index + 1).unwrap_or(0);
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn report(&mut self, span: Range<usize>, field: impl Into<String>, message: impl Into<String>) {
        let (line, column) = self.position(span.start);
        self.diagnostics.push(Diagnostic {
            file: self.file.to_string(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        });
    }

    fn finish(mut self) -> Vec<Diagnostic> {
        self.diagnostics.sort_by(|a, b| (a.line, a.column, &a.field).cmp(&(b.line, b.column, &b.field)));
        self.diagnostics.dedup();
        self.diagnostics
    }

    fn check_unknown(&mut self, section: &Section<'_, '_>, allowed: &[&str], context: &str) {
        for (key, _) in section.table.iter() {
            if !allowed.contains(&key.get_ref().as_ref()) {
                self.report(
                    key.span(),
                    section.field(key.get_ref()),
                    format!("unknown field{context}, expected one of: {}", allowed.join(", ")),
                );
            }
        }
    }

    fn missing(&mut self, section: &Section<'_, '_>, key: &str, what: &str) {
        self.report(section.span.clone(), section.field(key), format!("missing required field, expected {what}"));
    }

    fn wrong_type(&mut self, section: &Section<'_, '_>, key: &str, value: &Value<'_>, expected: &str) {
        self.report(
            value.span(),
            section.field(key),
            format!("expected {expected}, found {}", type_name(value.get_ref())),
        );
    }

    // ---- typed getters: `None` when absent or wrong (the error is reported) ----

    fn string(&mut self, section: &Section<'_, '_>, key: &str) -> Option<(String, Range<usize>)> {
        let value = section.get(key)?;
        match value.get_ref() {
            DeValue::String(text) => Some((text.to_string(), value.span())),
            _ => {
                self.wrong_type(section, key, value, "a string");
                None
            }
        }
    }

    fn required_string(&mut self, section: &Section<'_, '_>, key: &str, what: &str) -> Option<(String, Range<usize>)> {
        if section.get(key).is_none() {
            self.missing(section, key, what);
            return None;
        }
        self.string(section, key)
    }

    fn boolean(&mut self, section: &Section<'_, '_>, key: &str, default: bool) -> Option<bool> {
        let Some(value) = section.get(key) else {
            return Some(default);
        };
        match value.get_ref() {
            DeValue::Boolean(flag) => Some(*flag),
            _ => {
                self.wrong_type(section, key, value, "a boolean (true or false)");
                None
            }
        }
    }

    fn unsigned(&mut self, section: &Section<'_, '_>, key: &str, default: u32, range: Range<u64>) -> Option<u32> {
        let Some(value) = section.get(key) else {
            return Some(default);
        };
        let expected = format!("an integer from {} to {}", range.start, range.end - 1);
        match value.get_ref() {
            DeValue::Integer(integer) => match u64::from_str_radix(integer.as_str(), integer.radix()) {
                Ok(number) if range.contains(&number) => Some(number as u32),
                _ => {
                    self.report(value.span(), section.field(key), format!("expected {expected}"));
                    None
                }
            },
            _ => {
                self.wrong_type(section, key, value, &expected);
                None
            }
        }
    }

    fn duration(&mut self, section: &Section<'_, '_>, key: &str, default: Duration) -> Option<Duration> {
        let Some(value) = section.get(key) else {
            return Some(default);
        };
        let expected = "a duration like \"500ms\", \"10s\" or \"1m 30s\"";
        match value.get_ref() {
            DeValue::String(text) => match humantime::parse_duration(text) {
                Ok(duration) if duration > Duration::ZERO => Some(duration),
                Ok(_) => {
                    self.report(value.span(), section.field(key), "expected a duration greater than zero");
                    None
                }
                Err(error) => {
                    self.report(
                        value.span(),
                        section.field(key),
                        format!("expected {expected}: {}", error.to_string().to_lowercase()),
                    );
                    None
                }
            },
            _ => {
                self.wrong_type(section, key, value, expected);
                None
            }
        }
    }

    fn string_list(&mut self, section: &Section<'_, '_>, key: &str) -> Option<(Vec<String>, Range<usize>)> {
        let value = section.get(key)?;
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(section, key, value, "an array of strings");
            return None;
        };
        let mut strings = Vec::new();
        let mut ok = true;
        for (index, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::String(text) => strings.push(text.to_string()),
                other => {
                    self.report(
                        item.span(),
                        format!("{}[{}]", section.field(key), index + 1),
                        format!("expected a string, found {}", type_name(other)),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some((strings, value.span()))
    }

    fn sub_table<'t, 'i>(&mut self, section: &Section<'t, 'i>, key: &str) -> Option<Section<'t, 'i>> {
        let value = section.get(key)?;
        match value.get_ref() {
            DeValue::Table(table) => Some(Section { table, span: value.span(), prefix: section.field(key) }),
            _ => {
                self.wrong_type(section, key, value, "a table");
                None
            }
        }
    }

    fn name(&mut self, section: &Section<'_, '_>, key: &str, what: &str) -> Option<(String, Range<usize>)> {
        let (name, span) = self.required_string(section, key, what)?;
        if valid_name(&name) {
            Some((name, span))
        } else {
            self.report(
                span,
                section.field(key),
                format!(
                    "expected {what}: 1 to 64 characters among letters, digits, `-`, `_` and `.`, starting with a letter or digit, found {name:?}"
                ),
            );
            None
        }
    }

    // ---- the package ----

    fn package(&mut self, root: &Table<'_>, root_span: Range<usize>) -> Option<PackageDef> {
        let section = Section { table: root, span: root_span.start..root_span.start, prefix: String::new() };
        self.check_unknown(&section, PACKAGE_FIELDS, "");
        let name = self.name(&section, "name", "a package name");
        let nodes = self.nodes(&section);
        let failover = self.choice(
            &section,
            "failover",
            &[("ordered", Failover::Ordered), ("least-loaded", Failover::LeastLoaded)],
            Failover::Ordered,
        );
        let failback = self.choice(
            &section,
            "failback",
            &[("manual", Failback::Manual), ("auto", Failback::Auto)],
            Failback::Manual,
        );
        let auto_run = self.boolean(&section, "auto_run", true);
        let restart = self.restart(&section);
        let depends = self.depends(&section, name.as_ref().map(|(name, _)| name.as_str()));
        let instances = self.instances(&section);
        let needs = self.needs(&section);
        let resources = self.resources(&section);
        let promotable = self.promotable(&section, instances, resources.as_deref());
        let instances = match (instances, &promotable) {
            // A promotable package without `instances` runs one instance per node, as Pacemaker's
            // promotable clones do.
            (Some(None), Some(Some(_))) => Some(Instances::All),
            (Some(instances), _) => Some(instances.unwrap_or(Instances::Count(1))),
            (None, _) => None,
        };
        Some(PackageDef {
            name: name?.0,
            nodes: nodes?,
            failover: failover?,
            failback: failback?,
            auto_run: auto_run?,
            restart: restart?,
            resources: resources?,
            depends: depends?,
            instances: instances?,
            promotable: promotable?,
            needs: needs?,
        })
    }

    /// `depends = [{ package = "db", where = "same-node" }, ...]`.
    fn depends(&mut self, section: &Section<'_, '_>, own_name: Option<&str>) -> Option<Vec<Dependency>> {
        let Some(value) = section.get("depends") else {
            return Some(Vec::new());
        };
        let expected = "an array of tables like { package = \"db\", where = \"same-node\" }";
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(section, "depends", value, expected);
            return None;
        };
        let mut depends: Vec<(usize, Dependency)> = Vec::new();
        let mut ok = true;
        for (index, item) in items.iter().enumerate() {
            let prefix = format!("depends[{}]", index + 1);
            let DeValue::Table(table) = item.get_ref() else {
                self.report(item.span(), prefix, format!("expected {expected}, found {}", type_name(item.get_ref())));
                ok = false;
                continue;
            };
            let entry = Section { table, span: item.span(), prefix };
            self.check_unknown(&entry, &["package", "where"], "");
            let package = self.name(&entry, "package", "a package name");
            let location = if entry.get("where").is_none() {
                self.missing(&entry, "where", "one of \"same-node\", \"different-node\", \"any-node\"");
                None
            } else {
                self.choice(
                    &entry,
                    "where",
                    &[
                        ("same-node", Location::SameNode),
                        ("different-node", Location::DifferentNode),
                        ("any-node", Location::AnyNode),
                    ],
                    Location::AnyNode,
                )
            };
            let (Some((package, span)), Some(location)) = (package, location) else {
                ok = false;
                continue;
            };
            if Some(package.as_str()) == own_name {
                self.report(span, entry.field("package"), format!("a package cannot depend on itself ({package:?})"));
                ok = false;
            } else if let Some((first, _)) = depends.iter().find(|(_, dependency)| dependency.package == package) {
                self.report(
                    span,
                    entry.field("package"),
                    format!("duplicate dependency on {package:?} (also depends[{}])", first + 1),
                );
                ok = false;
            } else {
                depends.push((index, Dependency { package, location }));
            }
        }
        ok.then(|| depends.into_iter().map(|(_, dependency)| dependency).collect())
    }

    /// `instances = N` or `instances = "all"`; `Some(None)` when absent.
    fn instances(&mut self, section: &Section<'_, '_>) -> Option<Option<Instances>> {
        let Some(value) = section.get("instances") else {
            return Some(None);
        };
        let expected = format!("an integer from 1 to {MAX_INSTANCES} or \"all\"");
        match value.get_ref() {
            DeValue::String(text) if text.as_ref() == "all" => Some(Some(Instances::All)),
            DeValue::Integer(_) => self
                .unsigned(section, "instances", 1, 1..u64::from(MAX_INSTANCES) + 1)
                .map(|n| Some(Instances::Count(n))),
            DeValue::String(text) => {
                self.report(value.span(), "instances", format!("expected {expected}, found {text:?}"));
                None
            }
            other => {
                self.report(value.span(), "instances", format!("expected {expected}, found {}", type_name(other)));
                None
            }
        }
    }

    /// `needs = { slots = 1, memory = "4G" }`.
    fn needs(&mut self, section: &Section<'_, '_>) -> Option<BTreeMap<String, u64>> {
        if section.get("needs").is_none() {
            return Some(BTreeMap::new());
        }
        let table = self.sub_table(section, "needs")?;
        self.quantities(&table)
    }

    /// A table of capacity names and quantities (`needs`, a node's `capacity`).
    fn quantities(&mut self, table: &Section<'_, '_>) -> Option<BTreeMap<String, u64>> {
        let mut quantities = BTreeMap::new();
        let mut ok = true;
        for (name, value) in table.table.iter() {
            let field = table.field(name.get_ref());
            if let Err(message) = crate::quantity::check_capacity_name(name.get_ref()) {
                self.report(name.span(), field.clone(), message);
                ok = false;
            }
            let quantity = match value.get_ref() {
                DeValue::Integer(integer) => u64::from_str_radix(integer.as_str(), integer.radix()).map_err(|_| {
                    format!("expected a quantity like 2 or \"4G\" (a non-negative integer), found {}", integer.as_str())
                }),
                DeValue::String(text) => crate::quantity::parse_quantity(text),
                other => Err(format!("expected a quantity like 2 or \"4G\", found {}", type_name(other))),
            };
            match quantity {
                Ok(quantity) => {
                    quantities.insert(name.get_ref().to_string(), quantity);
                }
                Err(message) => {
                    self.report(value.span(), field, message);
                    ok = false;
                }
            }
        }
        ok.then_some(quantities)
    }

    /// `promotable = { primaries = 1, promote = [...], primary_only = [...] }`, checked against the
    /// resources and the instance count; `Some(None)` when absent.
    fn promotable(
        &mut self,
        section: &Section<'_, '_>,
        instances: Option<Option<Instances>>,
        resources: Option<&[ResourceDef]>,
    ) -> Option<Option<Promotable>> {
        if section.get("promotable").is_none() {
            return Some(None);
        }
        let table = self.sub_table(section, "promotable")?;
        self.check_unknown(&table, &["primaries", "promote", "primary_only"], "");
        let primaries = self.unsigned(&table, "primaries", 1, 1..u64::from(MAX_INSTANCES) + 1);
        let mut lists = Vec::new();
        for key in ["promote", "primary_only"] {
            lists.push(match table.get(key) {
                None => Some(None),
                Some(_) => self.string_list(&table, key).map(|(list, span)| Some((list, span))),
            });
        }
        let primary_only = lists.pop().expect("two lists");
        let promote = lists.pop().expect("two lists");
        let (promote, primary_only, resources) = (promote?, primary_only?, resources?);
        let mut ok = primaries.is_some();
        if let (Some(Some(Instances::Count(count))), Some(primaries)) = (instances, primaries) {
            if primaries > count {
                let span = table.get("primaries").map(|value| value.span()).unwrap_or(table.span.clone());
                self.report(
                    span,
                    table.field("primaries"),
                    format!("expected at most `instances` ({count}) primaries, found {primaries}"),
                );
                ok = false;
            }
        }
        let mut check_names = |checker: &mut Self, list: &Option<(Vec<String>, Range<usize>)>, key: &str| {
            let Some((names, span)) = list else { return };
            for (index, name) in names.iter().enumerate() {
                let field = format!("{}[{}]", table.field(key), index + 1);
                match resources.iter().find(|resource| resource.name == *name) {
                    None => {
                        let known: Vec<&str> = resources.iter().map(|resource| resource.name.as_str()).collect();
                        checker.report(
                            span.clone(),
                            field,
                            format!("no resource named {name:?} in this package (resources: {})", known.join(", ")),
                        );
                        ok = false;
                    }
                    Some(resource) if key == "promote" && !matches!(resource.kind, ResourceKind::Ocf(_)) => {
                        checker.report(
                            span.clone(),
                            field,
                            format!(
                                "resource {name:?} is of type \"{}\": only \"ocf\" resources have promote and demote actions \
                                 (list it in primary_only to start it on the primary only)",
                                resource.kind.type_name()
                            ),
                        );
                        ok = false;
                    }
                    Some(_) => {}
                }
                if names[..index].contains(name) {
                    checker.report(
                        span.clone(),
                        format!("{}[{}]", table.field(key), index + 1),
                        format!("duplicate resource {name:?}"),
                    );
                    ok = false;
                }
            }
        };
        check_names(self, &promote, "promote");
        check_names(self, &primary_only, "primary_only");
        let primary_only: Vec<String> = primary_only.map(|(list, _)| list).unwrap_or_default();
        let promote: Vec<String> = match promote {
            Some((list, _)) => list,
            None => resources
                .iter()
                .filter(|resource| {
                    matches!(resource.kind, ResourceKind::Ocf(_)) && !primary_only.contains(&resource.name)
                })
                .map(|resource| resource.name.clone())
                .collect(),
        };
        if let Some(both) = promote.iter().find(|name| primary_only.contains(name)) {
            self.report(
                table.span.clone(),
                table.field("primary_only"),
                format!("resource {both:?} is listed in both promote and primary_only"),
            );
            ok = false;
        }
        if ok && promote.is_empty() && primary_only.is_empty() {
            self.report(
                table.span.clone(),
                "promotable",
                "expected at least one resource that a promotion changes: an \"ocf\" resource to promote, or `primary_only` resources",
            );
            ok = false;
        }
        if ok && primary_only.len() == resources.len() {
            self.report(
                table.span.clone(),
                table.field("primary_only"),
                "expected at least one resource that runs on every instance, not only on the primary",
            );
            ok = false;
        }
        let primaries = primaries?;
        ok.then_some(Some(Promotable { primaries, promote, primary_only }))
    }

    fn choice<T: Copy>(
        &mut self,
        section: &Section<'_, '_>,
        key: &str,
        choices: &[(&str, T)],
        default: T,
    ) -> Option<T> {
        if section.get(key).is_none() {
            return Some(default);
        }
        let (text, span) = self.string(section, key)?;
        match choices.iter().find(|(word, _)| *word == text) {
            Some((_, value)) => Some(*value),
            None => {
                let words: Vec<String> = choices.iter().map(|(word, _)| format!("\"{word}\"")).collect();
                self.report(span, section.field(key), format!("expected one of {}, found {text:?}", words.join(", ")));
                None
            }
        }
    }

    fn nodes(&mut self, section: &Section<'_, '_>) -> Option<Vec<NodeName>> {
        if section.get("nodes").is_none() {
            return Some(Vec::new());
        }
        let (nodes, span) = self.string_list(section, "nodes")?;
        if nodes.is_empty() {
            self.report(span, "nodes", "expected a non-empty list of node names (omit the field to allow every node)");
            return None;
        }
        let mut ok = true;
        let mut seen = HashMap::new();
        for (index, node) in nodes.iter().enumerate() {
            if !valid_name(node) {
                self.report(
                    span.clone(),
                    format!("nodes[{}]", index + 1),
                    format!("expected a node name, found {node:?}"),
                );
                ok = false;
            } else if let Some(first) = seen.insert(node.as_str(), index) {
                self.report(
                    span.clone(),
                    format!("nodes[{}]", index + 1),
                    format!("duplicate node {node:?} (also nodes[{}])", first + 1),
                );
                ok = false;
            }
        }
        ok.then(|| nodes.iter().map(|node| NodeName::new(node)).collect())
    }

    fn restart(&mut self, section: &Section<'_, '_>) -> Option<Restart> {
        let default = Restart { max: 3, within: Duration::from_secs(600) };
        if section.get("restart").is_none() {
            return Some(default);
        }
        let restart = self.sub_table(section, "restart")?;
        self.check_unknown(&restart, &["max", "within"], "");
        let max = self.unsigned(&restart, "max", default.max, 0..1001);
        let within = self.duration(&restart, "within", default.within);
        Some(Restart { max: max?, within: within? })
    }

    fn resources(&mut self, section: &Section<'_, '_>) -> Option<Vec<ResourceDef>> {
        let Some(value) = section.get("resource") else {
            self.missing(section, "resource", "at least one [[resource]] table");
            return None;
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(section, "resource", value, "an array of tables ([[resource]])");
            return None;
        };
        if items.is_empty() {
            self.report(value.span(), "resource", "expected at least one [[resource]] table");
            return None;
        }
        let mut resources = Vec::new();
        let mut ok = true;
        let mut names: HashMap<String, usize> = HashMap::new();
        for (index, item) in items.iter().enumerate() {
            let prefix = format!("resource[{}]", index + 1);
            let DeValue::Table(table) = item.get_ref() else {
                self.report(item.span(), prefix, format!("expected a table, found {}", type_name(item.get_ref())));
                ok = false;
                continue;
            };
            let resource = Section { table, span: item.span(), prefix };
            if let Some(name_value) = resource.get("name") {
                if let DeValue::String(name) = name_value.get_ref() {
                    if let Some(first) = names.insert(name.to_string(), index) {
                        let (line, _) = self.position(items[first].span().start);
                        self.report(
                            name_value.span(),
                            resource.field("name"),
                            format!(
                                "duplicate resource name {name:?} (first used by resource[{}] at line {line})",
                                first + 1
                            ),
                        );
                        ok = false;
                    }
                }
            }
            match self.resource(&resource) {
                Some(parsed) => resources.push(parsed),
                None => ok = false,
            }
        }
        ok.then_some(resources)
    }

    fn resource(&mut self, resource: &Section<'_, '_>) -> Option<ResourceDef> {
        let name = self.name(resource, "name", "a resource name");
        let resource_type = self.required_string(resource, "type", "a resource type (ip, filesystem, process or ocf)");
        let specific: &[&str] = match resource_type.as_ref().map(|(text, _)| text.as_str()) {
            Some("ip") => IP_FIELDS,
            Some("filesystem") => FILESYSTEM_FIELDS,
            Some("process") => PROCESS_FIELDS,
            Some("ocf") => OCF_FIELDS,
            Some(other) => {
                let span = resource_type.as_ref().map(|(_, span)| span.clone()).unwrap_or_default();
                self.report(
                    span,
                    resource.field("type"),
                    format!("unknown resource type {other:?}, expected one of: {}", RESOURCE_TYPES.join(", ")),
                );
                // Still check the common fields.
                &[]
            }
            None => &[],
        };
        // Unknown fields can only be judged once the type is known.
        if let Some((text, _)) = resource_type.as_ref().filter(|(text, _)| RESOURCE_TYPES.contains(&text.as_str())) {
            let allowed: Vec<&str> = COMMON_RESOURCE_FIELDS.iter().chain(specific.iter()).copied().collect();
            self.check_unknown(resource, &allowed, &format!(" for type \"{text}\""));
        }
        let start_timeout = self.duration(resource, "start_timeout", DEFAULT_START_TIMEOUT);
        let stop_timeout = self.duration(resource, "stop_timeout", DEFAULT_STOP_TIMEOUT);
        let monitor = self.monitor(resource);
        let kind = match resource_type.as_ref().map(|(text, _)| text.as_str()) {
            Some("ip") => self.ip(resource).map(ResourceKind::Ip),
            Some("filesystem") => self.filesystem(resource).map(ResourceKind::Filesystem),
            Some("process") => self.process(resource, stop_timeout).map(ResourceKind::Process),
            Some("ocf") => self.ocf(resource).map(ResourceKind::Ocf),
            _ => None,
        };
        Some(ResourceDef {
            name: name?.0,
            start_timeout: start_timeout?,
            stop_timeout: stop_timeout?,
            monitor: monitor?,
            kind: kind?,
        })
    }

    fn monitor(&mut self, resource: &Section<'_, '_>) -> Option<Monitor> {
        let default = Monitor { interval: DEFAULT_MONITOR_INTERVAL, timeout: DEFAULT_MONITOR_TIMEOUT, depth: 0 };
        if resource.get("monitor").is_none() {
            return Some(default);
        }
        let monitor = self.sub_table(resource, "monitor")?;
        self.check_unknown(&monitor, &["interval", "timeout", "depth"], "");
        let interval = self.duration(&monitor, "interval", default.interval);
        let timeout = self.duration(&monitor, "timeout", default.timeout);
        let depth = self.unsigned(&monitor, "depth", 0, 0..11);
        if let Some(depth_value) = depth {
            if depth_value != 0 && depth_value != 10 {
                let span = monitor.get("depth").map(|value| value.span()).unwrap_or_default();
                self.report(span, monitor.field("depth"), "expected 0 or 10");
                return None;
            }
        }
        Some(Monitor { interval: interval?, timeout: timeout?, depth: depth? })
    }

    fn ip(&mut self, resource: &Section<'_, '_>) -> Option<IpResource> {
        let address = self.required_string(resource, "address", "an address with prefix like \"192.0.2.10/24\"");
        let interface = self.required_string(resource, "interface", "an interface name like \"eth0\"");
        let check_duplicate = self.boolean(resource, "check_duplicate", true);
        let probe_timeout = self.duration(resource, "probe_timeout", DEFAULT_PROBE_TIMEOUT);
        let announce_count = self.unsigned(resource, "announce_count", 5, 0..101);
        let announce_interval = self.duration(resource, "announce_interval", Duration::from_millis(200));

        let (address, prefix_len) = match address {
            Some((text, span)) => match parse_cidr(&text) {
                Ok(parsed) => (Some(parsed.0), Some(parsed.1)),
                Err(message) => {
                    self.report(span, resource.field("address"), message);
                    (None, None)
                }
            },
            None => (None, None),
        };
        let interface = match interface {
            Some((name, span)) => {
                if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', ':']) || name == "." || name == ".." {
                    self.report(
                        span,
                        resource.field("interface"),
                        format!("expected an interface name of 1 to 15 characters without `/`, `:` or spaces, found {name:?}"),
                    );
                    None
                } else {
                    Some(name)
                }
            }
            None => None,
        };
        Some(IpResource {
            address: address?,
            prefix_len: prefix_len?,
            interface: interface?,
            check_duplicate: check_duplicate?,
            probe_timeout: probe_timeout?,
            announce_count: announce_count?,
            announce_interval: announce_interval?,
        })
    }

    fn filesystem(&mut self, resource: &Section<'_, '_>) -> Option<FilesystemResource> {
        let device = self.required_string(resource, "device", "a device path, \"UUID=...\" or \"LABEL=...\"");
        let mountpoint = self.required_string(resource, "mountpoint", "an absolute path");
        let fstype = self.required_string(resource, "fstype", "a filesystem type like \"ext4\"");
        let options = if resource.get("options").is_some() {
            self.string_list(resource, "options").map(|(list, _)| list)
        } else {
            Some(Vec::new())
        };
        let fsck = self.boolean(resource, "fsck", false);
        let device_timeout = self.duration(resource, "device_timeout", Duration::from_secs(10));
        let kill_holders = self.boolean(resource, "kill_holders", true);
        let unmount_retries = self.unsigned(resource, "unmount_retries", 3, 1..101);

        let device = device.and_then(|(text, span)| {
            let spec = if let Some(uuid) = text.strip_prefix("UUID=") {
                DeviceSpec::Uuid(uuid.to_string())
            } else if let Some(label) = text.strip_prefix("LABEL=") {
                DeviceSpec::Label(label.to_string())
            } else {
                DeviceSpec::Path(PathBuf::from(&text))
            };
            let valid = match &spec {
                DeviceSpec::Uuid(uuid) => !uuid.is_empty() && uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-'),
                DeviceSpec::Label(label) => !label.is_empty() && !label.contains('/'),
                DeviceSpec::Path(path) => path.is_absolute(),
            };
            if valid {
                Some(spec)
            } else {
                self.report(
                    span,
                    resource.field("device"),
                    format!("expected an absolute device path, \"UUID=<hex and dashes>\" or \"LABEL=<label>\", found {text:?}"),
                );
                None
            }
        });
        let mountpoint = mountpoint.and_then(|(text, span)| {
            if text.starts_with('/') && text != "/" {
                Some(PathBuf::from(text))
            } else {
                self.report(
                    span,
                    resource.field("mountpoint"),
                    format!("expected an absolute path other than /, found {text:?}"),
                );
                None
            }
        });
        let fstype = fstype.and_then(|(text, span)| {
            if !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_') {
                Some(text)
            } else {
                self.report(
                    span,
                    resource.field("fstype"),
                    format!("expected a filesystem type like \"ext4\", found {text:?}"),
                );
                None
            }
        });
        Some(FilesystemResource {
            device: device?,
            mountpoint: mountpoint?,
            fstype: fstype?,
            options: options?,
            fsck: fsck?,
            device_timeout: device_timeout?,
            kill_holders: kill_holders?,
            unmount_retries: unmount_retries?,
        })
    }

    fn process(&mut self, resource: &Section<'_, '_>, stop_timeout: Option<Duration>) -> Option<ProcessResource> {
        let command = if resource.get("command").is_none() {
            self.missing(resource, "command", "a non-empty array of strings (argv)");
            None
        } else {
            self.string_list(resource, "command").and_then(|(argv, span)| {
                if argv.is_empty() || argv[0].is_empty() {
                    self.report(span, resource.field("command"), "expected a non-empty array of strings (argv)");
                    None
                } else {
                    Some(argv)
                }
            })
        };
        let environment = self.string_map(resource, "environment", false);
        let user = self.string(resource, "user").map(|(text, _)| text);
        let user_ok = resource.get("user").is_none() || user.is_some();
        let group = self.string(resource, "group").map(|(text, _)| text);
        let group_ok = resource.get("group").is_none() || group.is_some();
        let working_directory = match self.string(resource, "working_directory") {
            Some((text, span)) if !text.starts_with('/') => {
                self.report(
                    span,
                    resource.field("working_directory"),
                    format!("expected an absolute path, found {text:?}"),
                );
                None
            }
            Some((text, _)) => Some(Some(PathBuf::from(text))),
            None if resource.get("working_directory").is_some() => None,
            None => Some(None),
        };
        let output = match self.string(resource, "output") {
            Some((text, _)) if text == "journal" => Some(ProcessOutput::Journal),
            Some((text, _)) if text.starts_with('/') => Some(ProcessOutput::File(PathBuf::from(text))),
            Some((text, span)) => {
                self.report(
                    span,
                    resource.field("output"),
                    format!("expected \"journal\" or an absolute file path, found {text:?}"),
                );
                None
            }
            None if resource.get("output").is_some() => None,
            None => Some(ProcessOutput::Journal),
        };
        let ready = self.readiness(resource);
        let stop_signal = match self.string(resource, "stop_signal") {
            Some((text, span)) => {
                let normalized = if text.starts_with("SIG") { text.clone() } else { format!("SIG{text}") };
                if SIGNALS.contains(&normalized.as_str()) {
                    Some(normalized)
                } else {
                    self.report(
                        span,
                        resource.field("stop_signal"),
                        format!("expected a signal name like \"SIGTERM\", found {text:?}"),
                    );
                    None
                }
            }
            None if resource.get("stop_signal").is_some() => None,
            None => Some("SIGTERM".to_string()),
        };
        let kill_after = self.duration(resource, "kill_after", Duration::from_secs(10));
        if let (Some(kill_after), Some(stop_timeout)) = (kill_after, stop_timeout) {
            if kill_after >= stop_timeout {
                let span = resource.get("kill_after").map(|value| value.span()).unwrap_or(resource.span.clone());
                self.report(
                    span,
                    resource.field("kill_after"),
                    format!(
                        "expected a duration shorter than stop_timeout ({}), so the kill can finish in time",
                        humantime::format_duration(stop_timeout)
                    ),
                );
                return None;
            }
        }
        if !user_ok || !group_ok {
            return None;
        }
        Some(ProcessResource {
            command: command?,
            environment: environment?,
            user,
            group,
            working_directory: working_directory?,
            output: output?,
            ready: ready?,
            stop_signal: stop_signal?,
            kill_after: kill_after?,
        })
    }

    fn readiness(&mut self, resource: &Section<'_, '_>) -> Option<Readiness> {
        if resource.get("ready").is_none() {
            return Some(Readiness::AliveFor(Duration::from_millis(500)));
        }
        let ready = self.sub_table(resource, "ready")?;
        let allowed = ["alive_for", "tcp", "command"];
        self.check_unknown(&ready, &allowed, "");
        let present: Vec<&str> = allowed.iter().copied().filter(|key| ready.get(key).is_some()).collect();
        if present.len() != 1 {
            self.report(
                ready.span.clone(),
                ready.prefix.clone(),
                "expected exactly one of: alive_for = \"<duration>\", tcp = \"<address>:<port>\", command = [argv]",
            );
            return None;
        }
        match present[0] {
            "alive_for" => self.duration(&ready, "alive_for", Duration::ZERO).map(Readiness::AliveFor),
            "tcp" => {
                let (text, span) = self.string(&ready, "tcp")?;
                match text.parse::<SocketAddr>() {
                    Ok(address) if address.port() != 0 => Some(Readiness::TcpPort(address)),
                    _ => {
                        self.report(span, ready.field("tcp"), format!("expected an address and port like \"127.0.0.1:8080\" or \"[::1]:8080\", found {text:?}"));
                        None
                    }
                }
            }
            _ => {
                let (argv, span) = self.string_list(&ready, "command")?;
                if argv.is_empty() {
                    self.report(span, ready.field("command"), "expected a non-empty array of strings (argv)");
                    return None;
                }
                Some(Readiness::Command(argv))
            }
        }
    }

    /// A table of string values (integers and booleans accepted and turned into strings when `lenient`).
    fn string_map(&mut self, section: &Section<'_, '_>, key: &str, lenient: bool) -> Option<BTreeMap<String, String>> {
        if section.get(key).is_none() {
            return Some(BTreeMap::new());
        }
        let table = self.sub_table(section, key)?;
        let mut map = BTreeMap::new();
        let mut ok = true;
        for (name, value) in table.table.iter() {
            let field = table.field(name.get_ref());
            let name_ok = !name.get_ref().is_empty()
                && name.get_ref().chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !name.get_ref().starts_with(|c: char| c.is_ascii_digit());
            if !name_ok {
                self.report(
                    name.span(),
                    field.clone(),
                    "expected a name of letters, digits and `_`, not starting with a digit",
                );
                ok = false;
            }
            let text = match value.get_ref() {
                DeValue::String(text) => Some(text.to_string()),
                DeValue::Integer(integer) if lenient => Some(integer.to_string()),
                DeValue::Boolean(flag) if lenient => Some(flag.to_string()),
                other => {
                    let expected = if lenient { "a string, integer or boolean" } else { "a string" };
                    self.report(value.span(), field, format!("expected {expected}, found {}", type_name(other)));
                    None
                }
            };
            match text {
                Some(text) => {
                    map.insert(name.get_ref().to_string(), text);
                }
                None => ok = false,
            }
        }
        ok.then_some(map)
    }

    fn ocf(&mut self, resource: &Section<'_, '_>) -> Option<OcfResource> {
        let agent =
            self.required_string(resource, "agent", "\"provider:type\" (e.g. \"heartbeat:Dummy\") or an absolute path");
        let params = self.string_map(resource, "params", true);
        let agent = agent.and_then(|(text, span)| match parse_ocf_agent(&text) {
            Some(agent) => Some(agent),
            None => {
                self.report(
                    span,
                    resource.field("agent"),
                    format!("expected \"provider:type\" (e.g. \"heartbeat:Dummy\", optionally prefixed with \"ocf:\") or an absolute path, found {text:?}"),
                );
                None
            }
        });
        Some(OcfResource { agent: agent?, params: params? })
    }
}

const SIGNALS: &[&str] = &["SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGKILL", "SIGWINCH"];

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn parse_ocf_agent(text: &str) -> Option<OcfAgentRef> {
    if text.starts_with('/') {
        return Some(OcfAgentRef::Path(PathBuf::from(text)));
    }
    let text = text.strip_prefix("ocf:").unwrap_or(text);
    let (provider, agent_type) = text.split_once(':')?;
    let part_ok = |part: &str| valid_name(part) && !part.contains(':');
    (part_ok(provider) && part_ok(agent_type))
        .then(|| OcfAgentRef::Provider { provider: provider.to_string(), agent_type: agent_type.to_string() })
}

fn parse_cidr(text: &str) -> Result<(IpAddr, u8), String> {
    let expected = "expected an address with prefix like \"192.0.2.10/24\" or \"2001:db8::10/64\"";
    let Some((address, prefix)) = text.split_once('/') else {
        return Err(format!("{expected}, found {text:?} (missing /prefix)"));
    };
    let address: IpAddr = address.parse().map_err(|_| format!("{expected}, found {text:?}"))?;
    let max_prefix = if address.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix
        .parse()
        .ok()
        .filter(|prefix| *prefix <= max_prefix)
        .ok_or_else(|| format!("{expected}, found {text:?} (prefix must be 0 to {max_prefix})"))?;
    let usable = match address {
        IpAddr::V4(v4) => !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.is_loopback()),
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast() || v6.is_loopback()),
    };
    if !usable {
        return Err(format!("expected a unicast address, found {text:?}"));
    }
    Ok((address, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "name = \"web\"\n";
    const VIP: &str =
        "[[resource]]\nname = \"vip\"\ntype = \"ip\"\naddress = \"192.0.2.10/24\"\ninterface = \"eth0\"\n";

    fn errors(text: &str) -> Vec<String> {
        match parse_package("p.toml", text) {
            Ok(package) => panic!("expected errors, parsed {package:?}"),
            Err(diagnostics) => diagnostics.iter().map(ToString::to_string).collect(),
        }
    }

    /// The validation error table: each bad input and the exact message it produces.
    #[test]
    fn each_bad_input_gives_its_message() {
        let table: &[(&str, String, &[&str])] = &[
            (
                "unknown top-level field",
                format!("{HEADER}colour = \"red\"\n{VIP}"),
                &["p.toml:2:1: field `colour`: unknown field, expected one of: name, nodes, failover, failback, auto_run, restart, depends, instances, promotable, needs, resource"],
            ),
            (
                "unknown resource field names the type",
                format!("{HEADER}{VIP}mountpoint = \"/srv\"\n"),
                &["p.toml:7:1: field `resource[1].mountpoint`: unknown field for type \"ip\", expected one of: name, type, start_timeout, stop_timeout, monitor, address, interface, check_duplicate, probe_timeout, announce_count, announce_interval"],
            ),
            (
                "wrong type",
                format!("name = 42\n{VIP}"),
                &["p.toml:1:8: field `name`: expected a string, found an integer"],
            ),
            (
                "bad boolean",
                format!("{HEADER}auto_run = \"yes\"\n{VIP}"),
                &["p.toml:2:12: field `auto_run`: expected a boolean (true or false), found a string"],
            ),
            (
                "bad address",
                format!("{HEADER}{}", VIP.replace("192.0.2.10/24", "192.0.2.300/24")),
                &["p.toml:5:11: field `resource[1].address`: expected an address with prefix like \"192.0.2.10/24\" or \"2001:db8::10/64\", found \"192.0.2.300/24\""],
            ),
            (
                "address without prefix",
                format!("{HEADER}{}", VIP.replace("192.0.2.10/24", "192.0.2.10")),
                &["p.toml:5:11: field `resource[1].address`: expected an address with prefix like \"192.0.2.10/24\" or \"2001:db8::10/64\", found \"192.0.2.10\" (missing /prefix)"],
            ),
            (
                "prefix too long",
                format!("{HEADER}{}", VIP.replace("192.0.2.10/24", "2001:db8::1/129")),
                &["p.toml:5:11: field `resource[1].address`: expected an address with prefix like \"192.0.2.10/24\" or \"2001:db8::10/64\", found \"2001:db8::1/129\" (prefix must be 0 to 128)"],
            ),
            (
                "multicast address",
                format!("{HEADER}{}", VIP.replace("192.0.2.10/24", "224.0.0.1/4")),
                &["p.toml:5:11: field `resource[1].address`: expected a unicast address, found \"224.0.0.1/4\""],
            ),
            (
                "duplicate resource names",
                format!("{HEADER}{VIP}{VIP}"),
                &["p.toml:8:8: field `resource[2].name`: duplicate resource name \"vip\" (first used by resource[1] at line 2)"],
            ),
            (
                "unknown resource type",
                format!("{HEADER}[[resource]]\nname = \"x\"\ntype = \"nfs\"\n"),
                &["p.toml:4:8: field `resource[1].type`: unknown resource type \"nfs\", expected one of: ip, filesystem, process, ocf"],
            ),
            (
                "bad duration",
                format!("{HEADER}restart = {{ max = 3, within = \"ten minutes\" }}\n{VIP}"),
                &["p.toml:2:31: field `restart.within`: expected a duration like \"500ms\", \"10s\" or \"1m 30s\": expected number at 0"],
            ),
            (
                "zero duration",
                format!("{HEADER}{VIP}start_timeout = \"0s\"\n"),
                &["p.toml:7:17: field `resource[1].start_timeout`: expected a duration greater than zero"],
            ),
            (
                "empty node list",
                format!("{HEADER}nodes = []\n{VIP}"),
                &["p.toml:2:9: field `nodes`: expected a non-empty list of node names (omit the field to allow every node)"],
            ),
            (
                "duplicate node",
                format!("{HEADER}nodes = [\"n1\", \"n1\"]\n{VIP}"),
                &["p.toml:2:9: field `nodes[2]`: duplicate node \"n1\" (also nodes[1])"],
            ),
            (
                "bad failover",
                format!("{HEADER}failover = \"random\"\n{VIP}"),
                &["p.toml:2:12: field `failover`: expected one of \"ordered\", \"least-loaded\", found \"random\""],
            ),
            (
                "no resources",
                HEADER.to_string(),
                &["p.toml:1:1: field `resource`: missing required field, expected at least one [[resource]] table"],
            ),
            (
                "missing required resource fields",
                format!("{HEADER}[[resource]]\nname = \"vip\"\ntype = \"ip\"\n"),
                &[
                    "p.toml:2:1: field `resource[1].address`: missing required field, expected an address with prefix like \"192.0.2.10/24\"",
                    "p.toml:2:1: field `resource[1].interface`: missing required field, expected an interface name like \"eth0\"",
                ],
            ),
            (
                "bad package name",
                format!("name = \"my web\"\n{VIP}"),
                &["p.toml:1:8: field `name`: expected a package name: 1 to 64 characters among letters, digits, `-`, `_` and `.`, starting with a letter or digit, found \"my web\""],
            ),
            (
                "relative mountpoint and bad device",
                format!("{HEADER}[[resource]]\nname = \"data\"\ntype = \"filesystem\"\ndevice = \"sdb1\"\nmountpoint = \"srv\"\nfstype = \"ext4\"\n"),
                &[
                    "p.toml:5:10: field `resource[1].device`: expected an absolute device path, \"UUID=<hex and dashes>\" or \"LABEL=<label>\", found \"sdb1\"",
                    "p.toml:6:14: field `resource[1].mountpoint`: expected an absolute path other than /, found \"srv\"",
                ],
            ),
            (
                "empty command",
                format!("{HEADER}[[resource]]\nname = \"server\"\ntype = \"process\"\ncommand = []\n"),
                &["p.toml:5:11: field `resource[1].command`: expected a non-empty array of strings (argv)"],
            ),
            (
                "kill_after not shorter than stop_timeout",
                format!("{HEADER}[[resource]]\nname = \"server\"\ntype = \"process\"\ncommand = [\"/bin/true\"]\nkill_after = \"30s\"\n"),
                &["p.toml:6:14: field `resource[1].kill_after`: expected a duration shorter than stop_timeout (20s), so the kill can finish in time"],
            ),
            (
                "two readiness checks",
                format!("{HEADER}[[resource]]\nname = \"server\"\ntype = \"process\"\ncommand = [\"/bin/true\"]\nready = {{ alive_for = \"1s\", tcp = \"127.0.0.1:80\" }}\n"),
                &["p.toml:6:9: field `resource[1].ready`: expected exactly one of: alive_for = \"<duration>\", tcp = \"<address>:<port>\", command = [argv]"],
            ),
            (
                "bad ocf agent",
                format!("{HEADER}[[resource]]\nname = \"c\"\ntype = \"ocf\"\nagent = \"Dummy\"\n"),
                &["p.toml:5:9: field `resource[1].agent`: expected \"provider:type\" (e.g. \"heartbeat:Dummy\", optionally prefixed with \"ocf:\") or an absolute path, found \"Dummy\""],
            ),
            (
                "bad monitor depth",
                format!("{HEADER}{VIP}monitor = {{ depth = 5 }}\n"),
                &["p.toml:7:21: field `resource[1].monitor.depth`: expected 0 or 10"],
            ),
            (
                "dependency without where",
                format!("{HEADER}depends = [{{ package = \"db\" }}]\n{VIP}"),
                &["p.toml:2:12: field `depends[1].where`: missing required field, expected one of \"same-node\", \"different-node\", \"any-node\""],
            ),
            (
                "unknown dependency location",
                format!("{HEADER}depends = [{{ package = \"db\", where = \"same-rack\" }}]\n{VIP}"),
                &["p.toml:2:38: field `depends[1].where`: expected one of \"same-node\", \"different-node\", \"any-node\", found \"same-rack\""],
            ),
            (
                "dependency on itself and twice on one package",
                format!("{HEADER}depends = [{{ package = \"web\", where = \"any-node\" }}, {{ package = \"db\", where = \"any-node\" }}, {{ package = \"db\", where = \"same-node\" }}]\n{VIP}"),
                &[
                    "p.toml:2:24: field `depends[1].package`: a package cannot depend on itself (\"web\")",
                    "p.toml:2:105: field `depends[3].package`: duplicate dependency on \"db\" (also depends[2])",
                ],
            ),
            (
                "dependency not a table",
                format!("{HEADER}depends = [\"db\"]\n{VIP}"),
                &["p.toml:2:12: field `depends[1]`: expected an array of tables like { package = \"db\", where = \"same-node\" }, found a string"],
            ),
            (
                "bad instances",
                format!("{HEADER}instances = \"every\"\n{VIP}"),
                &["p.toml:2:13: field `instances`: expected an integer from 1 to 64 or \"all\", found \"every\""],
            ),
            (
                "too many instances",
                format!("{HEADER}instances = 65\n{VIP}"),
                &["p.toml:2:13: field `instances`: expected an integer from 1 to 64"],
            ),
            (
                "bad needs",
                format!("{HEADER}needs = {{ Memory = \"4X\", slots = 1.5 }}\n{VIP}"),
                &[
                    "p.toml:2:11: field `needs.Memory`: expected a capacity name of 1 to 32 lowercase letters, digits, `_` or `-`, starting with a letter, found \"Memory\"",
                    "p.toml:2:20: field `needs.Memory`: expected a quantity like 2 or \"4G\" (K, M, G, T: powers of 1024), found \"4X\"",
                    "p.toml:2:34: field `needs.slots`: expected a quantity like 2 or \"4G\", found a float",
                ],
            ),
            (
                "more primaries than instances",
                format!("{HEADER}instances = 2\npromotable = {{ primaries = 3, primary_only = [\"vip\"] }}\n{VIP}[[resource]]\nname = \"db\"\ntype = \"ocf\"\nagent = \"heartbeat:Stateful\"\n"),
                &["p.toml:3:28: field `promotable.primaries`: expected at most `instances` (2) primaries, found 3"],
            ),
            (
                "promote names a resource that is not ocf, and an unknown one",
                format!("{HEADER}promotable = {{ promote = [\"vip\", \"nope\"] }}\n{VIP}"),
                &[
                    "p.toml:2:26: field `promotable.promote[1]`: resource \"vip\" is of type \"ip\": only \"ocf\" resources have promote and demote actions (list it in primary_only to start it on the primary only)",
                    "p.toml:2:26: field `promotable.promote[2]`: no resource named \"nope\" in this package (resources: vip)",
                ],
            ),
            (
                "a promotion that changes nothing",
                format!("{HEADER}promotable = {{ primaries = 1 }}\n{VIP}"),
                &["p.toml:2:14: field `promotable`: expected at least one resource that a promotion changes: an \"ocf\" resource to promote, or `primary_only` resources"],
            ),
            (
                "every resource primary only",
                format!("{HEADER}promotable = {{ primary_only = [\"vip\"] }}\n{VIP}"),
                &["p.toml:2:14: field `promotable.primary_only`: expected at least one resource that runs on every instance, not only on the primary"],
            ),
            (
                "toml syntax error",
                "name = \"web\nnodes = 3\n".to_string(),
                &["p.toml:1:12: toml syntax: invalid basic string, expected `\"`"],
            ),
        ];
        let mut mismatches = Vec::new();
        for (case, input, expected) in table {
            let actual = errors(input);
            if actual != *expected {
                mismatches.push(format!("case {case}:\n  expected {expected:#?}\n  actual   {actual:#?}"));
            }
        }
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }

    #[test]
    fn all_errors_of_a_file_are_reported_at_once() {
        let text = "name = 1\nnodes = []\ncolour = 2\n[[resource]]\nname = \"a\"\ntype = \"ip\"\naddress = \"x\"\ninterface = \"eth0\"\n[[resource]]\nname = \"a\"\ntype = \"bogus\"\n";
        let found = errors(text);
        assert_eq!(found.len(), 6, "{found:#?}");
        assert!(found[0].starts_with("p.toml:1:8: field `name`"));
        assert!(found[1].starts_with("p.toml:2:9: field `nodes`"));
        assert!(found[2].starts_with("p.toml:3:1: field `colour`"));
        assert!(found[3].starts_with("p.toml:7:11: field `resource[1].address`"));
        assert!(found[4].starts_with("p.toml:10:8: field `resource[2].name`: duplicate"));
        assert!(found[5].starts_with("p.toml:11:8: field `resource[2].type`: unknown resource type"));
    }

    #[test]
    fn defaults_are_filled_in() {
        let package = parse_package("p.toml", &format!("{HEADER}{VIP}")).expect("valid");
        assert_eq!(package.nodes, Vec::<String>::new());
        assert_eq!(package.failover, Failover::Ordered);
        assert_eq!(package.failback, Failback::Manual);
        assert!(package.auto_run);
        assert_eq!(package.restart, Restart { max: 3, within: Duration::from_secs(600) });
        let resource = &package.resources[0];
        assert_eq!(resource.start_timeout, DEFAULT_START_TIMEOUT);
        assert_eq!(resource.monitor.interval, DEFAULT_MONITOR_INTERVAL);
        let ResourceKind::Ip(ip) = &resource.kind else { panic!("ip expected") };
        assert_eq!((ip.announce_count, ip.announce_interval), (5, Duration::from_millis(200)));
        assert!(ip.check_duplicate);
    }

    #[test]
    fn relations_are_read_with_their_defaults() {
        let text = format!(
            "{HEADER}depends = [{{ package = \"db\", where = \"same-node\" }}]\nneeds = {{ slots = 2, memory = \"512M\" }}\n\
             promotable = {{ primary_only = [\"vip\"] }}\n{VIP}[[resource]]\nname = \"data\"\ntype = \"ocf\"\n\
             agent = \"heartbeat:Stateful\"\n"
        );
        let package = parse_package("p.toml", &text).expect("valid");
        assert_eq!(package.depends, [Dependency { package: "db".into(), location: Location::SameNode }]);
        assert_eq!(package.needs, BTreeMap::from([("memory".into(), 512 << 20), ("slots".into(), 2)]));
        // A promotable package runs on every node by default; its ocf resources are promoted.
        assert_eq!(package.instances, Instances::All);
        let promotable = package.promotable.expect("promotable");
        assert_eq!(
            (promotable.primaries, promotable.promote, promotable.primary_only),
            (1, vec!["data".into()], vec!["vip".into()])
        );
        let plain = parse_package("p.toml", &format!("{HEADER}{VIP}")).expect("valid");
        assert_eq!(
            (plain.instances, plain.promotable.clone(), plain.depends.len(), plain.needs.len()),
            (Instances::Count(1), None, 0, 0)
        );
        assert!(!plain.multi_instance());
        let three = parse_package("p.toml", &format!("{HEADER}instances = 3\n{VIP}")).expect("valid");
        assert_eq!(three.instances, Instances::Count(3));
    }

    #[test]
    fn package_survives_a_serde_round_trip() {
        let package = parse_package("p.toml", &format!("{HEADER}{VIP}")).expect("valid");
        let text = toml::to_string(&package).expect("serialize");
        let back: PackageDef = toml::from_str(&text).expect("deserialize");
        assert_eq!(back, package);
    }
}
