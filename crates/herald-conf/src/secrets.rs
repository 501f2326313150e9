//! Options whose values are secrets: shown masked wherever a running herald prints configuration (`config show`,
//! `config eval`, on the command line and through the console); `herald config show --secrets` is the one way to
//! see them.

use crate::options::OptId;
use crate::value::Value;

/// The secret options, by name.
pub const SECRET_OPTIONS: &[&str] = &[
    "api_key",
    "api_keys",
    "control_password",
    "dashboard_admin_keys",
    "outcome_webhook_secret",
    "spool_nats_token",
    "tls_pkcs12_password",
];

/// What a secret value is shown as (quoted, so the output stays a valid configuration).
pub const MASK: &str = "\"********\"";

/// Whether the option's value is a secret.
pub fn is_secret(id: OptId) -> bool {
    SECRET_OPTIONS.contains(&id.def().name)
}

/// Whether the option named `name` (any case) is a secret.
pub fn is_secret_name(name: &str) -> bool {
    SECRET_OPTIONS.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// A value as `config eval`/`config show OPTION` print it: masked when `name` is a secret option and `mask` is set,
/// keeping the shape of a list.
pub fn render_option_value(name: &str, value: &Value, mask: bool) -> String {
    if !mask || !is_secret_name(name) {
        return value.render();
    }
    match value {
        Value::List(items) => {
            let mut s = String::from("(\n");
            for _ in items {
                s.push_str("  ");
                s.push_str(MASK);
                s.push('\n');
            }
            s.push(')');
            s
        }
        _ => MASK.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_is_a_declared_option() {
        for name in SECRET_OPTIONS {
            let id =
                crate::options::lookup(name).unwrap_or_else(|| panic!("{name} is not an option"));
            assert!(is_secret(id));
        }
        assert!(is_secret_name("API_KEY"));
        assert!(!is_secret_name("apn_key"));
    }

    /// An option named like a secret (a password, a secret, a token value) is masked; a new one cannot be added
    /// without being listed.
    #[test]
    fn every_option_named_like_a_secret_is_masked() {
        for def in crate::OPTIONS {
            let name = def.name;
            if name.ends_with("password") || name.ends_with("secret") || name.ends_with("_token") {
                assert!(is_secret_name(name), "{name} is not masked");
            }
        }
        assert_eq!(
            render_option_value("spool_nats_token", &Value::Str("tok".into()), true),
            MASK
        );
    }
}
