//! [`LeaseTable`]: the leases the manager tracks and where each stands:
//! named, resolving, or waiting for its next attempt (the queue of due
//! attempts is here too), the answers kept for leases that vanished, and
//! the counts `/health` and `GetLeases` report. No I/O and no clock of its
//! own: the owner says what time it is.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gatemesh_dnsmasq::leases::Lease;
use gatemesh_dnsmasq::names::short;
use gatemesh_dnsmasq::{NameRefusal, Namespace};
use gatemesh_proto::pb;
use gatemesh_runtime::Backoff;
use tokio::time::Instant;

use super::MAX_REASON;
use super::lease::{Entry, Key, LeaseError, State, code_label};
use crate::{DhcpConfig, DhcpStatus, ResolveError, Resolved};

/// A resolution's outcome, or its panic.
pub(crate) type Outcome = Result<Result<Resolved, ResolveError>, String>;

/// What a read of the lease file changed.
#[derive(Debug, Default)]
pub(crate) struct Synced {
    /// A name was added or removed: the hosts file is to be written.
    pub(crate) renamed: bool,
    /// When a lease missing from this read has been missing long enough
    /// to go, unless a read before then lists it again.
    pub(crate) recheck: Option<Instant>,
}

/// The names leases hold, by their lowercase form: DNS does not tell
/// `vps-a` from `VPS-A`, so a name is held in one spelling only. The
/// spelling, and how many leases hold it (a VPS's IPv4 and IPv6 leases
/// share theirs).
type Names = HashMap<String, (String, usize)>;

/// One more lease holds `name`.
fn claim(names: &mut Names, name: &str) {
    names
        .entry(name.to_ascii_lowercase())
        .or_insert_with(|| (name.to_string(), 0))
        .1 += 1;
}

/// Whether `name` is held spelt otherwise by a lease other than the one
/// now named `own`.
fn clashes(names: &Names, name: &str, own: Option<&str>) -> bool {
    let Some((spelling, holders)) = names.get(&name.to_ascii_lowercase()) else {
        return false;
    };
    let only_own = *holders == 1 && own.is_some_and(|own| own.eq_ignore_ascii_case(name));
    spelling != name && !only_own
}

pub(crate) struct LeaseTable {
    entries: BTreeMap<Key, Entry>,
    names: Names,
    /// Leases waiting for an attempt, earliest first; an item whose entry
    /// moved on since it was pushed is skipped when popped.
    due: BinaryHeap<Reverse<(Instant, Key)>>,
    /// Answers for leases that vanished, kept in case they come back.
    cache: HashMap<Key, (String, Instant)>,
    generation: u64,
    resolved: usize,
    holder_failing: usize,
    /// Earliest expiry among the entries, in Unix seconds.
    next_expiry: Option<u64>,
}

impl LeaseTable {
    pub(crate) fn new() -> Self {
        Self {
            entries: BTreeMap::new(),
            names: Names::new(),
            due: BinaryHeap::new(),
            cache: HashMap::new(),
            generation: 0,
            resolved: 0,
            holder_failing: 0,
            next_expiry: None,
        }
    }

    pub(crate) fn entries(&self) -> &BTreeMap<Key, Entry> {
        &self.entries
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Leases with a VPS id.
    pub(crate) fn resolved(&self) -> usize {
        self.resolved
    }

    /// Leases whose last attempt failed at the holder.
    pub(crate) fn holder_failing(&self) -> usize {
        self.holder_failing
    }

    /// Every named lease, for the hosts file.
    pub(crate) fn names(&self) -> impl Iterator<Item = (IpAddr, &str)> {
        self.entries
            .iter()
            .filter_map(|((ip, _), e)| e.vps_id().map(|id| (*ip, id)))
    }

    /// Estimated memory of the leases and the kept answers.
    pub(crate) fn bytes(&self) -> usize {
        let cache: usize = self
            .cache
            .values()
            .map(|(id, _)| std::mem::size_of::<(Key, (String, Instant))>() + id.len())
            .sum();
        self.entries.values().map(Entry::bytes).sum::<usize>() + cache
    }

    /// Drops kept answers older than `ttl`.
    pub(crate) fn forget_answers_older_than(&mut self, ttl: Duration) {
        self.cache.retain(|_, (_, since)| since.elapsed() < ttl);
    }

    /// Takes in a read of the lease file: leases it lists are added or
    /// updated; leases it lacks go once they have been missing for the
    /// vanish grace (a rewrite paused mid-file must not flap a name).
    /// `named` is a lease's name by its trusted hostname, if any.
    pub(crate) fn sync(
        &mut self,
        current: Vec<Lease>,
        named: impl Fn(&Lease) -> Option<String>,
        config: &DhcpConfig,
        now: Instant,
    ) -> Synced {
        // In the table's order (by address), so that of two leases whose
        // names clash the same one wins at every sync and in every run.
        let current: BTreeMap<Key, Lease> = current
            .into_iter()
            .map(|lease| ((lease.ip, lease.hardware.clone()), lease))
            .collect();
        let mut synced = self.drop_missing(&current, config, now);
        for (key, lease) in current {
            let own = self.entries.get(&key).and_then(Entry::vps_id);
            let name = named(&lease).filter(|name| !clashes(&self.names, name, own));
            synced.renamed |= match self.entries.contains_key(&key) {
                true => self.update(key, lease, name, now),
                false => self.insert(key, lease, name, config, now),
            };
        }
        self.next_expiry = self.entries.values().filter_map(|e| e.lease.expires).min();
        synced
    }

    /// Times the leases `current` lacks, and removes those missing for
    /// the vanish grace.
    fn drop_missing(
        &mut self,
        current: &BTreeMap<Key, Lease>,
        config: &DhcpConfig,
        now: Instant,
    ) -> Synced {
        let mut synced = Synced::default();
        let mut gone = Vec::new();
        for (key, entry) in &mut self.entries {
            if current.contains_key(key) {
                entry.missing_since = None;
                continue;
            }
            let since = *entry.missing_since.get_or_insert(now);
            if now.duration_since(since) >= config.vanish_grace {
                gone.push(key.clone());
            } else {
                let at = since + config.vanish_grace;
                synced.recheck = Some(synced.recheck.map_or(at, |t| t.min(at)));
            }
        }
        for key in gone {
            synced.renamed |= self.remove(&key, config.max_leases);
        }
        synced
    }

    /// A lease already tracked, as the file lists it now; true when its
    /// name changed.
    fn update(&mut self, key: Key, lease: Lease, name: Option<String>, now: Instant) -> bool {
        let entry = self.entries.get_mut(&key).expect("checked by the caller");
        let old = entry.vps_id().map(str::to_owned);
        let was_resolved = old.is_some();
        let renamed = match (name, &entry.state) {
            (Some(new), State::Named(old)) if *old == new => false,
            (Some(new), _) => {
                entry.state = State::Named(new);
                entry.set_error(&mut self.holder_failing, None);
                self.resolved += usize::from(!was_resolved);
                true
            }
            (None, State::Named(_)) => {
                entry.state = State::Waiting { due: now };
                self.due.push(Reverse((now, key)));
                self.resolved -= 1;
                true
            }
            (None, _) => false,
        };
        entry.lease = lease;
        if renamed {
            let new = entry.vps_id().map(str::to_owned);
            self.rename(old.as_deref(), new.as_deref());
        }
        renamed
    }

    /// Keeps [`Names`] right when a lease's name goes from `old` to `new`.
    fn rename(&mut self, old: Option<&str>, new: Option<&str>) {
        if let Some(old) = old {
            let folded = old.to_ascii_lowercase();
            if let Some((_, holders)) = self.names.get_mut(&folded) {
                *holders -= 1;
                if *holders == 0 {
                    self.names.remove(&folded);
                }
            }
        }
        if let Some(new) = new {
            claim(&mut self.names, new);
        }
    }

    /// A lease new to the table: named by its hostname, by an answer kept
    /// from before it vanished, or due for an attempt now. True when it
    /// has a name.
    fn insert(
        &mut self,
        key: Key,
        lease: Lease,
        name: Option<String>,
        config: &DhcpConfig,
        now: Instant,
    ) -> bool {
        let cached = self
            .cache
            .remove(&key)
            .filter(|(_, since)| since.elapsed() < config.cache_ttl)
            .filter(|(id, _)| !clashes(&self.names, id, None));
        let state = match (name, cached) {
            (Some(id), _) => State::Named(id),
            (None, Some((id, _))) => State::Resolved(id),
            (None, None) => {
                self.due.push(Reverse((now, key.clone())));
                State::Waiting { due: now }
            }
        };
        self.generation += 1;
        let entry = Entry {
            lease,
            state,
            backoff: Backoff::new(config.retry_base, config.retry_max, Duration::MAX),
            holder_backoff: short_backoff(config),
            error: None,
            generation: self.generation,
            missing_since: None,
        };
        let name = entry.vps_id().map(str::to_owned);
        self.rename(None, name.as_deref());
        self.resolved += usize::from(name.is_some());
        self.entries.insert(key, entry);
        name.is_some()
    }

    /// Forgets a lease, keeping its answer a while in case it comes back;
    /// true when it had a name.
    fn remove(&mut self, key: &Key, max_kept: usize) -> bool {
        let Some(mut entry) = self.entries.remove(key) else {
            return false;
        };
        entry.set_error(&mut self.holder_failing, None);
        let named = entry.vps_id().is_some();
        if named {
            self.resolved -= 1;
            self.rename(entry.vps_id(), None);
        }
        if let State::Resolved(id) = entry.state
            && self.cache.len() < max_kept
        {
            self.cache.insert(key.clone(), (id, Instant::now()));
        }
        named
    }

    /// Drops leases whose time ran out, without waiting for dnsmasq to
    /// rewrite its file; true when a name went.
    pub(crate) fn expire(&mut self, now_unix: u64, max_kept: usize) -> bool {
        if self.next_expiry.is_none_or(|t| t > now_unix) {
            return false;
        }
        let expired: Vec<Key> = self
            .entries
            .iter()
            .filter(|(_, e)| !e.lease.is_active(now_unix))
            .map(|(k, _)| k.clone())
            .collect();
        let mut renamed = false;
        for key in &expired {
            renamed |= self.remove(key, max_kept);
        }
        self.next_expiry = self.entries.values().filter_map(|e| e.lease.expires).min();
        renamed
    }

    /// When the next lease expires.
    pub(crate) fn expiry_instant(&self) -> Option<Instant> {
        let at = UNIX_EPOCH.checked_add(Duration::from_secs(self.next_expiry?))?;
        let left = at.duration_since(SystemTime::now()).unwrap_or_default();
        Instant::now().checked_add(left)
    }

    /// When the next attempt is due.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.due.peek().map(|Reverse((due, _))| *due)
    }

    /// The next lease due by `now`, marked resolving: its key, its
    /// generation and the question to ask.
    pub(crate) fn start_next(
        &mut self,
        now: Instant,
    ) -> Option<(Key, u64, pb::FindVpsByLeaseRequest)> {
        loop {
            match self.due.peek() {
                Some(Reverse((due, _))) if *due <= now => {}
                _ => return None,
            }
            let Reverse((due, key)) = self.due.pop()?;
            let Some(entry) = self.entries.get_mut(&key) else {
                continue;
            };
            if !matches!(entry.state, State::Waiting { due: d } if d == due) {
                continue;
            }
            entry.state = State::Resolving;
            let request = pb::FindVpsByLeaseRequest {
                ip: key.0.to_string(),
                mac: entry.lease.mac().unwrap_or_default(),
            };
            return Some((key, entry.generation, request));
        }
    }

    /// Takes a resolution's outcome: a name that passes the namespace, or
    /// an error and the next attempt. True when the lease got a name.
    pub(crate) fn finished(
        &mut self,
        (key, generation): (Key, u64),
        outcome: Outcome,
        namespace: &Namespace,
        status: &mut DhcpStatus,
    ) -> bool {
        let Some(entry) = self.entries.get_mut(&key) else {
            return false;
        };
        if entry.generation != generation || !matches!(entry.state, State::Resolving) {
            return false;
        }
        let ip = key.0;
        let (error, delay) = match outcome {
            Ok(Ok(answer)) => {
                let checked = if namespace.allows_environment(&answer.environment) {
                    namespace.check(&answer.vps_id).and_then(|()| {
                        match clashes(&self.names, &answer.vps_id, None) {
                            true => Err(NameRefusal::CaseClash),
                            false => Ok(()),
                        }
                    })
                } else {
                    Err(NameRefusal::Environment)
                };
                match checked {
                    Ok(()) => {
                        tracing::debug!(%ip, vps_id = %answer.vps_id, instance = %answer.instance, "lease resolved");
                        claim(&mut self.names, &answer.vps_id);
                        entry.state = State::Resolved(answer.vps_id);
                        entry.set_error(&mut self.holder_failing, None);
                        self.resolved += 1;
                        return true;
                    }
                    Err(refusal) => {
                        *status.refused.entry(refusal).or_default() += 1;
                        let error = LeaseError::Refused {
                            refusal,
                            instance: short(&answer.instance, 64),
                            environment: short(&answer.environment, 32),
                        };
                        // Once per lease and cause, not once per retry.
                        if entry.error.as_ref() != Some(&error) {
                            tracing::warn!(
                                %ip,
                                instance = %answer.instance,
                                environment = %answer.environment,
                                reason = refusal.as_str(),
                                answer = %short(&answer.vps_id, 64),
                                "answer refused: only VPS names reach dnsmasq"
                            );
                        }
                        (error, entry.backoff.next_delay())
                    }
                }
            }
            Ok(Err(ResolveError::NotFound)) => (LeaseError::NotFound, entry.backoff.next_delay()),
            Ok(Err(ResolveError::Failed { code, reason })) => {
                status.holder_failures += 1;
                let reason = short(&reason, MAX_REASON);
                let message = format!("resolving {ip}: {reason}");
                if !matches!(entry.error, Some(LeaseError::Holder { .. })) {
                    tracing::warn!(%ip, code = code_label(code), error = %reason, "lease holder failed; retrying soon");
                }
                status.holder_error = Some(message.clone());
                status.last_error = Some(message);
                (
                    LeaseError::Holder { code, reason },
                    entry.holder_backoff.next_delay(),
                )
            }
            Err(panic) => {
                status.task_panics += 1;
                tracing::error!(%ip, reason = %panic, "lease resolution panicked; retrying soon");
                (LeaseError::Panicked, entry.holder_backoff.next_delay())
            }
        };
        let due = Instant::now() + delay;
        tracing::debug!(%ip, error = %error, "lease not resolved; will retry");
        entry.state = State::Waiting { due };
        entry.set_error(&mut self.holder_failing, Some(error));
        self.due.push(Reverse((due, key)));
        false
    }

    /// Every lease still waiting is due now: an instance came or went,
    /// and the newcomer may know it.
    pub(crate) fn retry_all_now(&mut self, now: Instant) {
        for (key, entry) in &mut self.entries {
            if let State::Waiting { due } = &mut entry.state
                && *due > now
            {
                *due = now;
                self.due.push(Reverse((now, key.clone())));
            }
        }
    }
}

/// The retry delays after a holder or a write failed: short, since the
/// cause is probably passing.
pub(crate) fn short_backoff(config: &DhcpConfig) -> Backoff {
    Backoff::new(
        config.retry_base.min(config.holder_retry_max),
        config.holder_retry_max,
        Duration::MAX,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatemesh_dnsmasq::leases::Hardware;

    fn lease(ip: &str, mac: &str, hostname: Option<&str>) -> Lease {
        Lease {
            expires: None,
            hardware: Hardware::Mac(mac.into()),
            ip: ip.parse().unwrap(),
            hostname: hostname.map(String::from),
            client_id: None,
        }
    }

    fn answer(vps_id: &str) -> Outcome {
        Ok(Ok(Resolved {
            vps_id: vps_id.into(),
            instance: "inst".into(),
            environment: "prod".into(),
        }))
    }

    /// Resolves every lease due with `answers`, in order.
    fn resolve_all(table: &mut LeaseTable, answers: &[&str], status: &mut DhcpStatus) {
        let namespace = Namespace::default();
        for vps_id in answers {
            let (key, generation, _) = table.start_next(Instant::now()).expect("a lease due");
            table.finished((key, generation), answer(vps_id), &namespace, status);
        }
    }

    fn names(table: &LeaseTable) -> Vec<String> {
        table
            .names()
            .map(|(ip, name)| format!("{ip} {name}"))
            .collect()
    }

    #[test]
    fn names_that_differ_only_in_case_are_never_held_by_two_leases() {
        let config = DhcpConfig::new("/l", "/h");
        let mut table = LeaseTable::new();
        let mut status = DhcpStatus::default();
        let leases = vec![
            lease("10.0.0.10", "52:54:00:00:00:01", None),
            lease("10.0.0.11", "52:54:00:00:00:02", None),
            lease("10.0.0.12", "52:54:00:00:00:03", None),
        ];
        table.sync(leases.clone(), |_| None, &config, Instant::now());
        resolve_all(&mut table, &["vps-web", "VPS-Web", "vps-web"], &mut status);
        assert_eq!(
            names(&table),
            ["10.0.0.10 vps-web", "10.0.0.12 vps-web"],
            "the same spelling twice is one VPS (two NICs, IPv4 and IPv6); another is refused"
        );
        assert_eq!(status.refused.get(&NameRefusal::CaseClash), Some(&1));
        // Once no lease holds the name, another spelling may have it.
        table.sync(vec![leases[1].clone()], |_| None, &config, Instant::now());
        let later = Instant::now() + config.vanish_grace;
        table.sync(vec![leases[1].clone()], |_| None, &config, later);
        table.retry_all_now(Instant::now());
        resolve_all(&mut table, &["VPS-Web"], &mut status);
        assert_eq!(names(&table), ["10.0.0.11 VPS-Web"]);
    }

    #[test]
    fn a_trusted_hostname_spelt_like_a_held_name_otherwise_is_not_taken() {
        let mut config = DhcpConfig::new("/l", "/h");
        config.trust_hostnames = true;
        let mut table = LeaseTable::new();
        let leases = vec![
            lease("10.0.0.10", "52:54:00:00:00:01", Some("vps-db")),
            lease("10.0.0.11", "52:54:00:00:00:02", Some("VPS-DB")),
        ];
        let named = |l: &Lease| l.hostname.clone();
        table.sync(leases.clone(), named, &config, Instant::now());
        assert_eq!(names(&table), ["10.0.0.10 vps-db"]);
        // Its own name, respelt, is no clash with itself.
        let respelt = vec![lease("10.0.0.10", "52:54:00:00:00:01", Some("Vps-Db"))];
        table.sync(respelt, named, &config, Instant::now());
        assert_eq!(names(&table)[0], "10.0.0.10 Vps-Db");
    }
}
