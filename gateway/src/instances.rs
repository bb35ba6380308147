//! The registry of connected instances, by instance id.
//!
//! The lock is held only to read or swap map entries, never across an
//! `.await` or a send.

use foldhash::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;

use crate::Peer;
use crate::credentials::Scope;

#[derive(Debug)]
pub struct Instances {
    by_id: RwLock<Map>,
    /// Bumped on every registration and removal.
    changes: watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Map {
    peers: HashMap<Arc<str>, Arc<Peer>>,
    /// Set once by a drain, under the same lock as every insert, so no
    /// stream can register after the drain took its snapshot.
    closed: bool,
}

impl std::ops::Deref for Map {
    type Target = HashMap<Arc<str>, Arc<Peer>>;
    fn deref(&self) -> &Self::Target {
        &self.peers
    }
}

/// The instances one call goes to: a handful, kept off the heap.
pub type Targets = smallvec::SmallVec<[Arc<Peer>; 4]>;

/// Registration refused: the gateway is draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed;

/// Why [`Instances::insert`] refused a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertRefused {
    /// The gateway is draining.
    Closed,
    /// A stream of another environment holds the id: a new stream takes
    /// an id over only within its environment, so a credential for one
    /// environment cannot push another's instance off and take its calls.
    HeldByAnotherEnvironment,
}

impl Default for Instances {
    fn default() -> Self {
        Self {
            by_id: RwLock::default(),
            changes: watch::Sender::new(0),
        }
    }
}

impl Instances {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `peer`; returns the older stream of its id it replaces
    /// (of the same environment), if any.
    pub fn insert(&self, peer: Arc<Peer>) -> Result<Option<Arc<Peer>>, InsertRefused> {
        let old = {
            let mut map = self.by_id.write();
            if map.closed {
                return Err(InsertRefused::Closed);
            }
            if map
                .get(peer.id())
                .is_some_and(|held| held.info.environment() != peer.info.environment())
            {
                return Err(InsertRefused::HeldByAnotherEnvironment);
            }
            map.peers.insert(peer.id().clone(), peer)
        };
        self.changes.send_modify(|g| *g += 1);
        Ok(old)
    }

    /// Refuses every registration from now on and returns the instances
    /// registered until now, sorted by id: together, so a stream is either
    /// in the snapshot or refused.
    pub fn close(&self) -> Vec<Arc<Peer>> {
        let mut map = self.by_id.write();
        map.closed = true;
        let mut peers: Vec<_> = map.peers.values().cloned().collect();
        drop(map);
        peers.sort_by(|a, b| a.id().cmp(b.id()));
        peers
    }

    /// Resolves once `condition` holds, checking after every change.
    pub async fn wait_until(&self, condition: impl Fn(&Self) -> bool) {
        let mut changes = self.changes.subscribe();
        while !condition(self) {
            if changes.changed().await.is_err() {
                return;
            }
        }
    }

    /// A receiver that sees every registration and removal, for tasks that
    /// wait on more than the registry (see [`Self::wait_until`] otherwise).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Removes `peer`, but only if the entry is still that very stream.
    pub fn remove(&self, peer: &Peer) -> bool {
        let mut map = self.by_id.write();
        match map.get(peer.id()) {
            Some(current) if current.conn_id() == peer.conn_id() => {
                map.peers.remove(peer.id());
                drop(map);
                self.changes.send_modify(|g| *g += 1);
                true
            }
            _ => false,
        }
    }

    pub fn get(&self, id: &str) -> Option<Arc<Peer>> {
        self.by_id.read().get(id).cloned()
    }

    /// Whether [`Self::close`] has run: the gateway drains.
    pub fn is_closed(&self) -> bool {
        self.by_id.read().closed
    }

    /// The instance `id` for a new call, or `Closed` once the gateway
    /// drains; one look under the lock.
    pub fn for_call(&self, id: &str) -> Result<Option<Arc<Peer>>, Closed> {
        let map = self.by_id.read();
        if map.closed {
            return Err(Closed);
        }
        Ok(map.get(id).cloned())
    }

    /// Instances that may take a new call for `method`, of the environments
    /// `within` allows, optionally only those of one environment; `Closed`
    /// once the gateway drains.
    pub fn routable(
        &self,
        method: &str,
        environment: Option<&str>,
        within: &Scope,
    ) -> Result<Targets, Closed> {
        let map = self.by_id.read();
        if map.closed {
            return Err(Closed);
        }
        Ok(map
            .values()
            .filter(|p| {
                let env = &**p.info.environment();
                p.routable(method) && environment.is_none_or(|e| env == e) && within.allows(env)
            })
            .cloned()
            .collect())
    }

    /// Whether any connected instance lists `method`, draining or not.
    /// (Only instances of the environments `within` allows are asked, so
    /// that a confined caller learns nothing of the others'.)
    pub fn anyone_serves(&self, method: &str, within: &Scope) -> bool {
        self.by_id
            .read()
            .values()
            .any(|p| p.info.methods.contains(method) && within.allows(p.info.environment()))
    }

    /// Every connected instance, sorted by id.
    pub fn snapshot(&self) -> Vec<Arc<Peer>> {
        let mut peers: Vec<_> = self.by_id.read().values().cloned().collect();
        peers.sort_by(|a, b| a.id().cmp(b.id()));
        peers
    }

    pub fn len(&self) -> usize {
        self.by_id.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Calls awaiting an answer, over every instance.
    pub fn pending_calls(&self) -> usize {
        self.by_id.read().values().map(|p| p.in_flight()).sum()
    }
}
