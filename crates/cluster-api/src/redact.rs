//! Which names hold secrets: `clusterctl report` and the daemon's diagnostics leave their values out.

/// Placeholder written instead of a secret value.
pub const REDACTED: &str = "<redacted>";

/// Whether a parameter, environment variable or configuration key named `name` may hold a secret
/// (a fence agent's `password`, an OCF agent's `api_token`, a process' `DB_PASSWD`, a `key` file).
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    const PARTS: &[&str] =
        &["pass", "secret", "token", "credential", "private", "apikey", "api_key", "auth", "community", "cookie"];
    PARTS.iter().any(|part| name.contains(part)) || name == "key" || name.ends_with("_key") || name.ends_with("-key")
}

/// `name=value` with the value replaced when the name is a secret's.
pub fn redact_assignment(assignment: &str) -> String {
    match assignment.split_once('=') {
        Some((name, _)) if is_secret_name(name.trim()) => format!("{name}={REDACTED}"),
        _ => assignment.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_recognized_by_name() {
        for secret in ["password", "passwd", "PASSWORD", "api_token", "ssh_key", "key", "snmp_community", "AuthKey"] {
            assert!(is_secret_name(secret), "{secret}");
        }
        for plain in ["ip", "plug", "username", "keyspace", "interface", "monkey_business"] {
            assert!(!is_secret_name(plain), "{plain}");
        }
        assert_eq!(redact_assignment("password=hunter2"), "password=<redacted>");
        assert_eq!(redact_assignment("ip=192.0.2.1"), "ip=192.0.2.1");
    }
}
