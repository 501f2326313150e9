//! "Did you mean" suggestions: the nearest candidate by edit distance, if it is near enough to be a typo.

/// Longest name compared; longer input gets no suggestion (keeps the cost bounded on hostile input).
const MAX_LEN: usize = 64;

/// Levenshtein distance between two short strings, case-insensitive.
pub fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `word`, if within a third of its length (at least 2 edits allowed).
pub fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    if word.is_empty() || word.len() > MAX_LEN {
        return None;
    }
    let limit = (word.chars().count() / 3).max(2);
    candidates
        .map(|c| (distance(word, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances() {
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(distance("ABC", "abc"), 0);
    }

    #[test]
    fn closest_within_limit() {
        let names = ["domain", "binding", "binding_group"];
        assert_eq!(closest("domian", names.iter().copied()), Some("domain"));
        assert_eq!(
            closest("bindinggroup", names.iter().copied()),
            Some("binding_group")
        );
        assert_eq!(closest("xyz", names.iter().copied()), None);
        assert_eq!(closest(&"a".repeat(1000), names.iter().copied()), None);
    }
}
