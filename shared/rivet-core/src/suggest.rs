//! "Did you mean" suggestions for misspelt keys and names.

/// Returns the candidate closest to `word` when it is close enough to be a plausible typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let word_lower = word.to_ascii_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for candidate in candidates {
        let candidate_lower = candidate.to_ascii_lowercase();
        // A clipped word (`bool` for `boolean`) counts as one edit.
        let clipped = word_lower.len() >= 3 && candidate_lower.starts_with(&word_lower);
        let distance = if clipped {
            1
        } else {
            levenshtein(&word_lower, &candidate_lower)
        };
        // Allow roughly one edit per three characters, at least one.
        let allowed = (candidate.len().max(word.len()) / 3).max(1);
        if distance <= allowed && best.is_none_or(|(d, _)| distance < d) {
            best = Some((distance, candidate));
        }
    }
    best.map(|(_, c)| c)
}

/// Formats `" (did you mean `x`?)"`, or nothing.
pub fn hint<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    match did_you_mean(word, candidates) {
        Some(c) => format!(" (did you mean `{c}`?)"),
        None => String::new(),
    }
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions and adjacent
/// transpositions each cost one, so `nmae` is one edit from `name`.
fn levenshtein(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_keys_only() {
        assert_eq!(
            did_you_mean("scrpit", ["name", "script", "stages"]),
            Some("script")
        );
        assert_eq!(
            did_you_mean("requries", ["requires", "inputs"]),
            Some("requires")
        );
        assert_eq!(did_you_mean("zzzzzz", ["name", "script"]), None);
        assert_eq!(
            did_you_mean("bool", ["string", "number", "boolean"]),
            Some("boolean")
        );
        assert_eq!(hint("nmae", ["name"]), " (did you mean `name`?)");
        assert_eq!(hint("qqq", ["name"]), "");
    }
}
