//! `environment_instances`: connected instances per environment, where an
//! environment seen once stays exported at 0 after its last instance
//! leaves, so that an alert on `== 0` has a series to fire on.

use std::collections::BTreeMap;
use std::sync::Arc;

/// Environments with no instance left that are still exported at 0, at
/// most: more than any fleet has, and a bound on what peers naming a new
/// environment at each connection can make the gateway keep.
pub(super) const EMPTY_KEPT: usize = 64;

/// The environments seen at scrapes. Those with instances are always
/// exported; of the empty ones, the [`EMPTY_KEPT`] seen most recently.
#[derive(Debug, Default)]
pub(super) struct Environments {
    /// The scrape count, and for each environment the scrape that last
    /// saw an instance of it.
    seen: parking_lot::Mutex<(u64, BTreeMap<Arc<str>, u64>)>,
}

impl Environments {
    /// Connected instances per environment, by name, given each connected
    /// instance's environment.
    pub(super) fn count<'a>(
        &self,
        instances: impl IntoIterator<Item = &'a Arc<str>>,
    ) -> BTreeMap<Arc<str>, i64> {
        let mut counts = BTreeMap::<Arc<str>, i64>::new();
        for environment in instances {
            *counts.entry(environment.clone()).or_default() += 1;
        }
        let mut guard = self.seen.lock();
        let (scrape, seen) = &mut *guard;
        *scrape += 1;
        for environment in counts.keys() {
            seen.insert(environment.clone(), *scrape);
        }
        let mut empty: Vec<(u64, Arc<str>)> = seen
            .iter()
            .filter(|(environment, _)| !counts.contains_key(*environment))
            .map(|(environment, at)| (*at, environment.clone()))
            .collect();
        if let Some(excess) = empty.len().checked_sub(EMPTY_KEPT) {
            // The longest empty go first.
            empty.sort_unstable();
            for (_, environment) in empty.drain(..excess) {
                seen.remove(&environment);
            }
        }
        drop(guard);
        counts.extend(empty.into_iter().map(|(_, environment)| (environment, 0)));
        counts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|&n| Arc::from(n)).collect()
    }

    fn pairs(counts: &BTreeMap<Arc<str>, i64>) -> Vec<(&str, i64)> {
        counts.iter().map(|(e, n)| (&**e, *n)).collect()
    }

    #[test]
    fn an_environment_stays_at_zero_after_its_last_instance_leaves() {
        let environments = Environments::default();
        let now = environments.count(&names(&["prod", "beta", "prod"]));
        assert_eq!(pairs(&now), [("beta", 1), ("prod", 2)]);
        let now = environments.count(&names(&["prod"]));
        assert_eq!(pairs(&now), [("beta", 0), ("prod", 1)]);
        let now = environments.count(&names(&[]));
        assert_eq!(pairs(&now), [("beta", 0), ("prod", 0)]);
        let now = environments.count(&names(&["beta"]));
        assert_eq!(pairs(&now), [("beta", 1), ("prod", 0)]);
    }

    #[test]
    fn only_the_most_recently_seen_empty_environments_are_kept() {
        let environments = Environments::default();
        // One environment per scrape: env-0 is the longest empty.
        for n in 0..EMPTY_KEPT + 10 {
            environments.count(&names(&[&format!("env-{n}")]));
        }
        let now = environments.count(&names(&["prod"]));
        assert_eq!(now.len(), EMPTY_KEPT + 1, "{now:?}");
        assert_eq!(now.get("prod"), Some(&1));
        assert_eq!(now.values().filter(|&&n| n == 0).count(), EMPTY_KEPT);
        for n in 0..10 {
            assert!(!now.contains_key(&*format!("env-{n}")), "env-{n} kept");
        }
        for n in 10..EMPTY_KEPT + 10 {
            assert_eq!(now.get(&*format!("env-{n}")), Some(&0), "env-{n}");
        }
    }

    #[test]
    fn environments_with_instances_are_exported_beyond_the_bound() {
        let environments = Environments::default();
        let many: Vec<String> = (0..EMPTY_KEPT * 2).map(|n| format!("env-{n}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        let now = environments.count(&names(&many));
        assert_eq!(now.len(), EMPTY_KEPT * 2);
        assert!(now.values().all(|&n| n == 1));
        let now = environments.count(&names(&[]));
        assert_eq!(now.len(), EMPTY_KEPT);
    }
}
