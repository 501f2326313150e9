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

/// The candidate closest to `word`, if within a third of its length (at least 2 edits allowed). Invisible
/// characters in `word` are left out of the comparison, and when what is left is itself a candidate there is no
/// suggestion: "did you mean" would show the same word twice ([`invisible_note`] says what is wrong instead).
pub fn closest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    if word.len() > MAX_LEN {
        return None;
    }
    let seen: String = word.chars().filter(|c| !is_invisible(*c)).collect();
    if seen.is_empty() {
        return None;
    }
    let limit = (seen.chars().count() / 3).max(2);
    let mut best: Option<(usize, &'a str)> = None;
    for c in candidates {
        let d = distance(&seen, c);
        if d == 0 {
            return None;
        }
        if d <= limit && best.is_none_or(|(b, _)| d < b) {
            best = Some((d, c));
        }
    }
    best.map(|(_, c)| c)
}

/// True for a character that shows nothing in most editors and terminals: Unicode format characters (byte-order
/// mark, zero-width space and joiners, direction marks and overrides, soft hyphen, …), variation selectors, tags,
/// fillers and control characters other than whitespace.
pub fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{ad}'
            | '\u{34f}'
            | '\u{61c}'
            | '\u{115f}'..='\u{1160}'
            | '\u{17b4}'..='\u{17b5}'
            | '\u{180b}'..='\u{180f}'
            | '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{206f}'
            | '\u{3164}'
            | '\u{fe00}'..='\u{fe0f}'
            | '\u{feff}'
            | '\u{ffa0}'
            | '\u{fff0}'..='\u{fff8}'
            | '\u{1d173}'..='\u{1d17a}'
            | '\u{e0000}'..='\u{e0fff}'
    ) || (c.is_control() && !c.is_whitespace())
}

/// What to add to "unknown option `x`" or "unknown scope `x`" when `x` holds an invisible character: which one,
/// and the word without it when that is a known name (`known` says whether a name is known). `None` when the word
/// has no invisible character.
pub fn invisible_note(word: &str, known: impl Fn(&str) -> bool) -> Option<String> {
    let c = word.chars().find(|c| is_invisible(*c))?;
    let name = match c {
        '\u{feff}' => " (a byte-order mark, or zero-width no-break space)",
        '\u{200b}' => " (a zero-width space)",
        '\u{200c}' => " (a zero-width non-joiner)",
        '\u{200d}' => " (a zero-width joiner)",
        '\u{200e}' | '\u{200f}' => " (a text direction mark)",
        '\u{2060}' => " (a word joiner)",
        '\u{ad}' => " (a soft hyphen)",
        _ => "",
    };
    let seen: String = word.chars().filter(|c| !is_invisible(*c)).collect();
    let mut note = format!(
        "; it contains the invisible character U+{:04X}{name}, which is not part of any name",
        c as u32
    );
    if !seen.is_empty() && known(&seen) {
        note.push_str(&format!(": delete it to write `{seen}`"));
    } else {
        note.push_str(": delete it");
    }
    Some(note)
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

    #[test]
    fn never_suggests_the_same_visible_word() {
        let names = ["domain", "binding", "binding_group"];
        assert_eq!(closest("\u{feff}domain", names.iter().copied()), None);
        assert_eq!(closest("bin\u{200b}ding", names.iter().copied()), None);
        // A typo next to an invisible character still gets its suggestion.
        assert_eq!(
            closest("\u{200b}domian", names.iter().copied()),
            Some("domain")
        );
        let known = |w: &str| names.contains(&w);
        assert_eq!(invisible_note("domain", known), None);
        let note = invisible_note("\u{feff}domain", known).unwrap();
        assert!(note.contains("U+FEFF (a byte-order mark"), "{note}");
        assert!(note.ends_with("delete it to write `domain`"), "{note}");
        let note = invisible_note("x\u{200b}y", known).unwrap();
        assert!(note.contains("U+200B (a zero-width space)"), "{note}");
        assert!(note.ends_with(": delete it"), "{note}");
    }
}
