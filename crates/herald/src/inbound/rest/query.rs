//! Query strings of the routes that take parameters (`name=value` parts joined by `&`, each side percent-decoded).
//! A parameter given more than once is refused, naming it: which of its values would apply is not for herald to
//! guess (a delete naming two tokens, a list filtered by two domains), and a client that sent both meant something
//! herald would not do.

use std::collections::HashSet;

use crate::ops::percent_decode;

/// What is wrong with a query string.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A parameter (by its decoded name) given more than once.
    #[error("{0}: given more than once; give each parameter once")]
    Repeated(String),
}

/// A query string read into its parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// The decoded (name, value) pairs in the order given, each name once (a repeat is in `repeated` instead).
    pairs: Vec<(String, String)>,
    /// The parameters given more than once, in the order their first repeat comes.
    repeated: Vec<String>,
}

impl Query {
    /// Reads `raw` (the part after `?`; `None` or empty: no parameter). Empty parts (`a=1&&b=2`) are skipped; a
    /// part without `=` is a name with an empty value.
    pub fn parse(raw: Option<&str>) -> Query {
        let mut query = Query::default();
        let mut seen = HashSet::new();
        for part in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = percent_decode(name);
            if !seen.insert(name.clone()) {
                if !query.repeated.contains(&name) {
                    query.repeated.push(name);
                }
                continue;
            }
            query.pairs.push((name, percent_decode(value)));
        }
        query
    }

    /// The refusal of a query that gives a parameter more than once, naming the first such parameter.
    pub fn once_each(&self) -> Result<(), QueryError> {
        match self.repeated.first() {
            Some(name) => Err(QueryError::Repeated(name.clone())),
            None => Ok(()),
        }
    }

    /// The value of parameter `name`, when it is given exactly once.
    pub fn get(&self, name: &str) -> Option<&str> {
        if self.repeated.iter().any(|r| r == name) {
            return None;
        }
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The decoded names of the parameters, in the order given, each once.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(n, _)| n.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_decoded_in_order() {
        let q = Query::parse(Some("domain=A%2Eexample&&token=ab+cd&flag"));
        assert_eq!(q.once_each(), Ok(()));
        assert_eq!(q.get("domain"), Some("A.example"));
        assert_eq!(q.get("token"), Some("ab cd"));
        assert_eq!(q.get("flag"), Some(""));
        assert_eq!(q.get("since"), None);
        assert_eq!(q.names().collect::<Vec<_>>(), ["domain", "token", "flag"]);
        assert_eq!(Query::parse(None), Query::parse(Some("")));
    }

    /// A parameter given twice, also spelt differently (percent-encoded) or with the same value, is refused
    /// naming it; it has no value then, while the others keep theirs.
    #[test]
    fn a_parameter_given_twice_is_refused_naming_it() {
        for raw in [
            "domain=cert.example&token=A&token=B",
            "token=A&domain=cert.example&tok%65n=A",
            "token=&token",
        ] {
            let q = Query::parse(Some(raw));
            let err = q.once_each().unwrap_err();
            assert_eq!(err, QueryError::Repeated("token".into()), "{raw}");
            assert_eq!(
                err.to_string(),
                "token: given more than once; give each parameter once"
            );
            assert_eq!(q.get("token"), None, "{raw}");
        }
        let q = Query::parse(Some("domain=a&x=1&domain=b&x=2"));
        assert_eq!(q.once_each(), Err(QueryError::Repeated("domain".into())));
        assert_eq!(q.get("domain"), None);
        assert_eq!(q.get("x"), None);
        let q = Query::parse(Some("x=1&x=2&domain=a&y=3"));
        assert_eq!(q.once_each(), Err(QueryError::Repeated("x".into())));
        assert_eq!((q.get("domain"), q.get("y")), (Some("a"), Some("3")));
    }
}
