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

/// Options holding URLs whose user information (`user:password@`) and query may carry secrets: shown with those
/// parts masked.
pub const URL_OPTIONS: &[&str] = &["spool_nats_url", "outcome_webhook_url"];

/// Whether the option named `name` (any case) holds URLs whose credentials are masked.
pub fn is_url_option_name(name: &str) -> bool {
    URL_OPTIONS.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// `text` (one URL, or several separated by commas or spaces) with the password of each URL's user information and
/// each query masked (`nats://herald:********@host:4222`, `https://hooks.example/h?********`); the rest kept, so
/// that the servers stay recognisable. `None` when there is nothing to mask.
pub fn mask_url_credentials(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut masked = false;
    let mut rest = text;
    while !rest.is_empty() {
        let end = rest.find([',', ' ']).unwrap_or(rest.len());
        let (url, tail) = rest.split_at(end);
        let (scheme, after) = match url.find("://") {
            Some(i) => url.split_at(i + 3),
            None => ("", url),
        };
        out.push_str(scheme);
        let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
        let (authority, path) = after.split_at(authority_end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                masked = true;
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push_str(":********@");
                    }
                    None => out.push_str("********@"),
                }
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        match path.split_once('?') {
            Some((before, _)) => {
                masked = true;
                out.push_str(before);
                out.push_str("?********");
            }
            None => out.push_str(path),
        }
        let sep = tail.len() - tail.trim_start_matches([',', ' ']).len();
        out.push_str(&tail[..sep]);
        rest = &tail[sep..];
    }
    masked.then_some(out)
}

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
    if mask
        && is_url_option_name(name)
        && let Value::Str(text) = value
        && let Some(masked) = mask_url_credentials(text)
    {
        return Value::Str(masked).render();
    }
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
    fn credentials_in_urls_are_masked_and_the_servers_kept() {
        assert_eq!(
            mask_url_credentials(
                "nats://herald:s3cret@10.0.0.1:4222, nats://10.0.0.2:4222 tls://tok@n3:4222"
            )
            .as_deref(),
            Some(
                "nats://herald:********@10.0.0.1:4222, nats://10.0.0.2:4222 tls://********@n3:4222"
            )
        );
        assert_eq!(
            mask_url_credentials("https://hooks.example/h?token=abc#x").as_deref(),
            Some("https://hooks.example/h?********")
        );
        assert_eq!(
            mask_url_credentials("nats://10.0.0.1:4222,nats://n2:4222"),
            None
        );
        let shown = render_option_value(
            "spool_nats_url",
            &Value::Str("nats://u:pw@h:4222".into()),
            true,
        );
        assert!(!shown.contains("pw") && shown.contains("h:4222"), "{shown}");
        for def in crate::OPTIONS {
            assert!(
                !def.name.ends_with("_url") || is_url_option_name(def.name),
                "{} holds a URL and is not masked",
                def.name
            );
        }
        // The whole configuration, as `config show` and the dashboard print it.
        let config = crate::Config::parse_str(
            "t.conf",
            "spool_nats_url = \"nats://herald:pw@10.0.0.1:4222\"\ndomain \"a.example\" { outcome_webhook_url = \"https://h.example/x?key=k3y\" }\n",
        )
        .unwrap();
        let shown = config.render_masked();
        assert!(!shown.contains("pw@") && !shown.contains("k3y"), "{shown}");
        assert!(shown.contains("herald:********@10.0.0.1:4222"), "{shown}");
        assert!(config.render().contains("k3y"));
    }

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
