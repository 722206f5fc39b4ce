//! Model versions: their order and which of them a version policy serves.

use std::cmp::Ordering;

use crate::config::VersionPolicy;

/// One part of a version string: numbers compare as numbers, and before text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Part<'a> {
    Num(u64),
    Text(&'a str),
}

fn parts(v: &str) -> Vec<Part<'_>> {
    v.split(['.', '-', '+', '_'])
        .map(|p| p.parse().map(Part::Num).unwrap_or(Part::Text(p)))
        .collect()
}

/// Orders version strings the way people number releases: `0.10.0` after `0.9.1`, `2`
/// after `1.5`; equal parts, then the plain string, decide the rest.
pub fn compare(a: &str, b: &str) -> Ordering {
    parts(a).cmp(&parts(b)).then_with(|| a.cmp(b))
}

/// Which of `versions` (sorted oldest first by [`compare`]) the policy serves.
pub fn select(policy: &VersionPolicy, versions: &[&str]) -> Vec<bool> {
    let n = versions.len();
    match policy {
        VersionPolicy::All => vec![true; n],
        VersionPolicy::Latest(k) => (0..n).map(|i| i + k >= n).collect(),
        VersionPolicy::Specific(wanted) => versions
            .iter()
            .map(|v| wanted.iter().any(|w| w == v))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_their_numbers() {
        let mut v = vec!["0.10.0", "0.9.1", "2", "1.5", "0.9.1-rc1", "0.9.0"];
        v.sort_by(|a, b| compare(a, b));
        assert_eq!(v, ["0.9.0", "0.9.1", "0.9.1-rc1", "0.10.0", "1.5", "2"]);
    }

    #[test]
    fn policies_select_the_latest_all_or_named_versions() {
        let v = ["1.0.0", "1.1.0", "2.0.0"];
        assert_eq!(select(&VersionPolicy::Latest(1), &v), [false, false, true]);
        assert_eq!(select(&VersionPolicy::Latest(2), &v), [false, true, true]);
        assert_eq!(select(&VersionPolicy::Latest(9), &v), [true, true, true]);
        assert_eq!(select(&VersionPolicy::All, &v), [true, true, true]);
        assert_eq!(
            select(&VersionPolicy::Specific(vec!["1.0.0".into()]), &v),
            [true, false, false]
        );
    }
}
